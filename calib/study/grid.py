"""Study grids: a TOML file names models, sources, set sizes, algorithms, options and seeds; `expand` makes cells.

A grid is checked whole when it is loaded (names, types, ranges, the ISAs this CPU runs), so a mistake is one
clear error before any work. `isas` caps oneDNN's instruction set (`ONEDNN_MAX_CPU_ISA`) per cell, for the engines
whose kernels follow it (`ISA_ENGINES`); the others run natively only.

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
from typing import TYPE_CHECKING

import tomllib

from calib.core.errors import CalibError
from calib.core.hardware import NATIVE, check_isa

if TYPE_CHECKING:
    from calib.core.spec import QuantizeSpec

# engines whose CPU kernels follow ONEDNN_MAX_CPU_ISA (OpenVINO's CPU plugin); ONNX Runtime's MLAS ignores it
ISA_ENGINES = ("openvino",)
# speed protocol floor for every grid: repeats of at least this long, at least this many of them
MIN_BENCHMARK_SECONDS = 1.0
MIN_BENCHMARK_REPEATS = 5


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
    isa: str = NATIVE  # oneDNN's instruction-set cap for this cell's process ("native": none)

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
    benchmark_seconds: float = MIN_BENCHMARK_SECONDS  # each timed repeat (after a warm-up)
    benchmark_repeats: int = MIN_BENCHMARK_REPEATS  # median and spread over these
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
    # images per calibration item (statistics stay per image; see calib.core.spec.QuantizeSpec.calibration_batch)
    calibration_batch: int = 1
    # accuracy-aware: validation images NNCF ranks quantizers on when the drop is too large (None: all of them)
    ranking_subset_size: int | None = None
    # oneDNN instruction sets to run OpenVINO cells with: "native" (no cap) or levels up to this CPU's
    isas: tuple[str, ...] = (NATIVE,)
    # images per class of the label-free estimate's probe (`calib.core.drop`), made once per run
    probe_per_class: int = 50

    def isas_for(self, engine: str) -> tuple[str, ...]:
        """The ISA axis of an engine: the grid's `isas` where the engine's kernels follow the cap, else native."""
        return self.isas if engine in ISA_ENGINES else (NATIVE,)

    def times(self, cell: Cell) -> bool:
        """Whether a cell measures speed (benchmark cells run alone, never beside other cells)."""
        if not self.benchmark:
            return False
        return cell.kind != "quantize" or matches(cell, self.benchmark_only)

    def data_path(self) -> Path | None:
        return _location(self.data_dir, "data_dir")

    def weights_path(self) -> list[Path] | None:
        """The weight folders, in search order (`weights_dir` may list several, separated by os.pathsep)."""
        parts = expand_env(self.weights_dir or "").split(os.pathsep)
        found = [_folder(part.strip(), self.weights_dir, "weights_dir") for part in parts if part.strip()]
        return found or None


def matches(cell: Cell, pattern: dict) -> bool:
    """Whether every axis named in `pattern` holds one of the listed values (a single value counts as a list)."""
    return all(getattr(cell, k) in (v if isinstance(v, list | tuple) else [v]) for k, v in pattern.items())


_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_env(value: str) -> str:
    """`${NAME}` and `${NAME:-default}` from the environment; an unset or empty NAME gives the default or ""."""
    return _VAR.sub(lambda m: os.environ.get(m["name"]) or (m["default"] or ""), value)


def _location(raw: str | None, key: str) -> Path | None:
    """The folder a grid key names, environment expanded; None where it names none."""
    value = expand_env(raw).strip() if raw is not None else ""
    return _folder(value, raw, key) if value else None


def _folder(value: str, raw: str | None, key: str) -> Path:
    """An expanded, non-empty folder name as an absolute path; one line where it is not a folder."""
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise CalibError(f"grid {key} {path} (from {raw!r}) is not a folder")
    return path


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# key: (what it must be, check); lists are checked element by element and must be non-empty without repeats
_LISTS = {
    "models": ("model names", lambda v: isinstance(v, str)),
    "sources": ("source names", lambda v: isinstance(v, str)),
    "seeds": ("non-negative integers", lambda v: _int(v) and v >= 0),
    "engines": ("engine names", lambda v: isinstance(v, str)),
    "algos": ("algorithm names", lambda v: isinstance(v, str)),
    "accuracy_aware_models": ("model names", lambda v: isinstance(v, str)),
    "subset_sizes": ("non-negative integers (0: the whole set)", lambda v: _int(v) and v >= 0),
    "fast_bias_correction": ("true or false", lambda v: isinstance(v, bool)),
    "fuse": ("true or false", lambda v: isinstance(v, bool)),
    "isas": ("ISA names", lambda v: isinstance(v, str)),
}
_SCALARS = {
    "name": ("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip())),
    "per_class": ("a positive integer", lambda v: _int(v) and v > 0),
    "max_drop": ("a number between 0 and 1", lambda v: _number(v) and 0 < v < 1),
    "benchmark": ("true or false", lambda v: isinstance(v, bool)),
    "benchmark_seconds": ("a number of seconds", _number),
    "benchmark_repeats": ("an integer", _int),
    "benchmark_only": ("a table of cell axes", lambda v: isinstance(v, dict)),
    "exclude": ("an array of tables of cell axes", lambda v: isinstance(v, list)),
    "data_dir": ("a string (a path, \"${ENV}\" or \"${ENV:-default}\")", lambda v: isinstance(v, str)),
    "weights_dir": ("a string (a path, \"${ENV}\" or \"${ENV:-default}\")", lambda v: isinstance(v, str)),
    "source_options": ("a table of tables, one per source", lambda v: isinstance(v, dict)
                       and all(isinstance(o, dict) for o in v.values())),
    "diagnose": ("true or false", lambda v: isinstance(v, bool)),
    "calibration_batch": ("a positive integer", lambda v: _int(v) and v > 0),
    "ranking_subset_size": ("a positive integer", lambda v: _int(v) and v > 0),
    "probe_per_class": ("a positive integer", lambda v: _int(v) and v > 0),
}


def _check_types(path: Path, raw: dict) -> None:
    """Every key has the type and range it needs: one error naming the key and the value, before any work."""
    for key, value in raw.items():
        if key in _LISTS:
            what, ok = _LISTS[key]
            if not isinstance(value, list) or not value or not all(ok(v) for v in value):
                raise CalibError(f"{path}: {key} must be a non-empty list of {what}, not {value!r}")
            if len({json.dumps(v) for v in value}) != len(value):
                raise CalibError(f"{path}: {key} lists a value twice: {value!r}")
        elif key in _SCALARS:
            what, ok = _SCALARS[key]
            if not ok(value):
                raise CalibError(f"{path}: {key} must be {what}, not {value!r}")


def load_grid(path: Path) -> Grid:
    """Read and check a grid file; every mistake is one `CalibError` line, raised before any work."""
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
    _check_types(path, raw)
    if raw.get("benchmark", True):
        seconds = raw.get("benchmark_seconds", MIN_BENCHMARK_SECONDS)
        repeats = raw.get("benchmark_repeats", MIN_BENCHMARK_REPEATS)
        if seconds < MIN_BENCHMARK_SECONDS or repeats < MIN_BENCHMARK_REPEATS:
            raise CalibError(f"{path}: speed is timed in at least {MIN_BENCHMARK_REPEATS} repeats of at least "
                             f"{MIN_BENCHMARK_SECONDS:g} s (benchmark_repeats = {repeats}, benchmark_seconds = "
                             f"{seconds:g}); or set benchmark = false")
    # a subset size of 0 in TOML means "the whole set"
    if "subset_sizes" in raw:
        raw["subset_sizes"] = [s or None for s in raw["subset_sizes"]]
    if "isas" in raw:
        try:
            raw["isas"] = [check_isa(i) for i in raw["isas"]]
        except CalibError as e:
            raise CalibError(f"{path}: isas: {e}") from None
    for key, value in raw.items():
        if isinstance(value, list):
            raw[key] = tuple(value)
    grid = Grid(**raw)
    from calib.core.engines import list_engines
    from calib.core.sources import list_sources
    from calib.core.spec import Algo
    from calib.core.zoo import list_models

    engines = list_engines(int8=True)
    bad = [e for e in grid.engines if e not in engines]
    if bad:
        raise CalibError(f"{path}: unknown engines {bad}; engines that quantize: {', '.join(engines)}")
    algos = [a.value for a in Algo]
    bad = [a for a in grid.algos if a not in algos]
    if bad:
        raise CalibError(f"{path}: unknown algos {bad}; algorithms: {', '.join(algos)}")
    patterns = [("benchmark_only", grid.benchmark_only), *(("exclude", e) for e in grid.exclude)]
    for key, pattern in patterns:
        if not isinstance(pattern, dict) or set(pattern) - set(Cell.__dataclass_fields__):
            raise CalibError(f"{path}: {key} entries map cell axes ({', '.join(Cell.__dataclass_fields__)}) "
                             f"to lists of values, not {pattern!r}")
    named = [v for _, p in patterns for k, vs in p.items() if k in ("model", "source")
             for v in (vs if isinstance(vs, list | tuple) else [vs])]
    bad = [m for m in (*grid.models, *grid.accuracy_aware_models) if m not in list_models(include_tiny=True)]
    bad += [s for s in (*grid.sources, *grid.source_options) if s not in list_sources()]
    bad += [v for v in named if v not in list_models(include_tiny=True) and v not in list_sources()]
    if bad:
        raise CalibError(f"{path}: unknown models or sources {bad}")
    for cell in expand(grid):  # every quantization validated as `calib quantize` validates it
        if cell.kind == "quantize":
            try:
                quantize_spec(grid, cell, Path("."))
            except CalibError as e:
                raise CalibError(f"{path}: {e}") from None
    return grid


@dataclass(frozen=True)
class Selection:
    """Some of a grid's cells: only these models, sources, algorithms and seeds (None: all of them). Baselines
    always stay, since every quantize cell is compared with its own."""

    models: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None
    algos: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None

    def check(self, grid: Grid) -> None:
        """A value the grid does not hold is an error, named as its command-line option."""
        for what in ("models", "sources", "algos", "seeds"):
            known = getattr(grid, what)
            unknown = [str(x) for x in getattr(self, what) or () if x not in known]
            if unknown:
                raise CalibError(f"--{what} {','.join(unknown)}: not in grid {grid.name!r} "
                                 f"(its {what}: {', '.join(map(str, known))})")

    def keeps(self, cell: Cell) -> bool:
        if self.models and cell.model not in self.models:
            return False
        return cell.kind == "baseline" or ((not self.sources or cell.source in self.sources)
                                           and (not self.algos or cell.algo in self.algos)
                                           and (not self.seeds or cell.seed in self.seeds))


def select(grid: Grid, selection: Selection = Selection()) -> list[Cell]:
    """The grid's cells that `selection` keeps, after checking it against the grid."""
    selection.check(grid)
    return [c for c in expand(grid) if selection.keeps(c)]


def expand(grid: Grid) -> list[Cell]:
    """Baselines first (one per model, engine, fusing and ISA: what a quantize cell is compared with), then
    every quantization cell."""
    cells, quantize = [], []
    for m, e, fuse in itertools.product(grid.models, grid.engines, grid.fuse):
        if not fuse and "repvgg" not in m:  # only RepVGG has branches to fuse
            continue
        for isa in grid.isas_for(e):
            cells.append(Cell("baseline", m, e, fuse=fuse, isa=isa))
            for algo in grid.algos:
                if algo == "accuracy-aware" and (m not in grid.accuracy_aware_models or e != "openvino"):
                    continue
                fbcs = grid.fast_bias_correction if e == "openvino" else (True,)  # an NNCF option only
                for s, seed, sub, fbc in itertools.product(grid.sources, grid.seeds, grid.subset_sizes, fbcs):
                    cell = Cell("quantize", m, e, s, algo, seed, grid.per_class, sub, fbc, fuse,
                                grid.max_drop if algo == "accuracy-aware" else 0.01, isa)
                    if not any(matches(cell, x) for x in grid.exclude):
                        quantize.append(cell)
    return cells + quantize


def source_options(grid: Grid, source: str) -> dict:
    """Options of a source from the grid; strings expand ${NAME} / ${NAME:-default}, and an empty one is unset."""
    opts = {k: expand_env(v) if isinstance(v, str) else v for k, v in grid.source_options.get(source, {}).items()}
    return {k: v for k, v in opts.items() if v is not None and v != ""}


def quantize_options(grid: Grid, cell: Cell) -> dict:
    """The quantization options a cell passes (besides model, set, weights and data): only those its engine has
    (`Engine.options`) and its algorithm uses, so nothing is passed, or recorded, that was not used."""
    from calib.core.engines import get_engine

    has = getattr(get_engine(cell.engine), "options", None)
    wanted: dict = {"subset_size": cell.subset_size, "seed": cell.seed, "calibration_batch": grid.calibration_batch,
                    "fast_bias_correction": cell.fast_bias_correction}
    if cell.algo == "accuracy-aware":
        wanted |= {"max_drop": cell.max_drop, "ranking_subset_size": grid.ranking_subset_size}
    return {k: v for k, v in wanted.items() if not has or k in has} | {"fuse": cell.fuse}


def quantize_spec(grid: Grid, cell: Cell, calib: Path, weights: Path | None = None, data_dir: Path | None = None,
                  pretrained: bool = True) -> QuantizeSpec:
    """A cell's quantization as the one validated `QuantizeSpec` that `calib quantize` builds too."""
    from calib.core.spec import QuantizeSpec

    return QuantizeSpec(model=cell.model, calib=calib, algo=cell.algo, engine=cell.engine, weights=weights,
                        data_dir=data_dir, pretrained=pretrained, **quantize_options(grid, cell))
