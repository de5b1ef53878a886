"""An independent check of study cells: NNCF and OpenVINO called directly, none of calib's quantize path.

For each checked cell, the row alone says what to redo: the set (`calib_set`, checked against `calib_hash`),
the seeded subset (`seed`, `subset_size_images`: `calib.core.quantize.balanced_indices` over the set's
labels in file order, ascending; with the whole set, simply every image in file order), the model's weight
file, the NNCF parameters (`preset`, `calibrate_method`, `fast_bias_correction`, `max_drop`,
`ranking_subset_images`) and the data folder. The FP32 model is converted from the PyTorch
module here, quantized with `nncf.quantize` (or `nncf.quantize_with_accuracy_control`) over an
`nncf.Dataset` of those images in that order (accuracy-aware: validated on the images the model never saw,
`calib.core.data.aa_validation`), compiled with plain OpenVINO and run image by image on the cell's final
test images (`calib.core.data.final_test`); the test accuracy must match the cell's within `tolerance`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from calib.core.errors import CalibError
from calib.core.runs import atomic_write_bytes

# the zoo's input normalization (pytorch-cifar-models), written out here on purpose
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2023, 0.1994, 0.2010], np.float32)


def _inputs(images_u8: np.ndarray) -> np.ndarray:
    x = (images_u8.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _accuracy(compiled, images: np.ndarray, labels: np.ndarray) -> float:
    out = compiled.output(0)
    x = _inputs(images)
    preds = np.array([int(np.argmax(compiled(x[i : i + 1])[out])) for i in range(len(x))])
    return float((preds == labels).mean())


def recheck_cell(run: Path, row: dict, batch_1: bool = False) -> dict:
    """Redo one OpenVINO quantize cell with NNCF directly; returns both accuracies and their difference.
    Calibration items hold the cell's `calibration_batch` images (per-image statistics, NNCF's
    `batchwise_statistics`), or one image each with `batch_1`."""
    import nncf
    import openvino as ov
    import torch
    from nncf.quantization.advanced_parameters import (
        AdvancedAccuracyRestorerParameters,
        AdvancedQuantizationParameters,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from calib.core.data import aa_validation, final_test
    from calib.core.quantize import balanced_indices
    from calib.core.sets import read_set
    from calib.core.weights import load_model

    data_dir = Path(row["data_dir"]) if row.get("data_dir") else None
    cset = read_set(run / row["calib_set"])
    if cset.content_hash != row["calib_hash"]:
        raise CalibError(f"{cset.path}: content hash differs from the row's calib_hash; the set changed")
    n = int(row["subset_size_images"])
    order = np.arange(n) if n == len(cset) else balanced_indices(cset.labels, n, int(row["seed"]))
    x = _inputs(cset.images[order])
    recorded = row.get("calibration_batch")  # absent (NaN in the table) in rows of older runs: batch 1
    batch = 1 if batch_1 or pd.isna(recorded) else int(recorded)
    items = [x[i : i + batch] for i in range(0, n, batch)]
    dataset = nncf.Dataset(items)

    torch_model = load_model(row["model"], Path(row["weights"]), fuse=bool(row.get("fuse", True)))
    with torch.no_grad():
        fp32 = ov.convert_model(torch_model, example_input=torch.zeros(1, 3, 32, 32),
                                input=[[1 if batch == 1 else -1, 3, 32, 32]])
    preset = nncf.QuantizationPreset.MIXED if row.get("preset") == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    common = dict(preset=preset, target_device=nncf.TargetDevice.CPU, subset_size=len(items),
                  fast_bias_correction=bool(row["fast_bias_correction"]))
    advanced = AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        if row.get("calibrate_method") == "minmax" else None,
        batchwise_statistics=True if batch > 1 else None)
    if row["algo"] == "default":
        int8 = nncf.quantize(fp32, dataset, advanced_parameters=advanced, **common)
    else:
        val = aa_validation(data_dir, Path(row["weights"]))  # what the model never saw, as the cell validated
        vx = _inputs(val.images)
        items = [(vx[i : i + 1], int(val.labels[i])) for i in range(len(vx))]

        def validate(compiled, data):
            out = compiled.output(0)
            correct = [float(np.argmax(compiled(xi)[out]) == yi) for xi, yi in data]
            return float(np.mean(correct)), correct

        ranking = row.get("ranking_subset_images")
        restorer = AdvancedAccuracyRestorerParameters(ranking_subset_size=int(ranking)) if ranking == ranking \
            and ranking is not None else None
        int8 = nncf.quantize_with_accuracy_control(fp32, dataset, nncf.Dataset(items), validate,
                                                   max_drop=float(row["max_drop"]), drop_type=nncf.DropType.ABSOLUTE,
                                                   advanced_quantization_parameters=advanced,
                                                   advanced_accuracy_restorer_parameters=restorer, **common)
    test = final_test(data_dir, Path(row["weights"]))  # the cell's test images: never the validation slice
    compiled = ov.Core().compile_model(int8, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    independent = _accuracy(compiled, test.images, test.labels)
    return {"cell": row["cell"], "model": row["model"], "source": row["source"], "algo": row["algo"],
            "seed": int(row["seed"]), "subset_size_images": n, "calibration_batch": batch,
            "calib_hash": row["calib_hash"][:12],
            "study_int8_accuracy": float(row["int8_accuracy"]), "independent_int8_accuracy": independent,
            "abs_difference": abs(independent - float(row["int8_accuracy"]))}


def check_run(run: Path, cells: int = 5, seed: int = 0, tolerance: float = 0.003, out: Path | None = None,
              models: list[str] | None = None, sources: list[str] | None = None,
              batch_1: bool = False) -> pd.DataFrame:
    """Recheck `cells` OpenVINO quantize cells of a run (0: all), drawn with `seed` among those of `models` and
    `sources` (default: all); writes `check.csv`."""
    from calib.study.report import load_rows

    df = load_rows(run)
    need = {"int8_accuracy", "calib_set", "calib_hash", "subset_size_images", "weights"}
    if not need <= set(df.columns):
        raise CalibError(f"{run}: rows lack {sorted(need - set(df.columns))}; rerun the study with this version")
    q = df[(df.kind == "quantize") & (df.status == "ok") & (df.engine == "openvino")].dropna(subset=sorted(need))
    for col, names in (("model", models), ("source", sources)):
        unknown = sorted(set(names or ()) - set(q[col]))
        if unknown:
            raise CalibError(f"--{col}s {','.join(unknown)}: no finished OpenVINO cells of that {col} in {run}")
        q = q[q[col].isin(names)] if names else q
    if q.empty:
        raise CalibError(f"{run} has no finished OpenVINO quantize cells with accuracies to check")
    picked = q if cells <= 0 or cells >= len(q) else q.sample(n=cells, random_state=seed)
    from rich.progress import track

    from calib.core.progress import stderr_console

    results = [recheck_cell(run, row, batch_1) for row in track(picked.to_dict("records"), description="check",
                                                           transient=True, console=stderr_console())]
    from calib.core.hardware import hardware

    table = pd.DataFrame(results)
    # INT8 arithmetic follows the CPU's instruction set: say where the cell ran and where it was rechecked
    table["study_hardware_key"] = picked["hardware_key"].tolist() if "hardware_key" in picked else None
    table["hardware_key"] = hardware()["hardware_key"]
    table["within_tolerance"] = table.abs_difference <= tolerance
    atomic_write_bytes(out or run / "check.csv", table.to_csv(index=False).encode())
    return table
