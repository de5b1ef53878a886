"""Calibration sources: one module and one `@register_source` each; `generate_set` writes any of them.

A source is a function `(per_class, seed, **options) -> Generated`. Image i of a synthetic set gets its
own seed, `image_seed(seed, i)`, which its file name carries, so any single image can be made again.

Sources defined outside the core (the generators in `calib.distylegan`, or another package) plug in through
the `calib.sources` entry-point group, loaded on first lookup, so the core never imports them.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

from calib.core.errors import CalibError


@dataclass
class Generated:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int64
    ids: list[str]  # file stems; for synthetic images the per-image seed
    role: str = "synthetic"
    extra: dict = field(default_factory=dict)  # goes into the manifest


@dataclass(frozen=True)
class SourceInfo:
    name: str
    fn: Callable[..., Generated]
    description: str
    pinned: bool = False  # images come out of float kernels: made with pinned kernels (`calib.core.pinned`)

    @property
    def options(self) -> list[str]:
        return [p for p in inspect.signature(self.fn).parameters if p not in ("per_class", "seed", "progress")]

    @property
    def reports_progress(self) -> bool:
        """Whether the source calls a `progress(done, total)` callback as it goes."""
        return "progress" in inspect.signature(self.fn).parameters


_SOURCES: dict[str, SourceInfo] = {}
_plugins_loaded = False


def register_source(name: str, pinned: bool = False):
    """Register a source; `pinned=True` for one whose images come out of float kernels (a network), so that it
    runs with the kernels every CPU shares and a seed gives the same bytes everywhere."""
    def wrap(fn: Callable[..., Generated]) -> Callable[..., Generated]:
        _SOURCES[name] = SourceInfo(name, fn, (fn.__doc__ or "").strip().splitlines()[0], pinned)
        return fn

    return wrap


def _load_plugins() -> None:
    """Import the modules named in the `calib.sources` entry-point group once; their decorators register."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for entry in entry_points(group="calib.sources"):
            entry.load()


def list_sources() -> list[str]:
    _load_plugins()
    return sorted(_SOURCES)


def source_info(name: str) -> SourceInfo:
    _load_plugins()
    if name not in _SOURCES:
        raise CalibError(f"unknown source {name!r}; known sources: {', '.join(list_sources())}")
    return _SOURCES[name]


def image_seed(seed: int, index: int) -> int:
    """Seed of image `index` in a set made with `seed`: sets with different seeds never share an image."""
    return seed * 1_000_000 + index


def balanced_labels(per_class: int, num_classes: int = 10) -> np.ndarray:
    return np.repeat(np.arange(num_classes), per_class)


def generate(source: str, per_class: int, seed: int = 0, progress: Callable[[int, int], None] | None = None,
             **options) -> Generated:
    """Run a source with the options it accepts; options it does not know are an error, not ignored.

    `progress(done, total)` (images) is handed to sources that report as they go, else called once at the end.
    """
    info = source_info(source)
    if per_class < 1:
        raise CalibError("--per-class must be at least 1")
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(info.options))
    if unknown:
        raise CalibError(f"source {source} does not take {', '.join(unknown)} (it takes: {', '.join(info.options)})")
    if info.pinned:
        from calib.core.pinned import PINNED_ISA, call_pinned

        g = call_pinned(_run_source, source, per_class, seed, given,
                        progress=progress if info.reports_progress else None)
        g.extra = {**g.extra, "kernels": f"pinned to {PINNED_ISA} (calib.core.pinned): the same bytes on every CPU"}
    else:
        if progress is not None and info.reports_progress:
            given["progress"] = progress
        g = info.fn(per_class=per_class, seed=seed, **given)
    if progress is not None:
        progress(len(g.labels), len(g.labels))
    return g


def _run_source(source: str, per_class: int, seed: int, options: dict,
                progress: Callable[[int, int], None] | None = None) -> Generated:
    """A source's function by name (what a pinned process runs)."""
    if progress is not None:
        options = {**options, "progress": progress}
    return source_info(source).fn(per_class=per_class, seed=seed, **options)


def default_set_folder(source: str, per_class: int, seed: int, **options) -> Path:
    """`runs/sets/<source>[-<model>]-<N>pc-s<seed>[-<digest>]`: the model a source inverts (given or its
    default) and a digest of every other option given, so that sets made differently never share a name."""
    from calib.core.folders import name_digest

    params = inspect.signature(source_info(source).fn).parameters
    given = {k: v for k, v in options.items() if v is not None}
    parts = [source]
    if "model" in params:
        parts.append(str(given.pop("model", params["model"].default)))
    parts += [f"{per_class}pc", f"s{seed}"]
    if given:
        parts.append(name_digest(given, 6))
    return Path("runs/sets") / "-".join(parts)


def generate_set(source: str, per_class: int, seed: int, out: Path, overwrite: bool = False,
                 progress: Callable[[int, int], None] | None = None, **options) -> Path:
    """Make a set and write it to `out`; an `out` that would be refused is refused before any image is made."""
    from calib.core.sets import check_set_target, write_set

    source_info(source)
    check_set_target(out, overwrite)
    t0 = time.perf_counter()
    g = generate(source, per_class, seed, progress=progress, **options)
    seconds = time.perf_counter() - t0
    given = {k: v for k, v in options.items() if v is not None}
    return write_set(out, g.images, g.labels, g.ids, source, {"per_class": per_class, **given},
                     {"set": seed}, role=g.role, extra={**g.extra, "generate_seconds": round(seconds, 2)},
                     overwrite=overwrite)


from calib.core.sources import cifar10, fractal, inversion, noise  # noqa: E402,F401
