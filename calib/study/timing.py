"""Speed in a study: a finished cell's model file timed under the grid's protocol, once per distinct model
computation, machine, ISA, protocol and library versions (`speed.jsonl`: delete it to time everything again).

The executors call `add_speed` with nothing else running, after the rest of the work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from calib.core.errors import CalibError
from calib.core.hardware import hardware
from calib.core.runs import append_jsonl, read_jsonl
from calib.study.condition import Context, resolve_context, wrong_process
from calib.study.grid import Cell, Grid
from calib.study.plan import measures_pytorch, protocol_of
from calib.study.rows import failure_fields

if TYPE_CHECKING:
    from calib.core.engines import Protocol

SPEED = "speed.jsonl"  # one timing per model computation, machine, ISA, protocol and versions


def timed(what: str, time_it: Callable[[], dict], cell: Cell, out: Path, protocol: Protocol, ctx: Context) -> dict:
    """A timing of `what` (a model fingerprint) on this machine and ISA under `protocol`: the one already in the
    run's `speed.jsonl`, or taken now by `time_it()` and added. Returns the timing and which cell took it."""
    key = {"what": what, "hardware_key": hardware()["hardware_key"], "isa": cell.isa, "protocol": asdict(protocol),
           "versions": ctx.versions}
    for entry in read_jsonl(out / SPEED):
        if entry.get("key") == key:
            return entry
    entry = {"key": key, "timed_by": cell.id, "time": round(time.time(), 3), "result": time_it()}
    append_jsonl(out / SPEED, entry)
    return entry


def add_speed(grid: Grid, cell: Cell, row: dict, out: Path, ctx: Context | None = None) -> dict:
    """Time a finished cell's model file (and, in a model's first baseline per ISA, PyTorch) under the grid's
    protocol, or reuse the timing of an equal model on this machine; the row becomes an error row if timing
    fails."""
    from calib.core.speed import bench_file, model_fingerprint, speed_fields, time_model
    from calib.core.weights import load_model

    ctx = ctx or resolve_context(grid, Path(row["data_dir"]) if row.get("data_dir") else None)
    t0, cpu0 = time.perf_counter(), time.process_time()
    row = {k: v for k, v in row.items() if k != "speed_pending"} | {"speed_started_at": round(time.time(), 3)}
    protocol = protocol_of(grid)
    try:
        wrong = wrong_process(cell, ctx)
        if wrong:
            raise CalibError(wrong)
        if cell.kind == "baseline" and measures_pytorch(grid, cell):
            weights = Path(row["weights"]) if row.get("weights") else None
            what = f"pytorch:{cell.model}:{row.get('weights_sha256') or 'random'}:fuse={cell.fuse}"
            entry = timed(what, lambda: time_model("pytorch", load_model(cell.model, weights, pretrained=weights
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
        row |= failure_fields(e)
    row["speed_seconds"] = round(time.perf_counter() - t0, 2)
    row["wall_seconds"] = round(row.get("wall_seconds", 0.0) + row["speed_seconds"], 2)
    row["cpu_seconds"] = round(row.get("cpu_seconds", 0.0) + time.process_time() - cpu0, 2)
    row["finished_at"] = round(time.time(), 3)
    return row
