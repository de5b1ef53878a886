"""Study grids: a TOML file names models, sources, set sizes, algorithms, options and seeds; `expand` makes cells.

Locations (`data_dir`, `weights_dir`, source options) are strings in which `${NAME}` and `${NAME:-default}`
expand from the environment as in the shell; an empty result means "not set" (then the usual order applies:
`CALIB_CIFAR10_DIR` / `CALIB_WEIGHTS_DIR`, else the official downloads). Relative paths are taken from the
current directory, like every other path option of the command line.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
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
    # INT8 speed is timed only in quantize cells that match this table ({axis: [values]}; empty: all);
    # FP32 baselines are always timed when `benchmark` is on
    benchmark_only: dict = field(default_factory=dict)
    # quantize cells left out: each entry {axis: [values], ...} drops the cells that match all its axes
    exclude: tuple[dict, ...] = ()
    data_dir: str | None = None  # CIFAR-10 image-folder root, e.g. "${CALIB_CIFAR10_DIR}"
    weights_dir: str | None = None  # folder of cifar10_<model>-<sha8>.pt files, e.g. "${CALIB_WEIGHTS_DIR}"
    source_options: dict = field(default_factory=dict)
    # `calib diagnose` on every OpenVINO quantize cell (reference: the validation split); rows under diagnose/
    diagnose: bool = False
    # images per calibration item (statistics stay per image; see calibration.quantize.QuantizeConfig)
    calibration_batch: int = 1
    # accuracy-aware: validation images NNCF ranks quantizers on when the drop is too large (None: all of them)
    ranking_subset_size: int | None = None

    def times(self, cell: Cell) -> bool:
        """Whether a cell measures speed (benchmark cells run alone, never beside other cells)."""
        if not self.benchmark:
            return False
        return cell.kind != "quantize" or matches(cell, self.benchmark_only)

    def data_path(self) -> Path | None:
        return _location(self.data_dir, "data_dir")

    def weights_path(self) -> Path | None:
        return _location(self.weights_dir, "weights_dir")


def matches(cell: Cell, pattern: dict) -> bool:
    """Whether every axis named in `pattern` holds one of the listed values (a single value counts as a list)."""
    return all(getattr(cell, k) in (v if isinstance(v, list | tuple) else [v]) for k, v in pattern.items())


_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_env(value: str) -> str:
    """`${NAME}` and `${NAME:-default}` from the environment; an unset or empty NAME gives the default or ""."""
    return _VAR.sub(lambda m: os.environ.get(m["name"]) or (m["default"] or ""), value)


def _location(raw: str | None, key: str) -> Path | None:
    if raw is None:
        return None
    value = expand_env(raw).strip()
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise CalibError(f"grid {key} {path} (from {raw!r}) is not a folder")
    return path


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

    patterns = [("benchmark_only", grid.benchmark_only), *(("exclude", e) for e in grid.exclude)]
    for key, pattern in patterns:
        if not isinstance(pattern, dict) or set(pattern) - set(Cell.__dataclass_fields__):
            raise CalibError(f"{path}: {key} entries map cell axes ({', '.join(Cell.__dataclass_fields__)}) "
                             f"to lists of values, not {pattern!r}")
    named = [v for _, p in patterns for k, vs in p.items() if k in ("model", "source")
             for v in (vs if isinstance(vs, list | tuple) else [vs])]
    bad = [m for m in (*grid.models, *grid.accuracy_aware_models) if m not in list_models(include_tiny=True)]
    bad += [s for s in grid.sources if s not in list_sources()]
    bad += [v for v in named if v not in list_models(include_tiny=True) and v not in list_sources()]
    if bad:
        raise CalibError(f"{path}: unknown models or sources {bad}")
    for key in ("data_dir", "weights_dir"):
        if getattr(grid, key) is not None and not isinstance(getattr(grid, key), str):
            raise CalibError(f"{path}: {key} must be a string (a path, \"${{ENV}}\" or \"${{ENV:-default}}\")")
    return grid


def select(grid: Grid, models: list[str] | None = None, sources: list[str] | None = None) -> list[Cell]:
    """The grid's cells restricted to some models and sources; a name the grid does not hold is an error."""
    for given, known, what in ((models, grid.models, "models"), (sources, grid.sources, "sources")):
        unknown = [x for x in given or () if x not in known]
        if unknown:
            raise CalibError(f"--{what} {','.join(unknown)}: not in grid {grid.name!r} "
                             f"(its {what}: {', '.join(known)})")
    return [c for c in expand(grid) if (not models or c.model in models)
            and (not sources or c.kind == "baseline" or c.source in sources)]


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
                cell = Cell("quantize", m, e, s, algo, seed, grid.per_class, sub, fbc, fuse,
                            grid.max_drop if algo == "accuracy-aware" else 0.01)
                if not any(matches(cell, x) for x in grid.exclude):
                    cells.append(cell)
    return cells


def source_options(grid: Grid, source: str) -> dict:
    """Options of a source from the grid; strings expand ${NAME} / ${NAME:-default}, and an empty one is unset."""
    opts = {k: expand_env(v) if isinstance(v, str) else v for k, v in grid.source_options.get(source, {}).items()}
    return {k: v for k, v in opts.items() if v is not None and v != ""}
