"""One cell's work and its row: an FP32 baseline, a quantize cell (INT8 accuracy, and per-quantizer diagnose
rows), or a speed-only quantize cell on random weights. `run_cell` never raises: a failure becomes an error row.
A cell arrives resolved (`calib.study.resolve.Resolved`): the work here decides nothing about what the cell is.

Cells only read the sets the driver made; each model's FP32 file is exported once per engine, weight file and
library versions, and shared by its cells (`calib.study.artifacts`).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from calib.core.errors import CalibError
from calib.core.hardware import dispatched, hardware
from calib.core.runs import atomic_write_bytes, to_jsonable
from calib.study.artifacts import fp32_export, set_for
from calib.study.grid import Cell
from calib.study.resolve import Resolved, wrong_process
from calib.study.rows import failure_fields, hardware_fields
from calib.study.timing import add_speed


def run_cell(rc: Resolved, out: Path, speed: bool = True) -> dict:
    """Do one resolved cell's work and return its row (never raises: failures become error rows). A timed cell
    with `speed=False` leaves its speed to `add_speed` (runners time cells alone, after the rest)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    row = dict(rc.row)
    cell = rc.cell
    try:
        if rc.skip:
            return {**row, "status": "skipped", "reason": rc.skip}
        wrong = wrong_process(rc)
        if wrong:
            raise CalibError(wrong)
        row |= hardware_fields(hardware())  # as this process sees it
        row["started_at"] = round(time.time(), 3)
        row["data_dir"] = str(rc.data_dir) if rc.data_dir else None
        row["weights"] = str(rc.weights) if rc.weights else None
        if cell.kind == "quantize":
            row["calib_set"] = str(rc.set_folder.relative_to(out))
            row["fp32_file"] = str(rc.fp32_file.relative_to(out))
        if cell.kind == "baseline":
            row |= baseline_cell(rc, out)
            row["weights_note"] = rc.weights_note
        elif rc.weights is None:  # speed needs no trained weights; accuracy does (see plan.skip_reason)
            row |= speed_only_cell(rc, out)
            row["weights_note"] = rc.weights_note
        else:
            row |= quantize_cell(rc, out)
        row |= dispatched()  # the libraries' own reports, after they ran: a cap that did not hold shows here
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - a failing cell must not stop the study
        row |= failure_fields(e)
    row["wall_seconds"] = round(time.perf_counter() - t0, 2)
    row["cpu_seconds"] = round(time.process_time() - cpu0, 2)  # this process's CPU time: all threads
    row["finished_at"] = row["work_finished_at"] = round(time.time(), 3)
    if rc.timed and row["status"] == "ok":
        if not speed:
            return {**row, "speed_pending": True}
        row = add_speed(rc, row, out)
    return row


@contextlib.contextmanager
def step(steps: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds the block takes to `steps[name]`: a row says where its cell's time went."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        steps[name] = round(steps.get(name, 0.0) + time.perf_counter() - t0, 3)


def _test_fields(test) -> dict:
    from calib.core.data import indices_sha256

    return {"test_images": len(test), "test_indices_sha256": indices_sha256(test)}


def _kernel_fields(path: Path) -> dict:
    """For an OpenVINO IR, the kernels the CPU plugin picked in this process (they show the ISA it ran)."""
    if Path(path).suffix != ".xml":
        return {}
    from calib.core.hardware import openvino_kernels

    return {"ov_kernels": openvino_kernels(path)}


def baseline_cell(rc: Resolved, out: Path) -> dict:
    """FP32 accuracy and per-image predictions of the engine's FP32 file (and PyTorch's accuracy, once per model
    and ISA); speed is added by `add_speed`."""
    from calib.core.engines import get_engine
    from calib.core.evaluate import evaluate
    from calib.core.runs import predictions_to_str
    from calib.core.speed import model_size_bytes
    from calib.core.weights import load_model

    cell, steps = rc.cell, {}
    with step(steps, "export"):
        path = fp32_export(rc.fp32_file, cell.model, cell.engine, cell.fuse, rc.weights)
    with step(steps, "kernels"):
        row = {"fp32_bytes": model_size_bytes(path), "trained_weights": rc.weights is not None,
               "model_file": str(path.relative_to(out)), **_kernel_fields(path)}
    if rc.weights is not None:
        with step(steps, "test_images"):
            test = _test_images(rc)
        if rc.pytorch:
            with step(steps, "pytorch"):
                model = load_model(cell.model, rc.weights, fuse=cell.fuse)
                row["pytorch_accuracy"] = evaluate(model, test, engine=get_engine("pytorch"))["accuracy"]
        with step(steps, "evaluate"):
            fp32 = evaluate(path, test)
        row |= {"fp32_accuracy": fp32["accuracy"], "fp32_predictions": predictions_to_str(fp32["predictions"]),
                **_test_fields(test)}
    return row | {"step_seconds": steps}


def _test_images(rc: Resolved):
    """The cell's final test images, as the driver decided them (`Resolved.evaluation`)."""
    if rc.evaluation is None:
        raise CalibError("no test data for this cell's model (the data tree could not be read when the run began)")
    return rc.evaluation.test


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


def quantize_cell(rc: Resolved, out: Path) -> dict:
    """INT8 accuracy and per-image predictions of a cell quantized with trained weights (and its diagnose rows)."""
    from calib.core.evaluate import evaluate
    from calib.core.pipeline import quantize_with
    from calib.core.runs import predictions_to_str
    from calib.core.sets import read_set

    cell, steps = rc.cell, {}
    with step(steps, "set"):
        cset = read_set(set_for(rc.set_folder, cell, rc.set_options))
    spec = rc.spec
    if spec.subset_size:
        spec = replace(spec, subset_size=min(spec.subset_size, len(cset)))
    with step(steps, "export"):
        fp32 = fp32_export(rc.fp32_file, cell.model, cell.engine, cell.fuse, rc.weights)
    with step(steps, "quantize"):
        q = quantize_with(spec, cset, out / "models" / f"{cell.id}-{rc.id[:8]}", fp32, rc.evaluation)
    row = result_fields(q, out)
    with step(steps, "test_images"):
        test = _test_images(rc)
    with step(steps, "evaluate"):
        int8 = evaluate(q["int8_path"], test)
    with step(steps, "kernels"):
        kernels = _kernel_fields(Path(q["int8_path"]))
    row |= {"int8_accuracy": int8["accuracy"], "int8_predictions": predictions_to_str(int8["predictions"]),
            **_test_fields(test), **kernels}
    with step(steps, "probe"):
        row |= probe_cell(rc, q)
    if rc.diagnose and str(q["int8_path"]).endswith(".xml"):
        with step(steps, "diagnose"):
            row["diagnose_layers"] = diagnose_cell(cell, q, out, rc.data_dir)
    return row | {"step_seconds": steps}


def probe_cell(rc: Resolved, q: dict) -> dict:
    """The label-free estimate of the cell's drop (`calib.core.drop`) on the probe sets the driver made."""
    from calib.core.data import to_model_input
    from calib.core.drop import measure
    from calib.core.sets import read_set

    images = np.concatenate([read_set(folder).images for folder, _, _ in rc.probe_sets])
    return measure(q["fp32_path"], q["int8_path"], to_model_input(images), rc.probe_seed,
                   rc.probe_sets[0][1].per_class)


def diagnose_cell(cell: Cell, q: dict, out: Path, data_dir: Path | None) -> int:
    """Per-quantizer rows of a quantized cell (`calib diagnose` on files already made), on the validation split."""
    from calib.core.data import train_splits
    from calib.core.diagnose import measure_quantizers

    rows = measure_quantizers(q["fp32_path"], q["int8_path"], train_splits(data_dir)["validation"])
    lines = [json.dumps(to_jsonable({"cell": cell.id, "model": cell.model, "source": cell.source, "algo": cell.algo,
                                     "seed": cell.seed, "weights": q.get("weights_file", ""), **r})) for r in rows]
    atomic_write_bytes(out / "diagnose" / cell.id / "rows.jsonl", ("\n".join(lines) + "\n").encode())
    return len(rows)


def speed_only_cell(rc: Resolved, out: Path) -> dict:
    """The INT8 file of a timed quantize cell without trained weights (random ones): speed only, no accuracy."""
    from calib.core.benchmark import quantize_for_speed
    from calib.core.sets import read_set

    cell = rc.cell
    cset = read_set(set_for(rc.set_folder, cell, rc.set_options))
    subset = min(cell.subset_size, len(cset)) if cell.subset_size else None
    q = quantize_for_speed(cell.model, cell.engine, cset, out / "models" / f"{cell.id}-{rc.id[:8]}",
                           subset_size=subset, seed=cell.seed)
    return result_fields(q, out) | {"trained_weights": False, **_kernel_fields(Path(q["int8_path"]))}
