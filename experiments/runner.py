"""The resumable study runner: one flat row per cell in `rows.jsonl`, appended atomically.

A cell is its resolved condition: its grid axes, and everything else that decides its numbers, resolved in the
driver before anything runs (weights sha256, the data's content hashes, the test images, every quantize and
source option, the speed protocol, library versions, the hardware key of the ISA it runs with). Each row carries
that condition's id (`condition`); a rerun skips every cell whose condition already has an `ok` row and runs the
others (skipped and error cells retry, e.g. after adding weights or a teacher; a cell whose weights, data,
versions or machine changed runs again). A run folder can hold rows of several conditions of one cell, from
several machines; the report never pools or pairs them across weights or hardware. A run killed at any point
resumes to the same table.

The driver generates every calibration set before any cell runs, so cells only read sets; a failing cell records
an error row and the run goes on. Cells run in this process, in local worker processes, or as Ray tasks; a cell
with an ISA cap (`isa` other than native) runs in a process started with `ONEDNN_MAX_CPU_ISA` in its
environment, so the cap holds before OpenVINO or PyTorch is imported. Speed is always timed with nothing else
running, after the rest of the work, once per distinct model computation, machine, ISA, protocol and library
versions (`speed.jsonl`: delete it to time everything again). Each
model's FP32 file is exported once per engine, weight file and library versions, shared by its cells.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import resource
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calibration.errors import CalibError
from calibration.hardware import ISA_ENV, NATIVE, hardware, isa_env
from calibration.runs import (
    append_jsonl,
    atomic_write_bytes,
    git_state,
    provenance,
    read_jsonl,
    staging_dir,
    to_jsonable,
    versions,
)
from experiments.grid import Cell, Grid, load_grid, select, source_options

if TYPE_CHECKING:
    from calibration.data import LabeledImages

ROWS = "rows.jsonl"
SPEED = "speed.jsonl"  # one timing per model computation, machine, ISA, protocol and versions


def repair_rows(path: Path) -> None:
    """Drop a torn last line left by a kill mid-write, so the next append starts on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        atomic_write_bytes(path, data[: data.rfind(b"\n") + 1])


def set_plan(grid: Grid, cell: Cell, out: Path, data_dir: Path | None = None) -> tuple[Path, dict]:
    """The folder of the set a cell needs and the source options that make it; the folder name carries a
    hash of source, options and seed, so equal requests share one set."""
    opts = source_options(grid, cell.source)
    if cell.source == "inversion":
        opts.setdefault("model", cell.model)  # data-free: inverted from the model being quantized
        weights = _weights_or_reason(cell.model, grid)[0] if grid.weights_path() is not None else None
        if weights is not None:
            opts.setdefault("weights", weights)
    if cell.source == "cifar10" and data_dir is not None:
        opts.setdefault("data_dir", data_dir)
    key = json.dumps({"source": cell.source, "per_class": cell.per_class, "seed": cell.seed,
                      **{k: str(v) for k, v in opts.items()}}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return out / "sets" / f"{cell.source}-{cell.per_class}pc-s{cell.seed}-{digest}", opts


def set_for(grid: Grid, cell: Cell, out: Path, data_dir: Path | None = None) -> Path:
    """Reuse the set a cell needs, or generate it (the driver does this before cells run)."""
    from calibration.sets import read_set

    folder, opts = set_plan(grid, cell, out, data_dir)
    if folder.exists():
        read_set(folder)  # validates; a damaged cached set is an error, not silently reused
        return folder
    return _generate_once(folder, cell.source, cell.per_class, cell.seed, opts)


def _make_once(folder: Path, done: str, make: Callable[[Path], Path]) -> Path:
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


def _generate_once(folder: Path, source: str, per_class: int, seed: int, opts: dict) -> Path:
    """Generate a set once (see `_make_once`)."""
    from calibration.sources import generate_set

    return _make_once(folder, "manifest.json",
                      lambda staging: generate_set(source, per_class, seed, staging / folder.name, **opts))


def _export_versions() -> str:
    """A short tag of the libraries an export depends on: another version exports into another folder."""
    v = versions()
    text = json.dumps({k: v.get(k) for k in ("torch", "openvino", "onnxruntime", "onnx")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def fp32_export(model: str, engine: str, fuse: bool, weights: Path | None, out: Path) -> Path:
    """The engine's FP32 file of a zoo model, exported once per run, weight file and library versions, and shared
    by the model's baselines and all its quantize cells (the same file every cell would export for itself)."""
    from calibration.engines import get_engine
    from calibration.weights import file_sha256, load_model

    eng = get_engine(engine)
    tag = file_sha256(weights)[:12] if weights else "random"
    folder = out / "models" / "fp32" / f"{model}-{engine}-{'fused' if fuse else 'unfused'}-{tag}-{_export_versions()}"
    path = folder / f"fp32{eng.suffix}"
    if not path.exists():
        net = load_model(model, weights, pretrained=weights is not None, fuse=fuse)
        _make_once(folder, path.name, lambda staging: eng.export(net, staging).parent)
    return path


def skip_reason(grid: Grid, cell: Cell) -> str | None:
    """Why a cell cannot run on this machine (a missing teacher), or None."""
    if cell.source == "stylegan2-ada" and not source_options(grid, "stylegan2-ada").get("teacher"):
        return "no StyleGAN2-ADA teacher: set CALIB_STYLEGAN2_PKL to NVIDIA's cifar10.pkl"
    return None


_WEIGHTS_MEMO: dict | None = None  # within one `run_study`: each model's weights are looked up once


def _weights_or_reason(model: str, grid: Grid | None = None) -> tuple[Path | None, str | None]:
    """The model's weight file: the grid's `weights_dir`, else `CALIB_WEIGHTS_DIR`, else the official release."""
    from calibration.weights import resolve_weights

    key = (model, grid.weights_dir if grid else None, os.environ.get("CALIB_WEIGHTS_DIR"))
    if _WEIGHTS_MEMO is not None and key in _WEIGHTS_MEMO:
        return _WEIGHTS_MEMO[key]
    try:
        found = resolve_weights(model, weights_dir=grid.weights_path() if grid else None), None
    except CalibError as e:
        found = None, str(e)
    if _WEIGHTS_MEMO is not None:
        _WEIGHTS_MEMO[key] = found
    return found


@contextlib.contextmanager
def _weights_looked_up_once() -> Iterator[None]:
    global _WEIGHTS_MEMO
    _WEIGHTS_MEMO = {}
    try:
        yield
    finally:
        _WEIGHTS_MEMO = None


def _plan(grid: Grid, cell: Cell) -> tuple[str | None, Path | None, str | None]:
    """(skip reason, weight file, note on missing weights) of a cell, decided before it runs."""
    weights, missing = _weights_or_reason(cell.model, grid)
    if cell.kind == "quantize":
        reason = skip_reason(grid, cell)
        if reason is None and weights is None and (cell.algo != "default" or not grid.times(cell)):
            reason = missing  # accuracy needs trained weights; only speed cells run with random ones
        if reason:
            return reason, weights, missing
    return None, weights, missing


# --- the test images and the resolved condition ---------------------------------------------------------------


def test_for(weights: Path | None, data_dir: Path | None = None) -> LabeledImages:
    """The test images a model's final accuracy is computed on (role test, with `indices` into the test split):
    the one place that decides it, for baselines and quantize cells alike, so an FP32 and an INT8 accuracy of
    one model are always on the same images. Rows record `test_images` and `test_indices_sha256`: the whole
    test split, or the rest of it where accuracy-aware validation takes a slice of test for weights that saw
    all of train (`calibration.data.final_test`)."""
    from calibration.data import final_test

    test = final_test(data_dir, weights)
    return test if test.indices is not None else test.subset(np.arange(len(test)), role="test")


@functools.lru_cache(maxsize=64)
def _test_indices_sha256(weights: str, data_dir: str | None, test_sha256: str) -> str:
    """`indices_sha256` of `test_for` once per weights and test content (a condition is resolved per cell)."""
    from calibration.data import indices_sha256

    return indices_sha256(test_for(Path(weights), Path(data_dir) if data_dir else None))


def _test_fields(test) -> dict:
    from calibration.data import indices_sha256

    return {"test_images": len(test), "test_indices_sha256": indices_sha256(test)}


@functools.lru_cache(maxsize=8)
def _data_hashes(tree_key: str | None, data_dir: str | None) -> tuple[tuple[str, object], ...]:
    from calibration.data import data_provenance

    prov = data_provenance(Path(data_dir) if data_dir else None)
    return tuple((k, prov[k]) for k in ("data", "data_train_sha256", "data_test_sha256", "data_split"))


def data_hashes(data_dir: Path | None) -> dict:
    """The data tree's content hashes (train and test pixels and labels, the train cut), computed once per tree
    and process; an unavailable tree is recorded as such (its cells then fail with the reason)."""
    from calibration.data import _tree_key

    try:
        return dict(_data_hashes(_tree_key(data_dir)[0], str(data_dir) if data_dir else None))
    except CalibError as e:
        return {"data": f"unavailable: {e}"}


@dataclass(frozen=True)
class Context:
    """What the conditions of a run's cells share, resolved once in the driver: data content, library versions,
    the git state, and the hardware each ISA runs on (the fields of `calibration.hardware.hardware`)."""

    data: dict
    versions: dict
    git: dict
    hardware: dict  # isa -> hardware fields of a process running that ISA


def resolve_context(grid: Grid, data_dir: Path | None) -> Context:
    isas = {NATIVE, *grid.isas}
    env = {k: v for k, v in os.environ.items() if k != ISA_ENV}
    return Context(data_hashes(data_dir), versions(), git_state(),
                   {isa: hardware({**env, **isa_env(isa)}) for isa in sorted(isas)})


def quantize_options(grid: Grid, cell: Cell) -> dict:
    """The quantization options a cell passes (besides model, set, weights and data): only those its engine has
    (`Engine.options`) and its algorithm uses, so nothing is passed, or recorded, that was not used."""
    from calibration.engines import get_engine

    has = getattr(get_engine(cell.engine), "options", None)
    wanted: dict = {"subset_size": cell.subset_size, "seed": cell.seed, "calibration_batch": grid.calibration_batch,
                    "fast_bias_correction": cell.fast_bias_correction}
    if cell.algo == "accuracy-aware":
        wanted |= {"max_drop": cell.max_drop, "ranking_subset_size": grid.ranking_subset_size}
    return {k: v for k, v in wanted.items() if not has or k in has} | {"fuse": cell.fuse}


def condition(grid: Grid, cell: Cell, ctx: Context, weights: Path | None, data_dir: Path | None = None) -> dict:
    """Everything that decides a cell's numbers, resolved: equal conditions give equal rows (up to timing)."""
    from calibration.pipeline import QuantizeRequest
    from calibration.weights import file_sha256

    cond: dict = {"cell": asdict(cell), "weights_sha256": file_sha256(weights) if weights else None,
                  "data": ctx.data, "versions": ctx.versions,
                  "hardware_key": ctx.hardware[cell.isa]["hardware_key"]}
    if weights is not None and "data_test_sha256" in ctx.data:
        cond["test_indices_sha256"] = _test_indices_sha256(str(weights), str(data_dir) if data_dir else None,
                                                           ctx.data["data_test_sha256"])
    if cell.kind == "quantize":
        opts = quantize_options(grid, cell)
        request = asdict(QuantizeRequest(model=cell.model, calib=Path(), algo=cell.algo, engine=cell.engine,
                                         pretrained=weights is not None, **opts))
        cond["quantize"] = {k: v for k, v in request.items() if k not in ("model", "calib", "weights", "data_dir")}
        cond["source_options"] = {k: str(v) for k, v in set_plan(grid, cell, Path(), data_dir)[1].items()}
        cond["diagnose"] = grid.diagnose and cell.engine == "openvino"
    if grid.times(cell):
        cond["speed"] = asdict(protocol_of(grid))
    return json.loads(json.dumps(to_jsonable(cond), sort_keys=True, default=str))


def condition_id(cond: dict) -> str:
    return hashlib.sha256(json.dumps(cond, sort_keys=True).encode()).hexdigest()[:16]


def _identity(cond: dict, ctx: Context) -> dict:
    """The flat row fields that say which condition a row is: its id, weights, data, versions, git state."""
    return {"condition": condition_id(cond), "weights_sha256": cond["weights_sha256"],
            "data_train_sha256": ctx.data.get("data_train_sha256"),
            "data_test_sha256": ctx.data.get("data_test_sha256"),
            "git_sha": ctx.git["git_sha"], "dirty": ctx.git["dirty"],
            **{f"version_{k}": v for k, v in ctx.versions.items()}}


def _hardware_fields(hw: dict) -> dict:
    """A process's hardware fields for a row; the ISA oneDNN runs is `isa_effective` (the cell's `isa` axis
    is what was asked for)."""
    return {"cpu": hw["cpu"], "cpu_count": hw["cpu_count"], "cpu_flags": hw["cpu_flags"],
            "isa_native": hw["isa_native"], "isa_effective": hw["isa"], "onednn_max_cpu_isa": hw["onednn_max_cpu_isa"],
            "hardware_key": hw["hardware_key"]}


def _wrong_process(cell: Cell, ctx: Context) -> str | None:
    """Why this process cannot run the cell: its ISA cap is not the cell's, or it is another machine."""
    want = isa_env(cell.isa).get(ISA_ENV, "")
    have = os.environ.get(ISA_ENV, "")
    if have.upper() != want.upper():
        return (f"cell with isa {cell.isa} ran in a process with {ISA_ENV}={have or '(unset)'}; it needs a worker "
                f"started with {ISA_ENV}={want or '(unset)'}")
    expected = ctx.hardware[cell.isa]["hardware_key"]
    here = hardware()["hardware_key"]
    if here != expected:
        return f"this worker's hardware ({here}) is not the driver's ({expected}); rows compare within one machine"
    return None


# --- one cell ---------------------------------------------------------------------------------------------------


def run_cell(grid: Grid, cell: Cell, out: Path, data_dir: Path | None = None, speed: bool = True,
             ctx: Context | None = None) -> dict:
    """Do one cell and return its row (never raises: failures become error rows). A timed cell with
    `speed=False` leaves its speed to `add_speed` (runners time cells alone, after the rest)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    ctx = ctx or resolve_context(grid, data_dir)
    row = {"grid": grid.name, "cell": cell.id, **asdict(cell), "timed": grid.times(cell)}
    try:
        reason, weights, missing = _plan(grid, cell)
        row |= _identity(condition(grid, cell, ctx, weights, data_dir), ctx)
        row |= _hardware_fields(ctx.hardware[cell.isa])
        if reason:
            return {**row, "status": "skipped", "reason": reason}
        wrong = _wrong_process(cell, ctx)
        if wrong:
            raise CalibError(wrong)
        row |= _hardware_fields(hardware())  # as this process sees it
        row["started_at"] = round(time.time(), 3)
        row["data_dir"] = str(data_dir) if data_dir else None
        row["weights"] = str(weights) if weights else None
        if cell.kind == "quantize":
            row["calib_set"] = str(set_plan(grid, cell, out, data_dir)[0].relative_to(out))
        if cell.kind == "baseline":
            row |= _baseline(grid, cell, out, weights, data_dir)
            row["weights_note"] = missing or ""
        elif weights is None:  # speed needs no trained weights; accuracy does (see _plan)
            row |= _speed_only_cell(grid, cell, out, data_dir, row["condition"])
            row["weights_note"] = missing
        else:
            row |= _quantize_cell(grid, cell, out, weights, data_dir, row["condition"])
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - a failing cell must not stop the study
        row |= _failure(e)
    row["wall_seconds"] = round(time.perf_counter() - t0, 2)
    row["cpu_seconds"] = round(time.process_time() - cpu0, 2)  # this process's CPU time: all threads
    row["finished_at"] = row["work_finished_at"] = round(time.time(), 3)
    if row["timed"] and row["status"] == "ok":
        if not speed:
            return {**row, "speed_pending": True}
        row = add_speed(grid, cell, row, out, ctx)
    return row


def _failure(e: Exception) -> dict:
    return {"status": "error", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=3)}


def _measures_pytorch(grid: Grid, cell: Cell) -> bool:
    """PyTorch does not depend on the engine, but on the ISA: its accuracy and speed are measured in the baseline
    of the first engine that runs this ISA."""
    return cell.engine == next(e for e in grid.engines if cell.isa in grid.isas_for(e))


def _baseline(grid: Grid, cell: Cell, out: Path, weights: Path | None, data_dir: Path | None) -> dict:
    """FP32 accuracy and per-image predictions of the engine's FP32 file (and PyTorch's accuracy, once per model
    and ISA); speed is added by `add_speed`."""
    from calibration.benchmark import model_size_bytes
    from calibration.engines import get_engine
    from calibration.evaluate import evaluate
    from calibration.pipeline import accuracy_of, predictions_to_str
    from calibration.weights import load_model

    path = fp32_export(cell.model, cell.engine, cell.fuse, weights, out)
    row = {"fp32_bytes": model_size_bytes(path), "trained_weights": weights is not None,
           "model_file": str(path.relative_to(out)), **_kernels(path)}
    if weights is not None:
        test = test_for(weights, data_dir)
        if _measures_pytorch(grid, cell):
            model = load_model(cell.model, weights, fuse=cell.fuse)
            row["pytorch_accuracy"] = evaluate(model, test, engine=get_engine("pytorch"))["accuracy"]
        fp32 = accuracy_of(path, test)
        row |= {"fp32_accuracy": fp32["accuracy"], "fp32_predictions": predictions_to_str(fp32["predictions"]),
                **_test_fields(test)}
    return row


def _kernels(path: Path) -> dict:
    """For an OpenVINO IR, the kernels the CPU plugin picked in this process (they show the ISA it ran)."""
    if Path(path).suffix != ".xml":
        return {}
    from calibration.hardware import openvino_kernels

    return {"ov_kernels": openvino_kernels(path)}


def _jsonable(value) -> bool:
    try:
        json.dumps(to_jsonable(value))
        return True
    except (TypeError, ValueError):
        return False


def result_fields(q: dict, out: Path) -> dict:
    """Every JSON-able field of a quantize result for the row (the cell's own axes and absolute paths stay
    out; the INT8 file is named relative to the run folder)."""
    keep = {k: to_jsonable(v) for k, v in q.items()
            if k not in ("int8_path", "fp32_path", "calib_set", *Cell.__dataclass_fields__) and _jsonable(v)}
    return keep | {"model_file": str(Path(q["int8_path"]).relative_to(out))}


def _quantize_cell(grid: Grid, cell: Cell, out: Path, weights: Path, data_dir: Path | None, cid: str) -> dict:
    from calibration.pipeline import QuantizeRequest, accuracy_of, predictions_to_str, quantize_with
    from calibration.sets import read_set

    cset = read_set(set_for(grid, cell, out, data_dir))
    opts = quantize_options(grid, cell)
    if opts["subset_size"]:
        opts["subset_size"] = min(opts["subset_size"], len(cset))
    req = QuantizeRequest(model=cell.model, calib=cset.path, algo=cell.algo, engine=cell.engine, weights=weights,
                          data_dir=data_dir, **opts)
    fp32 = fp32_export(cell.model, cell.engine, cell.fuse, weights, out)
    q = quantize_with(req, cset, out / "models" / f"{cell.id}-{cid[:8]}", fp32)
    row = result_fields(q, out)
    test = test_for(weights, data_dir)
    int8 = accuracy_of(q["int8_path"], test)
    row |= {"int8_accuracy": int8["accuracy"], "int8_predictions": predictions_to_str(int8["predictions"]),
            **_test_fields(test), **_kernels(Path(q["int8_path"]))}
    if grid.diagnose and str(q["int8_path"]).endswith(".xml"):
        row["diagnose_layers"] = _diagnose_cell(cell, q, out, data_dir)
    return row


def _diagnose_cell(cell: Cell, q: dict, out: Path, data_dir: Path | None) -> int:
    """Per-quantizer rows of a quantized cell (`calib diagnose` on files already made), on the validation split."""
    from calibration.data import train_splits
    from calibration.diagnose import measure

    rows = measure(q["fp32_path"], q["int8_path"], train_splits(data_dir)["validation"])
    lines = [json.dumps(to_jsonable({"cell": cell.id, "model": cell.model, "source": cell.source, "algo": cell.algo,
                                     "seed": cell.seed, "weights": q.get("weights_file", ""), **r})) for r in rows]
    atomic_write_bytes(out / "diagnose" / cell.id / "rows.jsonl", ("\n".join(lines) + "\n").encode())
    return len(rows)


def _speed_only_cell(grid: Grid, cell: Cell, out: Path, data_dir: Path | None, cid: str) -> dict:
    from calibration.pipeline import quantize_for_speed
    from calibration.sets import read_set

    cset = read_set(set_for(grid, cell, out, data_dir))
    subset = min(cell.subset_size, len(cset)) if cell.subset_size else None
    q = quantize_for_speed(cell.model, cell.engine, cset, out / "models" / f"{cell.id}-{cid[:8]}",
                           subset_size=subset, seed=cell.seed)
    return result_fields(q, out) | {"trained_weights": False, **_kernels(Path(q["int8_path"]))}


# --- speed ------------------------------------------------------------------------------------------------------


def protocol_of(grid: Grid):
    """The grid's speed protocol: `benchmark_repeats` runs of `benchmark_seconds`, after a warm-up of as long
    (at most 1 s)."""
    from calibration.benchmark import Protocol

    return Protocol(warmup_s=min(1.0, grid.benchmark_seconds), duration_s=grid.benchmark_seconds,
                    repeats=grid.benchmark_repeats)


def timed(what: str, measure_it: Callable[[], dict], cell: Cell, out: Path, protocol, ctx: Context) -> dict:
    """A timing of `what` (a model fingerprint) on this machine and ISA under `protocol`: the one already in the
    run's `speed.jsonl`, or measured now and added. Returns the measurement and which cell measured it."""
    key = {"what": what, "hardware_key": hardware()["hardware_key"], "isa": cell.isa, "protocol": asdict(protocol),
           "versions": ctx.versions}
    for entry in read_jsonl(out / SPEED):
        if entry.get("key") == key:
            return entry
    entry = {"key": key, "timed_by": cell.id, "time": round(time.time(), 3), "result": measure_it()}
    append_jsonl(out / SPEED, entry)
    return entry


def add_speed(grid: Grid, cell: Cell, row: dict, out: Path, ctx: Context | None = None) -> dict:
    """Time a finished cell's model file (and, in a model's first baseline per ISA, PyTorch) under the grid's
    protocol, or reuse the timing of an equal model on this machine; the row becomes an error row if timing
    fails."""
    from calibration.benchmark import bench_file, model_fingerprint, speed_fields
    from calibration.engines import measure
    from calibration.weights import load_model

    ctx = ctx or resolve_context(grid, Path(row["data_dir"]) if row.get("data_dir") else None)
    t0, cpu0 = time.perf_counter(), time.process_time()
    row = {k: v for k, v in row.items() if k != "speed_pending"} | {"speed_started_at": round(time.time(), 3)}
    protocol = protocol_of(grid)
    try:
        wrong = _wrong_process(cell, ctx)
        if wrong:
            raise CalibError(wrong)
        if cell.kind == "baseline" and _measures_pytorch(grid, cell):
            weights = Path(row["weights"]) if row.get("weights") else None
            what = f"pytorch:{cell.model}:{row.get('weights_sha256') or 'random'}:fuse={cell.fuse}"
            entry = timed(what, lambda: measure("pytorch", load_model(cell.model, weights, pretrained=weights
                                                                      is not None, fuse=cell.fuse), protocol),
                          cell, out, protocol, ctx)
            row |= speed_fields("pytorch", entry["result"])
        prefix = "fp32" if cell.kind == "baseline" else "int8"
        path = out / row["model_file"]
        what = model_fingerprint(path)
        entry = timed(what, lambda: bench_file(path, protocol), cell, out, protocol, ctx)
        row |= speed_fields(prefix, entry["result"]) | {
            f"{prefix}_model_fingerprint": what, "speed_timed_by": entry["timed_by"],
            "speed_protocol": entry["result"]["protocol_text"], "speed_repeats": protocol.repeats,
            "speed_seconds_each": protocol.duration_s}
    except Exception as e:  # noqa: BLE001 - a failing cell must not stop the study
        row |= _failure(e)
    row["speed_seconds"] = round(time.perf_counter() - t0, 2)
    row["wall_seconds"] = round(row.get("wall_seconds", 0.0) + row["speed_seconds"], 2)
    row["cpu_seconds"] = round(row.get("cpu_seconds", 0.0) + time.process_time() - cpu0, 2)
    row["finished_at"] = round(time.time(), 3)
    return row


# --- memory -----------------------------------------------------------------------------------------------------


def _peak_rss_mib() -> float:
    """Largest resident set of this process or any finished child, in MiB (ru_maxrss is in KiB on Linux)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def _pss_or_rss(proc) -> int:
    """Proportional set size (a page shared by n processes counts 1/n in each, so a sum over processes counts
    shared libraries once), or the resident set size where the system gives no PSS."""
    try:
        return proc.memory_full_info().pss
    except Exception:  # noqa: BLE001 - AccessDenied, or no smaps on this system
        return proc.memory_info().rss


class PeakMemory:
    """Peak memory of this process and all its descendants together (worker pools, Ray), sampled: the largest
    sum of their proportional set sizes (see `_pss_or_rss`). `paused()` stops sampling (timing runs alone)."""

    def __init__(self, interval_s: float = 0.5):
        import threading

        self.interval_s, self.peak_bytes = interval_s, 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # held by a sample, or by `paused` for as long as timing runs
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        total = _pss_or_rss(me)
        for child in me.children(recursive=True):
            try:
                total += _pss_or_rss(child)
            except psutil.Error:
                pass  # ended between listing and reading
        self.peak_bytes = max(self.peak_bytes, total)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                if not self._stop.is_set():
                    self._sample()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No sample is taken inside this block (the sampler waits on the lock, using no CPU)."""
        with self._lock:
            yield

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def mib(self) -> float:
        return max(self.peak_bytes / 2**20, _peak_rss_mib())  # never below the largest single process


# --- the driver -------------------------------------------------------------------------------------------------


def newest_rows(rows: list[dict]) -> dict[str, dict]:
    """The newest row of each cell (rows are appended in time order, so a retried cell's last row counts)."""
    return {r["cell"]: r for r in rows if "cell" in r}


def _resolved(grid: Grid, data_dir: Path | None) -> Grid:
    """The grid with its locations and source options expanded once, in the driver: workers on other
    machines or with another environment see the same paths."""
    from calibration.data import resolve_data_dir

    data = data_dir or grid.data_path() or resolve_data_dir(None)
    weights = grid.weights_path()
    return replace(grid, data_dir=str(Path(data).resolve()) if data else None,
                   weights_dir=str(weights) if weights else None,
                   source_options={s: source_options(grid, s) for s in grid.source_options})


def _record_test_labels(out: Path, data_dir: Path | None) -> None:
    """Keep the test labels in the run folder, so the report pairs FP32 and INT8 predictions per image
    without the data; a run folder never mixes two test splits."""
    from calibration.data import load_split

    try:
        test = load_split("test", data_dir)
    except CalibError:
        return  # no test data here: cells record the error, the report shows no paired intervals
    labels = "".join(map(str, test.labels.tolist()))
    entry = {"data": test.source, "images": len(labels), "sha256": hashlib.sha256(labels.encode()).hexdigest(),
             "labels": labels}
    path = out / "test_labels.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("sha256") != entry["sha256"]:
            raise CalibError(f"{out} holds results on another test split ({old.get('data')}); "
                             "choose another --out")
        return
    atomic_write_bytes(path, json.dumps(entry, indent=1).encode())


def _record_test_subsets(out: Path, grid: Grid, cells: list[Cell], data_dir: Path | None) -> None:
    """Where a model's accuracy is on part of the test split (`test_for`), keep those indices by their hash in
    `test_indices/`, so the report pairs predictions with the right labels."""
    from calibration.data import indices_sha256

    seen = set()
    for cell in cells:
        weights = _weights_or_reason(cell.model, grid)[0]
        if weights is None or weights in seen:
            continue
        seen.add(weights)
        try:
            test = test_for(weights, data_dir)
        except CalibError:
            return
        if np.array_equal(test.indices, np.arange(test.provenance.get("images", len(test)))):
            continue  # the whole split: test_labels.json says it all
        path = out / "test_indices" / f"{indices_sha256(test)}.json"
        if not path.exists():
            atomic_write_bytes(path, json.dumps({"indices": test.indices.tolist()}).encode())


def _error_row(grid: Grid, cell: Cell, reason: str, ctx: Context | None = None,
               data_dir: Path | None = None) -> dict:
    row = {"grid": grid.name, "cell": cell.id, **asdict(cell), "status": "error", "reason": reason,
           "wall_seconds": 0.0}
    if ctx is not None:
        weights = _weights_or_reason(cell.model, grid)[0]
        row |= _identity(condition(grid, cell, ctx, weights, data_dir), ctx) | _hardware_fields(ctx.hardware[cell.isa])
    return row


def prepare(grid: Grid, todo: list[Cell], out: Path, data_dir: Path | None = None, progress: bool = False,
            ctx: Context | None = None) -> tuple[list[Cell], list[dict]]:
    """Before any cell runs: rows for cells that are skipped or whose set cannot be made, and every set the
    other cells need, generated here once. Returns (cells to run, rows already decided)."""
    from rich.progress import Progress

    ctx = ctx or resolve_context(grid, data_dir)
    for folder in (out / "sets", out / "models" / "fp32"):
        for stale in folder.glob(".*.tmp-*") if folder.is_dir() else ():  # left by a killed run; no cell runs now
            shutil.rmtree(stale, ignore_errors=True)
    runnable, rows, failed = [], [], {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("calibration sets", total=len(todo))
        for cell in todo:
            bar.advance(task)
            if cell.kind != "quantize":
                runnable.append(cell)
                continue
            reason = _plan(grid, cell)[0]
            if reason:
                rows.append(run_cell(grid, cell, out, data_dir, ctx=ctx))  # a skipped row, at once
                continue
            folder, opts = set_plan(grid, cell, out, data_dir)
            if folder not in failed and not folder.exists():
                bar.update(task, description=f"set {folder.name}")
                try:
                    _generate_once(folder, cell.source, cell.per_class, cell.seed, opts)
                except Exception as e:  # noqa: BLE001 - the cells of this set get an error row each
                    failed[folder] = f"set {folder.name} could not be made: {type(e).__name__}: {e}"
            if folder in failed:
                rows.append(_error_row(grid, cell, failed[folder], ctx, data_dir))
            else:
                runnable.append(cell)
    return runnable, rows


def run_study(grid_path: Path, out: Path, executor: str = "local", address: str | None = None,
              data_dir: Path | None = None, models: list[str] | None = None, sources: list[str] | None = None,
              progress: bool = True, jobs: int = 1, on_row: Callable[[dict], None] | None = None) -> dict:
    """Run every cell of a grid whose resolved condition has no `ok` row yet into `out`; returns counts, wall
    time and peak memory. `on_row(row)` hears of every cell's row: first the ok rows of cells done before, then
    each row as it is written (the CLI's progress).

    `jobs` > 1 does every cell's work in that many local worker processes (NNCF's statistics collection is
    single-threaded Python, so two cores do twice the work); speed is always timed with nothing else running.
    """
    if executor not in ("local", "ray"):
        raise CalibError(f"unknown executor {executor!r} (local or ray)")
    if jobs < 1 or (jobs > 1 and executor != "local"):
        raise CalibError(f"--jobs {jobs}: give 1 or more worker processes, with the local executor only "
                         "(Ray sizes its own workers)")
    if os.environ.get(ISA_ENV):
        raise CalibError(f"{ISA_ENV}={os.environ[ISA_ENV]} is set here; unset it and list the ISA in the grid's "
                         "`isas`, so each cell runs, and says, the ISA it was asked for")
    with _weights_looked_up_once():
        return _run_study(grid_path, out, executor, address, data_dir, models, sources, progress, jobs, on_row)


def _run_study(grid_path: Path, out: Path, executor: str, address: str | None, data_dir: Path | None,
               models: list[str] | None, sources: list[str] | None, progress: bool, jobs: int,
               on_row: Callable[[dict], None] | None) -> dict:
    grid = load_grid(grid_path)
    cells = select(grid, models, sources)  # unknown --models/--sources fail here, before anything is written
    grid = _resolved(grid, data_dir)
    data_dir = Path(grid.data_dir) if grid.data_dir else None
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "grid.toml").exists():
        atomic_write_bytes(out / "grid.toml", grid_path.read_bytes())
    elif (out / "grid.toml").read_bytes() != grid_path.read_bytes():
        raise CalibError(f"{out} holds a run of another grid; choose another --out")
    ctx = resolve_context(grid, data_dir)
    manifest = provenance({"grid_seeds": list(grid.seeds)}, {"grid": str(grid_path), "data_dir": grid.data_dir,
                                                             "weights_dir": grid.weights_dir, **ctx.data})
    atomic_write_bytes(out / f"manifest-{int(time.time())}.json",
                       json.dumps(to_jsonable(manifest | {"hardware_by_isa": ctx.hardware}), indent=1).encode())
    cids = {c: condition_id(condition(grid, c, ctx, _weights_or_reason(c.model, grid)[0], data_dir)) for c in cells}
    rows_path = out / ROWS
    repair_rows(rows_path)
    before = read_jsonl(rows_path)
    done = {r["condition"] for r in before if r.get("status") == "ok" and "condition" in r}
    last = {r["condition"]: r for r in before if "condition" in r}
    todo = [c for c in cells if cids[c] not in done]
    if on_row is not None:
        ok_rows = {r["condition"]: r for r in before if r.get("status") == "ok" and "condition" in r}
        for c in cells:
            if cids[c] in done:
                on_row(ok_rows[cids[c]])
    t0 = time.perf_counter()
    with PeakMemory() as memory:
        if todo:
            _record_test_labels(out, data_dir)
            _record_test_subsets(out, grid, todo, data_dir)
        runnable, decided = prepare(grid, todo, out, data_dir, progress, ctx)
        for row in decided:
            old = last.get(row.get("condition"), {})
            if (old.get("status"), old.get("reason")) != ("skipped", row.get("reason")) or row["status"] != "skipped":
                _append(rows_path, row, on_row)  # a cell skipped again for the same reason keeps its row
            elif on_row is not None:
                on_row(row)
        if executor == "ray":
            _run_ray(grid, runnable, out, rows_path, address, data_dir, ctx, memory, on_row)
        else:
            _run_local(grid, runnable, out, rows_path, data_dir, jobs, progress, ctx, memory, on_row)
    newest = {r["condition"]: r for r in read_jsonl(rows_path) if "condition" in r}
    status = [newest[cids[c]].get("status") if cids[c] in newest else "missing" for c in cells]
    summary = {"cells": len(cells), "ran": len(todo), "skipped_done": len(cells) - len(todo),
               "ok": status.count("ok"), "skipped": status.count("skipped"), "errors": status.count("error"),
               "wall_seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(memory.mib, 1),
               "peak_rss_one_process_mib": round(_peak_rss_mib(), 1), "executor": executor, "jobs": jobs,
               "hardware_keys": sorted({ctx.hardware[c.isa]["hardware_key"] for c in cells})}
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1).encode())
    return summary


@contextlib.contextmanager
def _environment(isa: str) -> Iterator[None]:
    """This process's environment holds the ISA cap of `isa` (none for native) inside the block, so worker
    processes started inside it have it from their first instruction. The driver itself runs no kernels meanwhile
    (it only waits on its workers), and oneDNN in this process is unaffected."""
    old = os.environ.get(ISA_ENV)
    os.environ.pop(ISA_ENV, None)
    os.environ.update(isa_env(isa))
    try:
        yield
    finally:
        os.environ.pop(ISA_ENV, None)
        if old is not None:
            os.environ[ISA_ENV] = old


@contextlib.contextmanager
def worker_pool(isa: str, workers: int, pin: bool = True):
    """A pool of `workers` fresh (spawned) processes that run `isa`; with `pin`, each keeps to its own share of
    the cores."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    shares = context.Queue()
    for i in range(workers):  # one disjoint share of the cores per worker, when there are enough
        shares.put(cores[i::workers] if pin and len(cores) >= workers else [])
    with _environment(isa), ProcessPoolExecutor(workers, mp_context=context, initializer=_pin_worker,
                                                initargs=(shares,)) as pool:
        yield pool


def _by_isa(cells: list[Cell]) -> dict[str, list[Cell]]:
    groups: dict[str, list[Cell]] = {}
    for c in sorted(cells, key=lambda c: c.isa != NATIVE):  # native first, then each cap in grid order
        groups.setdefault(c.isa, []).append(c)
    return groups


@contextlib.contextmanager
def _alone(bar, memory: PeakMemory | None) -> Iterator[None]:
    """Nothing else of this process runs: the progress display and the memory sampler stop."""
    bar.stop()
    try:
        with memory.paused() if memory is not None else contextlib.nullcontext():
            yield
    finally:
        bar.start()


def _append(rows_path: Path, row: dict, on_row: Callable[[dict], None] | None) -> None:
    """Write a row, then tell `on_row` (the CLI's progress) about it."""
    append_jsonl(rows_path, row)
    if on_row is not None:
        on_row(row)


def _run_local(grid: Grid, cells: list[Cell], out: Path, rows_path: Path, data_dir: Path | None, jobs: int,
               progress: bool, ctx: Context | None = None, memory: PeakMemory | None = None,
               on_row: Callable[[dict], None] | None = None) -> None:
    """Every cell's work, then the speed of the timed cells, one at a time with nothing else running (a timed
    cell's row is written only once its speed is in, so a run killed before that redoes the cell). Native cells
    work in this process (`jobs` 1) or a pool of `jobs` processes; each capped ISA in a pool of its own, its speed
    in one fresh process of that ISA."""
    from concurrent.futures import as_completed

    from rich.progress import Progress

    ctx = ctx or resolve_context(grid, data_dir)
    pending: dict[Cell, dict] = {}
    groups = _by_isa(cells)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"study {grid.name}", total=len(cells))

        def finish(cell: Cell, row: dict) -> None:
            if row.pop("speed_pending", False):
                pending[cell] = row
                return
            _append(rows_path, row, on_row)
            bar.advance(task)

        for isa, group in groups.items():
            if isa == NATIVE and jobs == 1:
                for cell in group:
                    bar.update(task, description=f"{cell.kind} {cell.model} {cell.engine} {cell.source} {cell.algo}")
                    finish(cell, run_cell(grid, cell, out, data_dir, False, ctx))
                continue
            workers = min(jobs, len(group))
            with worker_pool(isa, workers) as pool:
                futures = {pool.submit(run_cell, grid, c, out, data_dir, False, ctx): c for c in longest_first(group)}
                bar.update(task, description=f"{len(futures)} cells ({isa}) in {workers} processes")
                for future in as_completed(futures):
                    try:
                        row = future.result()
                    except Exception as e:  # noqa: BLE001 - a worker died (killed, out of memory)
                        cell = futures[future]
                        row = _error_row(grid, cell, f"worker process failed: {type(e).__name__}: {e}", ctx, data_dir)
                    finish(futures[future], row)
        for isa, group in groups.items():
            timed_cells = [c for c in group if c in pending]
            if not timed_cells:
                continue
            bar.update(task, description=f"speed ({isa}), {len(timed_cells)} cells")
            with _alone(bar, memory), (worker_pool(isa, 1, pin=False) if isa != NATIVE
                                       else contextlib.nullcontext()) as pool:
                for cell in timed_cells:
                    if pool is None:
                        row = add_speed(grid, cell, pending[cell], out, ctx)
                    else:
                        try:
                            row = pool.submit(add_speed, grid, cell, pending[cell], out, ctx).result()
                        except Exception as e:  # noqa: BLE001 - the worker died
                            row = pending[cell] | _failure(e)
                    _append(rows_path, row, on_row)
                    bar.advance(task)


def longest_first(cells: list[Cell]) -> list[Cell]:
    """Cells in the order a pool should start them: likely long ones first (accuracy-aware, then OpenVINO, then
    larger models), so that no long cell is left to run alone at the end."""
    from calibration.zoo import model_info

    def cost(cell: Cell) -> tuple:
        madds = model_info(cell.model).madds_m or 0.0
        return cell.kind != "quantize", cell.algo != "accuracy-aware", cell.engine != "openvino", -madds

    return sorted(cells, key=cost)


def _pin_worker(shares) -> None:
    """Keep a worker process on its own cores, with as many threads: OpenVINO sizes its pools from the affinity,
    PyTorch is told; otherwise every worker starts threads for all cores and waits on the others' cores."""
    cores = shares.get()
    if cores:
        import torch

        os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))


def _run_ray(grid: Grid, cells: list[Cell], out: Path, rows_path: Path, address: str | None,
             data_dir: Path | None, ctx: Context | None = None, memory: PeakMemory | None = None,
             on_row: Callable[[dict], None] | None = None) -> None:
    """Cells that measure no speed run as parallel Ray tasks; then every timed cell runs alone, one at a time.
    A capped-ISA cell runs in a Ray worker started with the cap in its environment (its own runtime_env). The
    driver alone writes rows; a task that dies (a killed worker) becomes an error row."""
    try:
        import ray
    except ImportError:
        raise CalibError("the ray executor needs `pip install 'calib[ray]'`") from None
    ctx = ctx or resolve_context(grid, data_dir)
    calib_env = {k: v for k, v in os.environ.items() if k.startswith("CALIB_")}
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": calib_env})
    remote = ray.remote(run_cell)

    def submit(cell: Cell):
        task = remote if cell.isa == NATIVE else remote.options(
            runtime_env={"env_vars": calib_env | isa_env(cell.isa)})
        return task.remote(grid, cell, out, data_dir, True, ctx)

    def collect(pending: dict) -> None:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - e.g. the worker process was killed
                row = _error_row(grid, cell, f"Ray task failed: {type(e).__name__}: {str(e)[:300]}", ctx, data_dir)
            _append(rows_path, row, on_row)

    try:
        collect({submit(c): c for c in cells if not grid.times(c)})
        with memory.paused() if memory is not None else contextlib.nullcontext():
            for c in cells:
                if grid.times(c):
                    collect({submit(c): c})
    finally:
        if started:
            ray.shutdown()
