"""Study grids: a TOML file names models, sources, set sizes, algorithms, options and seeds; `expand` makes cells."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomllib

from calibration.errors import CalibError


@dataclass(frozen=True)
class Cell:
    """One unit of work. `kind` is "baseline" (FP32 accuracy and speed) or "quantize"."""

    kind: str
    model: str
    engine: str = "openvino"
    source: str = ""
    algo: str = "default"
    seed: int = 0
    per_class: int = 0
    subset_size: int | None = None
    fast_bias_correction: bool = True
    fuse: bool = True
    max_drop: float = 0.01

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def id(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Grid:
    name: str
    models: tuple[str, ...]
    sources: tuple[str, ...]
    per_class: int = 500
    seeds: tuple[int, ...] = (0,)
    engines: tuple[str, ...] = ("openvino",)
    algos: tuple[str, ...] = ("default",)
    accuracy_aware_models: tuple[str, ...] = ()
    subset_sizes: tuple[int | None, ...] = (None,)
    fast_bias_correction: tuple[bool, ...] = (True,)
    fuse: tuple[bool, ...] = (True,)
    max_drop: float = 0.01
    benchmark: bool = True
    benchmark_seconds: float = 2.0
    source_options: dict = field(default_factory=dict)


def load_grid(path: Path) -> Grid:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CalibError(f"grid file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise CalibError(f"{path} is not valid TOML: {e}") from None
    known = set(Grid.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CalibError(f"{path}: unknown grid keys {unknown}")
    for key in ("name", "models", "sources"):
        if key not in raw:
            raise CalibError(f"{path}: missing required key {key!r}")
    # a subset size of 0 in TOML means "the whole set"
    if "subset_sizes" in raw:
        raw["subset_sizes"] = [s or None for s in raw["subset_sizes"]]
    for key, value in raw.items():
        if isinstance(value, list):
            raw[key] = tuple(value)
    grid = Grid(**raw)
    from calibration.sources import list_sources
    from calibration.zoo import list_models

    bad = [m for m in grid.models if m not in list_models(include_tiny=True)]
    bad += [s for s in grid.sources if s not in list_sources()]
    if bad:
        raise CalibError(f"{path}: unknown models or sources {bad}")
    return grid


def expand(grid: Grid) -> list[Cell]:
    """Baselines first (one per model and engine), then every quantization cell."""
    cells = [Cell("baseline", m, e) for m in grid.models for e in grid.engines]
    for m, e, fuse in itertools.product(grid.models, grid.engines, grid.fuse):
        if not fuse and "repvgg" not in m:  # only RepVGG has branches to fuse
            continue
        for algo in grid.algos:
            if algo == "accuracy-aware" and (m not in grid.accuracy_aware_models or e != "openvino"):
                continue
            fbcs = grid.fast_bias_correction if e == "openvino" else (True,)  # an NNCF option only
            for s, seed, sub, fbc in itertools.product(grid.sources, grid.seeds, grid.subset_sizes, fbcs):
                cells.append(Cell("quantize", m, e, s, algo, seed, grid.per_class, sub, fbc, fuse,
                                  grid.max_drop if algo == "accuracy-aware" else 0.01))
    return cells


def source_options(grid: Grid, source: str) -> dict:
    """Options of a source from the grid; string values may name environment variables as ${NAME}."""
    opts = dict(grid.source_options.get(source, {}))
    for k, v in opts.items():
        if isinstance(v, str) and v.startswith("${") and v.endswith("}"):
            opts[k] = os.environ.get(v[2:-1]) or None
    return {k: v for k, v in opts.items() if v is not None}
