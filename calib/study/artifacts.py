"""The files a run's cells share, each made once: calibration sets (`sets/`) and FP32 exports (`models/fp32/`).

A folder is built in a private staging folder and renamed into place, so processes making the same folder never
touch each other's files; its name carries everything its content depends on, so equal requests share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from calib.core.runs import staging_dir
from calib.study.grid import Cell, Grid, source_options


def make_once(folder: Path, done: str, make: Callable[[Path], Path]) -> Path:
    """Build a folder in a private staging folder (`make(staging)` returns what to move) and rename it into
    place: processes making the same folder never touch each other's files, and the first complete one wins
    (same inputs, same content). `done` names the file whose presence marks a complete folder."""
    staging = staging_dir(folder.parent, folder.name)
    try:
        made = make(staging)
        try:
            os.rename(made, folder)  # atomic; fails if another process already put a complete folder there
        except OSError:
            if not (folder / done).exists():
                raise
        return folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def generate_once(folder: Path, source: str, per_class: int, seed: int, opts: dict) -> Path:
    """Generate a set once (see `make_once`)."""
    from calib.core.sources import generate_set

    return make_once(folder, "manifest.json",
                     lambda staging: generate_set(source, per_class, seed, staging / folder.name, **opts))


def set_plan(grid: Grid, cell: Cell, out: Path, data_dir: Path | None,
             weights: Path | None) -> tuple[Path, dict]:
    """The folder of the set a cell needs and the source options that make it; the folder name carries a
    hash of source, options and seed, so equal requests share one set. Inversion inverts the model being
    quantized, with its `weights` where the grid names a weights folder (else the official ones it downloads)."""
    opts = source_options(grid, cell.source)
    if cell.source == "inversion":
        opts.setdefault("model", cell.model)  # data-free: inverted from the model being quantized
        if weights is not None and grid.weights_path() is not None:
            opts.setdefault("weights", weights)
    if cell.source == "cifar10" and data_dir is not None:
        opts.setdefault("data_dir", data_dir)
    key = json.dumps({"source": cell.source, "per_class": cell.per_class, "seed": cell.seed,
                      **{k: str(v) for k, v in opts.items()}}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return out / "sets" / f"{cell.source}-{cell.per_class}pc-s{cell.seed}-{digest}", opts


def probe_plan(grid: Grid, cell: Cell, out: Path) -> tuple[int, tuple[tuple[Path, Cell, dict], ...]]:
    """The probe of a quantize cell (`calib.core.drop`): its seed, and each probe source's set as (folder, the
    cell that set would calibrate, its options), made once per run like calibration sets."""
    from dataclasses import replace

    from calib.core.drop import PROBE_SOURCES, probe_seed

    seed = probe_seed(cell.source, cell.seed)
    sets = []
    for source in PROBE_SOURCES:
        as_cell = replace(cell, source=source, per_class=grid.probe_per_class, seed=seed)
        folder, opts = set_plan(grid, as_cell, out, None, None)
        sets.append((folder, as_cell, opts))
    return seed, tuple(sets)


def set_for(folder: Path, cell: Cell, opts: dict) -> Path:
    """Reuse the set a cell needs (validated: a damaged cached set is an error, not silently reused), or make it
    (the driver does this before cells run)."""
    from calib.core.sets import read_set

    if folder.exists():
        read_set(folder)
        return folder
    return generate_once(folder, cell.source, cell.per_class, cell.seed, opts)


def _export_versions(versions: dict) -> str:
    """A short tag of the libraries an export depends on: another version exports into another folder."""
    text = json.dumps({k: versions.get(k) for k in ("torch", "openvino", "onnxruntime", "onnx")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def fp32_folder(model: str, engine: str, fuse: bool, weights: Path | None, out: Path, versions: dict) -> Path:
    """Where the engine's FP32 file of a zoo model goes: one per run, weight file and library versions, shared by
    the model's baselines and all its quantize cells."""
    from calib.core.engines import get_engine
    from calib.core.weights import file_sha256

    tag = file_sha256(weights)[:12] if weights else "random"
    name = f"{model}-{engine}-{'fused' if fuse else 'unfused'}-{tag}-{_export_versions(versions)}"
    return out / "models" / "fp32" / name / f"fp32{get_engine(engine).suffix}"


def fp32_export(path: Path, model: str, engine: str, fuse: bool, weights: Path | None) -> Path:
    """Export the FP32 file at `path` (named by `fp32_folder`) unless it is there: once per run, whichever cell
    asks first (the same file every cell would export for itself)."""
    from calib.core.engines import get_engine
    from calib.core.weights import load_model

    if not path.exists():
        net = load_model(model, weights, pretrained=weights is not None, fuse=fuse)
        make_once(path.parent, path.name, lambda staging: get_engine(engine).export(net, staging).parent)
    return path
