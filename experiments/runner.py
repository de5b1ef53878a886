"""The resumable study runner: one flat row per cell in `rows.jsonl`, appended atomically.

A rerun skips every cell that already has an `ok` row and runs the others again (skipped and error cells
retry, e.g. after adding weights or a teacher); the newest row of a cell is the one that counts. A run
killed at any point resumes to the same table. The driver generates every calibration set before any cell
runs, so cells only read sets; a failing cell records an error row and the run goes on. Cells run in this
process, in local worker processes, or as Ray tasks; speed is always timed with nothing else running, after
the rest of the work. Each model's FP32 file is exported once per engine and weight file, shared by its cells.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from calibration.errors import CalibError
from calibration.runs import append_jsonl, atomic_write_bytes, provenance, read_jsonl, staging_dir, to_jsonable
from experiments.grid import Cell, Grid, load_grid, select, source_options

ROWS = "rows.jsonl"


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


def fp32_export(model: str, engine: str, fuse: bool, weights: Path | None, out: Path) -> Path:
    """The engine's FP32 file of a zoo model, exported once per run and weight file, and shared by the model's
    baseline and all its quantize cells (the same file every cell would export for itself)."""
    from calibration.engines import get_engine
    from calibration.weights import file_sha256, load_model

    eng = get_engine(engine)
    tag = file_sha256(weights)[:12] if weights else "random"
    folder = out / "models" / "fp32" / f"{model}-{engine}-{'fused' if fuse else 'unfused'}-{tag}"
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


def _weights_or_reason(model: str, grid: Grid | None = None) -> tuple[Path | None, str | None]:
    """The model's weight file: the grid's `weights_dir`, else `CALIB_WEIGHTS_DIR`, else the official release."""
    from calibration.weights import resolve_weights

    try:
        return resolve_weights(model, weights_dir=grid.weights_path() if grid else None), None
    except CalibError as e:
        return None, str(e)


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


def run_cell(grid: Grid, cell: Cell, out: Path, data_dir: Path | None = None, speed: bool = True) -> dict:
    """Do one cell and return its row (never raises: failures become error rows). A timed cell with
    `speed=False` leaves its speed to `add_speed` (the parallel runner times cells alone, after the rest)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    row = {"grid": grid.name, "cell": cell.id, **asdict(cell), "timed": grid.times(cell)}
    try:
        reason, weights, missing = _plan(grid, cell)
        if reason:
            return {**row, "status": "skipped", "reason": reason}
        row["started_at"] = round(time.time(), 3)
        row["data_dir"] = str(data_dir) if data_dir else None
        row["weights"] = str(weights) if weights else None
        if cell.kind == "quantize":
            row["calib_set"] = str(set_plan(grid, cell, out, data_dir)[0].relative_to(out))
        if cell.kind == "baseline":
            row |= _baseline(grid, cell, out, weights, data_dir)
            row["weights_note"] = missing or ""
        elif weights is None:  # speed needs no trained weights; accuracy does (see _plan)
            row |= _speed_only_cell(grid, cell, out, data_dir)
            row["weights_note"] = missing
        else:
            row |= _quantize_cell(grid, cell, out, weights, data_dir)
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - a failing cell must not stop the study
        row |= _failure(e)
    row["wall_seconds"] = round(time.perf_counter() - t0, 2)
    row["cpu_seconds"] = round(time.process_time() - cpu0, 2)  # this process's CPU time: all threads
    row["finished_at"] = row["work_finished_at"] = round(time.time(), 3)
    if row["timed"] and row["status"] == "ok":
        if not speed:
            return {**row, "speed_pending": True}
        row = add_speed(grid, cell, row, out)
    return row


def _failure(e: Exception) -> dict:
    return {"status": "error", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=3)}


def protocol_of(grid: Grid):
    """The grid's speed protocol: `benchmark_seconds` per timed run, and as long a warm-up (at most 1 s)."""
    from calibration.benchmark import Protocol

    return Protocol(warmup_s=min(1.0, grid.benchmark_seconds), duration_s=grid.benchmark_seconds)


def add_speed(grid: Grid, cell: Cell, row: dict, out: Path) -> dict:
    """Time a finished cell's model file (and, in a model's first baseline, PyTorch) under the grid's protocol;
    the row becomes an error row if timing fails."""
    from calibration.engines import measure
    from calibration.weights import load_model

    t0, cpu0 = time.perf_counter(), time.process_time()
    row = {k: v for k, v in row.items() if k != "speed_pending"} | {"speed_started_at": round(time.time(), 3)}
    protocol = protocol_of(grid)
    try:
        if cell.kind == "baseline":
            if cell.engine == grid.engines[0]:  # PyTorch does not depend on the engine: timed once per model
                weights = Path(row["weights"]) if row.get("weights") else None
                torch_speed = measure("pytorch", load_model(cell.model, weights, pretrained=weights is not None,
                                                            fuse=cell.fuse), protocol)
                row |= {"pytorch_fps": torch_speed["fps_throughput_median"],
                        "pytorch_latency_fps": torch_speed["fps_latency_median"]}
            row |= _speed(out / row["model_file"], protocol, "fp32")
        else:
            row |= _speed(out / row["model_file"], protocol, "int8")
    except Exception as e:  # noqa: BLE001 - a failing cell must not stop the study
        row |= _failure(e)
    row["speed_seconds"] = round(time.perf_counter() - t0, 2)
    row["wall_seconds"] = round(row.get("wall_seconds", 0.0) + row["speed_seconds"], 2)
    row["cpu_seconds"] = round(row.get("cpu_seconds", 0.0) + time.process_time() - cpu0, 2)
    row["finished_at"] = round(time.time(), 3)
    return row


def _baseline(grid: Grid, cell: Cell, out: Path, weights: Path | None, data_dir: Path | None) -> dict:
    """FP32 accuracy and per-image predictions of the engine's FP32 file (and PyTorch's accuracy, once per model);
    speed is added by `add_speed`."""
    from calibration.benchmark import model_size_bytes
    from calibration.data import load_split
    from calibration.engines import get_engine
    from calibration.evaluate import evaluate
    from calibration.pipeline import accuracy_of, predictions_to_str
    from calibration.weights import load_model

    path = fp32_export(cell.model, cell.engine, cell.fuse, weights, out)
    row = {"fp32_bytes": model_size_bytes(path), "trained_weights": weights is not None,
           "model_file": str(path.relative_to(out))}
    if weights is not None:
        test = load_split("test", data_dir)
        if cell.engine == grid.engines[0]:
            model = load_model(cell.model, weights, fuse=cell.fuse)
            row["pytorch_accuracy"] = evaluate(model, test, engine=get_engine("pytorch"))["accuracy"]
        fp32 = accuracy_of(path, test)
        row |= {"fp32_accuracy": fp32["accuracy"], "fp32_predictions": predictions_to_str(fp32["predictions"]),
                "test_images": len(test)}
    return row


def _speed(path: Path, protocol, prefix: str) -> dict:
    """Throughput and latency under the one protocol of `calibration.engines` (stated in `speed_protocol`)."""
    from calibration.benchmark import bench_file

    b = bench_file(path, protocol)
    return {f"{prefix}_fps": b["fps_throughput_median"], f"{prefix}_fps_spread": b.get("fps_throughput_runs"),
            f"{prefix}_latency_fps": b["fps_latency_median"], "speed_protocol": b["protocol_text"]}


def _quantize_cell(grid: Grid, cell: Cell, out: Path, weights: Path, data_dir: Path | None) -> dict:
    from calibration.data import load_split
    from calibration.pipeline import QuantizeRequest, accuracy_of, predictions_to_str, quantize_with
    from calibration.sets import read_set

    cset = read_set(set_for(grid, cell, out, data_dir))
    req = QuantizeRequest(model=cell.model, calib=cset.path, algo=cell.algo, engine=cell.engine,
                          subset_size=min(cell.subset_size, len(cset)) if cell.subset_size else None,
                          fast_bias_correction=cell.fast_bias_correction, max_drop=cell.max_drop, seed=cell.seed,
                          weights=weights, data_dir=data_dir, fuse=cell.fuse,
                          calibration_batch=grid.calibration_batch, ranking_subset_size=grid.ranking_subset_size)
    fp32 = fp32_export(cell.model, cell.engine, cell.fuse, weights, out)
    q = quantize_with(req, cset, out / "models" / cell.id, fp32)
    row = {k: q[k] for k in ("subset_size_images", "calib_per_class", "quantize_seconds", "fp32_bytes", "int8_bytes",
                             "calib_hash", "preset", "activations", "calibrate_method", "ranking_subset_images",
                             "calibration_batch")
           if k in q}
    row["model_file"] = str(Path(q["int8_path"]).relative_to(out))
    test = load_split("test", data_dir)
    int8 = accuracy_of(q["int8_path"], test)
    row |= {"int8_accuracy": int8["accuracy"], "int8_predictions": predictions_to_str(int8["predictions"]),
            "test_images": len(test)}
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


def _speed_only_cell(grid: Grid, cell: Cell, out: Path, data_dir: Path | None) -> dict:
    from calibration.pipeline import quantize_for_speed
    from calibration.sets import read_set

    cset = read_set(set_for(grid, cell, out, data_dir))
    subset = min(cell.subset_size, len(cset)) if cell.subset_size else None
    q = quantize_for_speed(cell.model, cell.engine, cset, out / "models" / cell.id, subset_size=subset,
                           seed=cell.seed)
    return {"fp32_bytes": q["fp32_bytes"], "int8_bytes": q["int8_bytes"], "calib_hash": cset.content_hash,
            "trained_weights": False, "model_file": str(Path(q["int8_path"]).relative_to(out))}


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
    sum of their proportional set sizes (see `_pss_or_rss`)."""

    def __init__(self, interval_s: float = 0.5):
        import threading

        self.interval_s, self.peak_bytes = interval_s, 0
        self._stop = threading.Event()
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
            self._sample()

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


def _error_row(grid: Grid, cell: Cell, reason: str) -> dict:
    return {"grid": grid.name, "cell": cell.id, **asdict(cell), "status": "error", "reason": reason,
            "wall_seconds": 0.0}


def prepare(grid: Grid, todo: list[Cell], out: Path, data_dir: Path | None = None,
            progress: bool = False) -> tuple[list[Cell], list[dict]]:
    """Before any cell runs: rows for cells that are skipped or whose set cannot be made, and every set the
    other cells need, generated here once. Returns (cells to run, rows already decided)."""
    from rich.progress import Progress

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
                rows.append(run_cell(grid, cell, out, data_dir))  # a skipped row, at once
                continue
            folder, opts = set_plan(grid, cell, out, data_dir)
            if folder not in failed and not folder.exists():
                bar.update(task, description=f"set {folder.name}")
                try:
                    _generate_once(folder, cell.source, cell.per_class, cell.seed, opts)
                except Exception as e:  # noqa: BLE001 - the cells of this set get an error row each
                    failed[folder] = f"set {folder.name} could not be made: {type(e).__name__}: {e}"
            if folder in failed:
                rows.append(_error_row(grid, cell, failed[folder]))
            else:
                runnable.append(cell)
    return runnable, rows


def run_study(grid_path: Path, out: Path, executor: str = "local", address: str | None = None,
              data_dir: Path | None = None, models: list[str] | None = None, sources: list[str] | None = None,
              progress: bool = True, jobs: int = 1) -> dict:
    """Run every cell of a grid that has no `ok` row yet into `out`; returns counts, wall time and peak memory.

    `jobs` > 1 does every cell's work in that many local worker processes (NNCF's statistics collection is
    single-threaded Python, so two cores do twice the work); speed is always timed with nothing else running.
    """
    if executor not in ("local", "ray"):
        raise CalibError(f"unknown executor {executor!r} (local or ray)")
    if jobs < 1 or (jobs > 1 and executor != "local"):
        raise CalibError(f"--jobs {jobs}: give 1 or more worker processes, with the local executor only "
                         "(Ray sizes its own workers)")
    grid = load_grid(grid_path)
    cells = select(grid, models, sources)  # unknown --models/--sources fail here, before anything is written
    grid = _resolved(grid, data_dir)
    data_dir = Path(grid.data_dir) if grid.data_dir else None
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "grid.toml").exists():
        atomic_write_bytes(out / "grid.toml", grid_path.read_bytes())
    elif (out / "grid.toml").read_bytes() != grid_path.read_bytes():
        raise CalibError(f"{out} holds a run of another grid; choose another --out")
    atomic_write_bytes(out / f"manifest-{int(time.time())}.json",
                       json.dumps(to_jsonable(provenance({"grid_seeds": list(grid.seeds)},
                                                         {"grid": str(grid_path), "data_dir": grid.data_dir,
                                                          "weights_dir": grid.weights_dir})), indent=1).encode())
    rows_path = out / ROWS
    repair_rows(rows_path)
    before = newest_rows(read_jsonl(rows_path))
    done = {c for c, r in before.items() if r.get("status") == "ok"}
    todo = [c for c in cells if c.id not in done]
    t0 = time.perf_counter()
    with PeakMemory() as memory:
        if todo:
            _record_test_labels(out, data_dir)
        runnable, decided = prepare(grid, todo, out, data_dir, progress)
        for row in decided:
            old = before.get(row["cell"], {})
            if (old.get("status"), old.get("reason")) != ("skipped", row.get("reason")) or row["status"] != "skipped":
                append_jsonl(rows_path, row)  # a cell skipped again for the same reason keeps its row
        if executor == "ray":
            _run_ray(grid, runnable, out, rows_path, address, data_dir)
        else:
            _run_local(grid, runnable, out, rows_path, data_dir, jobs, progress)
    newest = newest_rows(read_jsonl(rows_path))
    status = [newest[c.id].get("status") if c.id in newest else "missing" for c in cells]
    summary = {"cells": len(cells), "ran": len(todo), "skipped_done": len(cells) - len(todo),
               "ok": status.count("ok"), "skipped": status.count("skipped"), "errors": status.count("error"),
               "wall_seconds": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(memory.mib, 1),
               "peak_rss_one_process_mib": round(_peak_rss_mib(), 1), "executor": executor, "jobs": jobs}
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1).encode())
    return summary


def _run_local(grid: Grid, cells: list[Cell], out: Path, rows_path: Path, data_dir: Path | None, jobs: int,
               progress: bool) -> None:
    """In this process, in grid order; with `jobs` > 1, every cell's work in a pool of worker processes, then
    the speed of the timed cells here, one at a time with nothing else running (a timed cell's row is written
    only once its speed is in, so a run killed before that redoes the cell)."""
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"study {grid.name}", total=len(cells))
        if jobs == 1:
            for cell in cells:
                bar.update(task, description=f"{cell.kind} {cell.model} {cell.engine} {cell.source} {cell.algo}")
                append_jsonl(rows_path, run_cell(grid, cell, out, data_dir))
                bar.advance(task)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        pending = {}
        context = multiprocessing.get_context("spawn")
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        shares = context.Queue()
        for i in range(jobs):  # one disjoint share of the cores per worker, when there are enough
            shares.put(cores[i::jobs] if len(cores) >= jobs else [])
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_pin_worker, initargs=(shares,)) as pool:
            futures = {pool.submit(run_cell, grid, c, out, data_dir, False): c for c in longest_first(cells)}
            bar.update(task, description=f"{len(futures)} cells in {jobs} processes")
            for future in as_completed(futures):
                try:
                    row = future.result()
                except Exception as e:  # noqa: BLE001 - a worker died (killed, out of memory)
                    row = _error_row(grid, futures[future], f"worker process failed: {type(e).__name__}: {e}")
                if row.pop("speed_pending", False):
                    pending[row["cell"]] = row
                    continue
                append_jsonl(rows_path, row)
                bar.advance(task)
        for cell in (c for c in cells if c.id in pending):
            bar.update(task, description=f"speed {cell.kind} {cell.model} {cell.engine}")
            append_jsonl(rows_path, add_speed(grid, cell, pending[cell.id], out))
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
             data_dir: Path | None) -> None:
    """Cells that measure no speed run as parallel Ray tasks; then every timed cell runs alone, one at a time.
    The driver alone writes rows; a task that dies (a killed worker) becomes an error row."""
    try:
        import ray
    except ImportError:
        raise CalibError("the ray executor needs `pip install 'calib[ray]'`") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("CALIB_")}})
    remote = ray.remote(run_cell)

    def collect(pending: dict) -> None:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - e.g. the worker process was killed
                row = _error_row(grid, cell, f"Ray task failed: {type(e).__name__}: {str(e)[:300]}")
            append_jsonl(rows_path, row)

    try:
        collect({remote.remote(grid, c, out, data_dir): c for c in cells if not grid.times(c)})
        for c in cells:
            if grid.times(c):
                collect({remote.remote(grid, c, out, data_dir): c})
    finally:
        if started:
            ray.shutdown()
