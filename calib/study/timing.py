"""Speed in a study: a finished cell's model file timed under the grid's protocol, once per distinct model
computation, machine, ISA, protocol and library versions (`speed.jsonl`: delete it to time everything again).

The executors call `add_speed` with nothing else running, after the rest of the work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from calib.core.errors import CalibError
from calib.core.hardware import hardware
from calib.core.runs import append_jsonl, read_jsonl
from calib.study.resolve import Resolved, wrong_process
from calib.study.rows import failure_fields

SPEED = "speed.jsonl"  # one timing per model computation, machine, ISA, protocol and versions


def timed(what: str, time_it: Callable[[], dict], rc: Resolved, out: Path) -> dict:
    """A timing of `what` (a model fingerprint) on this machine and ISA under the cell's protocol: the one already
    in the run's `speed.jsonl`, or taken now by `time_it()` and added. Returns the timing and which cell took it."""
    key = {"what": what, "hardware_key": hardware()["hardware_key"], "isa": rc.cell.isa,
           "protocol": asdict(rc.protocol), "versions": rc.condition["versions"]}
    for entry in read_jsonl(out / SPEED):
        if entry.get("key") == key:
            return entry
    entry = {"key": key, "timed_by": rc.cell.id, "time": round(time.time(), 3), "result": time_it()}
    append_jsonl(out / SPEED, entry)
    return entry


def speedup_fields(fp32: Path, int8: Path, int8_fingerprint: str, rc: Resolved, out: Path) -> dict:
    """INT8 over FP32 throughput of a quantize cell, from the two files timed in turns (FP32, INT8, FP32, ...: a
    slow spell of the machine hits both), with a bootstrap interval over the repeat pairs; once per pair of
    model computations."""
    from calib.core.engines import engine_for_file
    from calib.core.speed import interleaved, model_fingerprint, ratio_interval

    def time_pair() -> dict:
        runs = interleaved({"fp32": (engine_for_file(fp32), fp32), "int8": (engine_for_file(int8), int8)},
                           rc.protocol)
        return {"fp32_runs": runs["fp32"], "int8_runs": runs["int8"]}

    entry = timed(f"pair:{model_fingerprint(fp32)}:{int8_fingerprint}", time_pair, rc, out)
    ratio = ratio_interval(entry["result"]["fp32_runs"], entry["result"]["int8_runs"])
    return {"int8_speedup": ratio["ratio"], "int8_speedup_low": ratio["ratio_low"],
            "int8_speedup_high": ratio["ratio_high"], "int8_speedup_runs": ratio["ratio_runs"],
            "int8_speedup_repeats": len(ratio["ratio_runs"])}


def add_speed(rc: Resolved, row: dict, out: Path) -> dict:
    """Time a finished cell's model file (and, in a model's first baseline per ISA, PyTorch; in a quantize cell,
    its INT8 against its FP32 file in turns) under the grid's protocol, or reuse the timing of an equal model on
    this machine; the row becomes an error row if timing fails."""
    from calib.core.speed import bench_file, model_fingerprint, speed_fields, time_model
    from calib.core.weights import load_model
    from calib.study.artifacts import fp32_export

    cell = rc.cell
    t0, cpu0 = time.perf_counter(), time.process_time()
    row = {k: v for k, v in row.items() if k != "speed_pending"} | {"speed_started_at": round(time.time(), 3)}
    protocol = rc.protocol
    try:
        wrong = wrong_process(rc)
        if wrong:
            raise CalibError(wrong)
        if rc.pytorch:
            what = f"pytorch:{cell.model}:{row.get('weights_sha256') or 'random'}:fuse={cell.fuse}"
            entry = timed(what, lambda: time_model("pytorch", load_model(cell.model, rc.weights, pretrained=rc.weights
                                                                         is not None, fuse=cell.fuse), protocol),
                          rc, out)
            row |= speed_fields("pytorch", entry["result"])
        prefix = "fp32" if cell.kind == "baseline" else "int8"
        path = out / row["model_file"]
        what = model_fingerprint(path)
        entry = timed(what, lambda: bench_file(path, protocol), rc, out)
        row |= speed_fields(prefix, entry["result"]) | {
            f"{prefix}_model_fingerprint": what, "speed_timed_by": entry["timed_by"],
            "speed_protocol": entry["result"]["protocol_text"], "speed_repeats": protocol.repeats,
            "speed_seconds_each": protocol.duration_s}
        if cell.kind == "quantize":
            fp32 = fp32_export(rc.fp32_file, cell.model, cell.engine, cell.fuse, rc.weights)
            row |= speedup_fields(fp32, path, what, rc, out)
    except Exception as e:  # noqa: BLE001 - a failing cell must not stop the study
        row |= failure_fields(e)
    row["speed_seconds"] = round(time.perf_counter() - t0, 2)
    row["wall_seconds"] = round(row.get("wall_seconds", 0.0) + row["speed_seconds"], 2)
    row["cpu_seconds"] = round(row.get("cpu_seconds", 0.0) + time.process_time() - cpu0, 2)
    row["finished_at"] = round(time.time(), 3)
    return row
