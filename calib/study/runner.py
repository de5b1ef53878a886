"""The resumable study runner: one flat row per cell in `rows.jsonl`, appended atomically.

A cell is its resolved condition (`calib.study.condition`): its grid axes, and everything else that decides its
numbers (calib's own code included), resolved once in the driver before anything runs (`calib.study.resolve`)
and shipped whole to where it runs. Each row carries that condition's id (`condition`); a rerun skips every cell
whose condition already has an `ok` row and runs the others (skipped and error cells retry, e.g. after adding
weights or a teacher; a cell whose weights, data, versions, machine or code changed runs again, and the run says
how many reran for their code). A run folder can hold rows of several conditions of one cell, from several
machines; the report never pools or pairs them across weights or hardware. A run killed at any point resumes to
the same table.

The driver generates every calibration set before any cell runs, so cells only read sets; a failing cell records
an error row and the run goes on. The cells' work is in `calib.study.cells`, where it runs in
`calib.study.executors` (this process, local worker processes, or Ray tasks), speed in `calib.study.timing`
(timed alone, once per distinct model computation: `speed.jsonl`), the shared sets and FP32 exports in
`calib.study.artifacts`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import tomllib

from calib.core.errors import CalibError
from calib.core.hardware import ATEN_ENV, ISA_ENV, MKL_ENV, NUMPY_ENV
from calib.core.runs import atomic_write_bytes, provenance, read_jsonl, to_jsonable
from calib.study.artifacts import generate_once
from calib.study.cells import run_cell
from calib.study.condition import resolve_context
from calib.study.executors import run_local, run_ray
from calib.study.grid import Cell, Grid, Selection, load_grid, select, source_options
from calib.study.memory import PeakMemory, peak_rss_mib
from calib.study.resolve import Resolved, resolve_cells
from calib.study.rows import ROWS, append_row, error_row, repair_rows


def resolve_grid(grid: Grid, data_dir: Path | None) -> Grid:
    """The grid with its locations and source options expanded once, in the driver: workers on other
    machines or with another environment see the same paths."""
    from calib.core.data import resolve_data_dir

    data = data_dir or grid.data_path() or resolve_data_dir(None)
    weights = grid.weights_path()
    return replace(grid, data_dir=str(Path(data).resolve()) if data else None,
                   weights_dir=os.pathsep.join(map(str, weights)) if weights else None,
                   source_options={s: source_options(grid, s) for s in grid.source_options})


def _record_test_labels(out: Path, data_dir: Path | None) -> None:
    """Keep the test labels in the run folder, so the report pairs FP32 and INT8 predictions per image
    without the data; a run folder never mixes two test splits."""
    from calib.core.data import load_split

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


def _record_test_subsets(out: Path, resolved: list[Resolved]) -> None:
    """Where a model's accuracy is on part of the test split, keep those indices by their hash in
    `test_indices/`, so the report pairs predictions with the right labels."""
    seen = set()
    for rc in resolved:
        ev = rc.evaluation
        if ev is None or rc.weights in seen:
            continue
        seen.add(rc.weights)
        if ev.test_slice is None:
            continue  # the whole split: test_labels.json says it all
        path = out / "test_indices" / f"{ev.test_indices_sha256}.json"
        if not path.exists():
            atomic_write_bytes(path, json.dumps({"indices": ev.test_indices.tolist()}).encode())


def prepare(resolved: list[Resolved], out: Path, progress: bool = False) -> tuple[list[Resolved], list[dict]]:
    """Before any cell runs: rows for cells that are skipped or whose set cannot be made, and every set the
    other cells need, generated here once. Returns (cells to run, rows already decided)."""
    from calib.core.progress import progress as progress_bar

    for folder in (out / "sets", out / "models" / "fp32"):
        for stale in folder.glob(".*.tmp-*") if folder.is_dir() else ():  # left by a killed run; no cell runs now
            shutil.rmtree(stale, ignore_errors=True)
    runnable, rows, failed = [], [], {}
    with progress_bar("calibration sets", len(resolved), quiet=not progress) as advance:
        for rc in resolved:
            advance()
            if rc.skip:
                rows.append(run_cell(rc, out))  # a skipped row, at once
                continue
            if rc.cell.kind != "quantize":
                runnable.append(rc)
                continue
            needed = [(rc.set_folder, rc.cell, rc.set_options)]
            if rc.weights is not None:  # the label-free estimate's probe: cells with accuracy only
                needed += list(rc.probe_sets)
            for folder, as_cell, options in needed:
                if folder not in failed and not folder.exists():
                    advance(0, description=f"set {folder.name}")
                    try:
                        generate_once(folder, as_cell.source, as_cell.per_class, as_cell.seed, options)
                    except Exception as e:  # noqa: BLE001 - the cells of this set get an error row each
                        failed[folder] = f"set {folder.name} could not be made: {type(e).__name__}: {e}"
            broken = [failed[folder] for folder, _, _ in needed if folder in failed]
            if broken:
                rows.append(error_row(rc, broken[0]))
            else:
                runnable.append(rc)
    return runnable, rows


def run_study(grid_path: Path, out: Path, executor: str = "local", address: str | None = None,
              data_dir: Path | None = None, selection: Selection = Selection(), progress: bool = True,
              jobs: int = 1, on_row: Callable[[dict], None] | None = None,
              on_work: Callable[[Cell, dict], None] | None = None,
              on_start: Callable[[Cell, float], None] | None = None,
              on_note: Callable[[str], None] | None = None) -> dict:
    """Run every cell of a grid whose resolved condition has no `ok` row yet into `out`; returns counts, wall
    time, CPU time of every process and peak memory. `on_row(row)` hears of every cell's row: first the ok rows
    of cells done before, then each row as it is written (the CLI's progress); `on_work(cell, row)` of each
    cell's work as it ends (a timed cell's row comes after its speed, at the end); `on_start(cell, time)` of each
    cell's start (local executor); `on_note(line)` of what a person should know before it runs (cells rerun
    because calib's code changed).

    `jobs` > 1 does every cell's work in that many local worker processes (NNCF's statistics collection is
    single-threaded Python, so two cores do twice the work); speed is always timed with nothing else running.
    """
    if executor not in ("local", "ray"):
        raise CalibError(f"unknown executor {executor!r} (local or ray)")
    if jobs < 1 or (jobs > 1 and executor != "local"):
        raise CalibError(f"--jobs {jobs}: give 1 or more worker processes, with the local executor only "
                         "(Ray sizes its own workers)")
    capped = [f"{k}={os.environ[k]}" for k in (ISA_ENV, ATEN_ENV, NUMPY_ENV, MKL_ENV) if os.environ.get(k)]
    if capped:
        raise CalibError(f"{', '.join(capped)} is set here; unset it and list the ISA in the grid's `isas`, so "
                         "each cell runs, and says, the ISA it was asked for")
    return _run_study(grid_path, out, executor, address, data_dir, selection, progress, jobs, on_row, on_work,
                      on_start, on_note)


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its children that ended (the workers, once their pools close)."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def _run_study(grid_path: Path, out: Path, executor: str, address: str | None, data_dir: Path | None,
               selection: Selection, progress: bool, jobs: int, on_row: Callable[[dict], None] | None,
               on_work: Callable[[Cell, dict], None] | None = None,
               on_start: Callable[[Cell, float], None] | None = None,
               on_note: Callable[[str], None] | None = None) -> dict:
    grid = load_grid(grid_path)
    cells = select(grid, selection)  # an unknown value fails here, before anything is written
    grid = resolve_grid(grid, data_dir)
    data_dir = Path(grid.data_dir) if grid.data_dir else None
    out.mkdir(parents=True, exist_ok=True)
    kept = out / "grid.toml"
    if kept.exists() and tomllib.loads(kept.read_text()) != tomllib.loads(grid_path.read_text()):
        raise CalibError(f"{out} holds a run of another grid; choose another --out")
    if not kept.exists() or kept.read_bytes() != grid_path.read_bytes():
        atomic_write_bytes(kept, grid_path.read_bytes())  # the same grid; its comments may have changed
    ctx = resolve_context(grid, data_dir)
    manifest = provenance({"grid_seeds": list(grid.seeds)}, {"grid": str(grid_path), "data_dir": grid.data_dir,
                                                             "weights_dir": grid.weights_dir, **ctx.data})
    atomic_write_bytes(out / f"manifest-{int(time.time())}.json",
                       json.dumps(to_jsonable(manifest | {"hardware_by_isa": ctx.hardware}), indent=1).encode())
    resolved = resolve_cells(grid, cells, out, ctx)  # the one place a cell is decided
    rows_path = out / ROWS
    repair_rows(rows_path)
    before = read_jsonl(rows_path)
    ok_rows = {r["condition"]: r for r in before if r.get("status") == "ok" and "condition" in r}
    todo = [rc for rc in resolved if rc.id not in ok_rows]
    older_code = {r.get("code_free_condition", r["condition"]) for r in ok_rows.values()}
    rerun = sum(rc.code_free_id in older_code for rc in todo)
    if rerun and on_note is not None:
        on_note(f"{rerun} cell{'s' if rerun != 1 else ''} rerun: calib's code changed since their rows were made "
                f"(code {ctx.code})")
    last = {r["condition"]: r for r in before if "condition" in r}
    if on_row is not None:
        for rc in resolved:
            if rc.id in ok_rows:
                on_row(ok_rows[rc.id])
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    with PeakMemory() as memory:
        if todo:
            _record_test_labels(out, data_dir)
            _record_test_subsets(out, todo)
        runnable, decided = prepare(todo, out, progress)
        for row in decided:
            old = last.get(row.get("condition"), {})
            if (old.get("status"), old.get("reason")) != ("skipped", row.get("reason")) or row["status"] != "skipped":
                append_row(rows_path, row, on_row)  # a cell skipped again for the same reason keeps its row
            elif on_row is not None:
                on_row(row)
        if executor == "ray":
            run_ray(runnable, out, rows_path, address, memory, on_row)
        else:
            run_local(grid.name, runnable, out, rows_path, jobs, progress, memory, on_row, on_work, on_start)
    newest = {r["condition"]: r for r in read_jsonl(rows_path) if "condition" in r}
    status = [newest[rc.id].get("status") if rc.id in newest else "missing" for rc in resolved]
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    summary = {"cells": len(cells), "ran": len(todo), "skipped_done": len(cells) - len(todo),
               "rerun_code_changed": rerun, "code_fingerprint": ctx.code,
               "ok": status.count("ok"), "skipped": status.count("skipped"), "errors": status.count("error"),
               "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
               "cpu_percent": round(100 * cpu / wall, 0) if wall > 0 else 0.0, "cpu_count": os.cpu_count(),
               "peak_rss_mib": round(memory.mib, 1),
               "peak_rss_one_process_mib": round(peak_rss_mib(), 1), "executor": executor, "jobs": jobs,
               "hardware_keys": sorted({ctx.hardware[c.isa]["hardware_key"] for c in cells})}
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=1).encode())
    return summary
