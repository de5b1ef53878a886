"""The resumable study runner: one flat row per cell in `rows.jsonl`, appended atomically.

A rerun skips every cell that already has a row; a run killed at any point resumes to the same table.
Sets are generated once per (source, options, seed) and reused; a failing cell records an error row and
the run goes on. Cells run in this process, or as Ray tasks with `executor="ray"`.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from calibration.errors import CalibError
from calibration.runs import append_jsonl, atomic_write_bytes, provenance, read_jsonl, to_jsonable
from experiments.grid import Cell, Grid, expand, load_grid, source_options

ROWS = "rows.jsonl"


def repair_rows(path: Path) -> None:
    """Drop a torn last line left by a kill mid-write, so the next append starts on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        atomic_write_bytes(path, data[: data.rfind(b"\n") + 1])


def set_for(grid: Grid, cell: Cell, out: Path, data_dir: Path | None = None) -> Path:
    """Generate (or reuse) the set a cell needs; folder names carry a hash of source, options and seed."""
    from calibration.sets import read_set
    from calibration.sources import generate_set

    opts = source_options(grid, cell.source)
    if cell.source == "inversion":
        opts.setdefault("model", cell.model)  # data-free: inverted from the model being quantized
    if cell.source == "cifar10" and data_dir is not None:
        opts.setdefault("data_dir", data_dir)
    key = json.dumps({"source": cell.source, "per_class": cell.per_class, "seed": cell.seed,
                      **{k: str(v) for k, v in opts.items()}}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    folder = out / "sets" / f"{cell.source}-{cell.per_class}pc-s{cell.seed}-{digest}"
    if folder.exists():
        read_set(folder)  # validates; a damaged cached set is an error, not silently reused
        return folder
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return generate_set(cell.source, cell.per_class, cell.seed, folder, **opts)


def skip_reason(grid: Grid, cell: Cell) -> str | None:
    """Why a cell cannot run on this machine (a missing teacher), or None."""
    if cell.source == "stylegan2-ada" and not source_options(grid, "stylegan2-ada").get("teacher"):
        return "no StyleGAN2-ADA teacher: set CALIB_STYLEGAN2_PKL to NVIDIA's cifar10.pkl"
    return None


def _weights_or_reason(model: str) -> tuple[Path | None, str | None]:
    from calibration.weights import resolve_weights

    try:
        return resolve_weights(model), None
    except CalibError as e:
        return None, str(e)


def run_cell(grid: Grid, cell: Cell, out: Path, data_dir: Path | None = None) -> dict:
    """Do one cell and return its row (never raises: failures become error rows)."""
    t0 = time.perf_counter()
    row = {"grid": grid.name, "cell": cell.id, **asdict(cell)}
    try:
        reason = skip_reason(grid, cell) if cell.kind == "quantize" else None
        weights, missing = _weights_or_reason(cell.model)
        if reason:
            return {**row, "status": "skipped", "reason": reason}
        if cell.kind == "baseline":
            row |= _baseline(grid, cell, out, weights, data_dir)
            row["weights_note"] = missing or ""
        elif weights is None and (cell.algo != "default" or not grid.benchmark):
            return {**row, "status": "skipped", "reason": missing}
        elif weights is None:  # speed needs no trained weights; accuracy does
            row |= _speed_only_cell(grid, cell, out, data_dir)
            row["weights_note"] = missing
        else:
            row |= _quantize_cell(grid, cell, out, weights, data_dir)
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - a failing cell must not stop the study
        row |= {"status": "error", "reason": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=3)}
    row["wall_seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _baseline(grid: Grid, cell: Cell, out: Path, weights: Path | None, data_dir: Path | None) -> dict:
    """FP32 accuracy (PyTorch and the engine's FP32 file) and FP32 speed; speed needs no trained weights."""
    from calibration.benchmark import Protocol, bench_torch, model_size_bytes
    from calibration.data import load_split
    from calibration.export import save_ir, to_onnx, to_openvino
    from calibration.pipeline import accuracy_of
    from calibration.train import accuracy, pick_device
    from calibration.weights import load_model

    model = load_model(cell.model, weights, pretrained=weights is not None, fuse=cell.fuse)
    folder = out / "models" / f"{cell.model}-{cell.engine}-fp32"
    if cell.engine == "openvino":
        path = save_ir(to_openvino(model), folder / "fp32.xml")
    else:
        path = to_onnx(model, folder / "fp32.onnx")
    row = {"fp32_bytes": model_size_bytes(path), "trained_weights": weights is not None}
    if weights is not None:
        test = load_split("test", data_dir)
        row["pytorch_accuracy"] = accuracy(model, test, pick_device("cpu"))
        row["fp32_accuracy"] = accuracy_of(path, test)["accuracy"]
    if grid.benchmark:
        protocol = Protocol(duration_s=grid.benchmark_seconds)
        row["pytorch_fps"] = bench_torch(model, protocol)["fps_latency_median"]
        row |= _speed(path, protocol, "fp32")
    return row


def _speed(path: Path, protocol, prefix: str) -> dict:
    from calibration.benchmark import bench_file

    b = bench_file(path, protocol)
    return {f"{prefix}_fps": b["fps_throughput_median"], f"{prefix}_fps_spread": b.get("fps_throughput_runs"),
            f"{prefix}_latency_fps": b["fps_latency_median"]}


def _quantize_cell(grid: Grid, cell: Cell, out: Path, weights: Path, data_dir: Path | None) -> dict:
    from calibration.benchmark import Protocol
    from calibration.data import load_split
    from calibration.pipeline import QuantizeRequest, accuracy_of, quantize_with
    from calibration.sets import read_set

    cset = read_set(set_for(grid, cell, out, data_dir))
    req = QuantizeRequest(model=cell.model, calib=cset.path, algo=cell.algo, engine=cell.engine,
                          subset_size=min(cell.subset_size, len(cset)) if cell.subset_size else None,
                          fast_bias_correction=cell.fast_bias_correction, max_drop=cell.max_drop, seed=cell.seed,
                          weights=weights, data_dir=data_dir, fuse=cell.fuse)
    q = quantize_with(req, cset, out / "models" / cell.id)
    row = {k: q[k] for k in ("subset_size_images", "quantize_seconds", "fp32_bytes", "int8_bytes", "calib_hash")
           if k in q}
    row["int8_accuracy"] = accuracy_of(q["int8_path"], load_split("test", data_dir))["accuracy"]
    if grid.benchmark:
        row |= _speed(Path(q["int8_path"]), Protocol(duration_s=grid.benchmark_seconds), "int8")
    return row


def _speed_only_cell(grid: Grid, cell: Cell, out: Path, data_dir: Path | None) -> dict:
    from calibration.benchmark import Protocol
    from calibration.pipeline import quantize_for_speed
    from calibration.sets import read_set

    cset = read_set(set_for(grid, cell, out, data_dir))
    subset = min(cell.subset_size, len(cset)) if cell.subset_size else None
    q = quantize_for_speed(cell.model, cell.engine, cset, out / "models" / cell.id, subset_size=subset,
                           seed=cell.seed)
    return {"fp32_bytes": q["fp32_bytes"], "int8_bytes": q["int8_bytes"], "calib_hash": cset.content_hash,
            "trained_weights": False, **_speed(Path(q["int8_path"]), Protocol(duration_s=grid.benchmark_seconds),
                                               "int8")}


def _peak_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def run_study(grid_path: Path, out: Path, executor: str = "local", address: str | None = None,
              data_dir: Path | None = None, models: list[str] | None = None, sources: list[str] | None = None,
              progress: bool = True) -> dict:
    """Run every unfinished cell of a grid into `out`; returns counts, wall time and peak memory."""
    grid = load_grid(grid_path)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "grid.toml").exists():
        atomic_write_bytes(out / "grid.toml", grid_path.read_bytes())
    elif (out / "grid.toml").read_bytes() != grid_path.read_bytes():
        raise CalibError(f"{out} holds a run of another grid; choose another --out")
    atomic_write_bytes(out / f"manifest-{int(time.time())}.json",
                       json.dumps(to_jsonable(provenance({"grid_seeds": list(grid.seeds)},
                                                         {"grid": str(grid_path)})), indent=1).encode())
    rows_path = out / ROWS
    repair_rows(rows_path)
    done = {r["cell"] for r in read_jsonl(rows_path)}
    cells = [c for c in expand(grid) if (not models or c.model in models) and (not sources or c.kind == "baseline"
                                                                                or c.source in sources)]
    todo = [c for c in cells if c.id not in done]
    t0 = time.perf_counter()
    if executor == "ray":
        _run_ray(grid, todo, out, rows_path, address, data_dir)
    elif executor == "local":
        from rich.progress import Progress

        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"study {grid.name}", total=len(todo))
            for cell in todo:
                bar.update(task, description=f"{cell.kind} {cell.model} {cell.source} {cell.algo}")
                append_jsonl(rows_path, run_cell(grid, cell, out, data_dir))
                bar.advance(task)
    else:
        raise CalibError(f"unknown executor {executor!r} (local or ray)")
    rows = read_jsonl(rows_path)
    summary = {"cells": len(cells), "ran": len(todo), "skipped_done": len(cells) - len(todo),
               "ok": sum(r["status"] == "ok" for r in rows), "skipped": sum(r["status"] == "skipped" for r in rows),
               "errors": sum(r["status"] == "error" for r in rows),
               "wall_seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(_peak_rss_mib(), 1)}
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1).encode())
    return summary


def _run_ray(grid: Grid, todo: list[Cell], out: Path, rows_path: Path, address: str | None,
             data_dir: Path | None) -> None:
    try:
        import ray
    except ImportError:
        raise CalibError("the ray executor needs `pip install 'calib[ray]'`") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("CALIB_")}})
    remote = ray.remote(run_cell)
    pending = [remote.remote(grid, c, out, data_dir) for c in todo]
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            append_jsonl(rows_path, ray.get(ready[0]))  # the driver alone writes rows
    finally:
        if started:
            ray.shutdown()
