"""An independent check of study cells: the cell's INT8 accuracy redone with as little of calib as possible.

Each checked cell runs in a fresh Python process started with the cell's ISA cap in its environment (the cap's
variables are `calib.core.hardware.isa_env`, the definition of a cap), so OpenVINO's kernels are capped as the
cell's were. That process takes from the row what to redo and re-derives everything else itself:

- test and validation images: the row's `data_dir` read with torchvision's `ImageFolder` and PIL, in
  ImageFolder's order; which of them test and which validate follows calib's documented rule, written again
  here (`final_test`), and the indices must hash to the row's `test_indices_sha256` and
  `validation_indices_sha256`, the decoded pixels to `data_test_sha256` (and `data_train_sha256` where train is
  read);
- the calibration subset: the set's PNG files read with PIL, hashed to the row's `calib_hash`, and the subset
  drawn from the row's `seed` by calib's documented rule, written again here (`balanced_subset`);
- the FP32 model: the exported file the cell quantized (`fp32_file`, or found under `models/fp32/`), read
  with `openvino.Core().read_model`, quantized with NNCF's own calls and run image by image.

A hash that differs fails the cell with a line that says which; no other images are used instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from calib.core.errors import CalibError
from calib.core.runs import atomic_write_bytes

SHARED_WITH_CALIB = (
    "shared with calib: the calibration set's image files, the exported FP32 file, the ISA cap's environment "
    "variables; its own: image decoding (torchvision ImageFolder + PIL), test/validation slice and subset "
    "selection (re-derived from seeds and checked against the row's hashes), normalization, NNCF and OpenVINO "
    "calls, accuracy")

# CIFAR-10 and the zoo's input normalization (pytorch-cifar-models), written out here on purpose
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2023, 0.1994, 0.2010], np.float32)
# calib's documented cuts: the test slice that validates models that saw all of train, and train's validation split
TEST_SLICE_FRACTION, TEST_SLICE_SEED = 0.1, 0
TRAIN_VALIDATION_PER_CLASS, TRAIN_VALIDATION_SEED = 100, 0
KERNEL_LAYERS = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")


class Mismatch(CalibError):
    """What the check re-derived is not what the row says it used."""


def _given(value: object) -> bool:
    return value is not None and value == value and value != ""  # NaN: a column other rows have


def indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, np.int64).tobytes()).hexdigest()


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return h.hexdigest()


def read_image_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A split as uint8 RGB HWC images and labels, in ImageFolder's order."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    if not folder.is_dir():
        raise CalibError(f"{folder} is not a folder; the check reads the row's data_dir as an image folder")
    tree = ImageFolder(str(folder))
    if tuple(tree.classes) != CLASSES:
        raise CalibError(f"{folder}: class folders {tree.classes} are not CIFAR-10's")

    def decode(path: str) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), np.uint8)

    return np.stack([decode(p) for p, _ in tree.samples]), np.asarray(tree.targets, np.int64)


def _per_class_draw(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """The first `per_class` of a seeded permutation of each class, classes in order; ascending."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                   for c in range(len(CLASSES))]))


def slice_of_test(labels: np.ndarray) -> np.ndarray:
    """Indices of test that validate a model that saw all of train: round(fraction x images / classes) per class."""
    per_class = max(1, round(TEST_SLICE_FRACTION * len(labels) / len(CLASSES)))
    return _per_class_draw(labels, per_class, TEST_SLICE_SEED)


def trained_on_pool(row: dict) -> tuple[bool, str]:
    """Whether the model saw only train's calibration pool: its weight card says so, holds out train's validation
    split, and names the row's train tree by hash. Else (no card, any other claim) all of train is assumed."""
    weights = Path(str(row.get("weights") or ""))
    if not _given(row.get("weights")) or not weights.is_file():
        return row.get("model_trained_on") == "calibration_pool", "the row's model_trained_on (no weight file here)"
    card_file = weights.with_suffix(".json")
    try:
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    except json.JSONDecodeError:
        raise CalibError(f"weight card {card_file} is not valid JSON") from None
    held_out = {"split": "validation", "validation_per_class": TRAIN_VALIDATION_PER_CLASS,
                "seed": TRAIN_VALIDATION_SEED}
    tree = card.get("trained_on_tree") if isinstance(card.get("trained_on_tree"), dict) else {}
    pool = (card.get("trained_on") == "calibration_pool" and card.get("held_out") == held_out
            and _given(row.get("data_train_sha256")) and tree.get("data_train_sha256") == row["data_train_sha256"])
    return pool, "its weight card"


class Compared:
    """The row's fields the check re-derived: those that match, and those that differ (both values, short)."""

    def __init__(self, row: dict):
        self.row, self.matched, self.wrong = row, [], []

    def __call__(self, field: str, value: object, required: bool = False, theirs: object = None) -> None:
        theirs = self.row.get(field) if theirs is None else theirs
        if not _given(theirs):
            if required:
                raise CalibError(f"the row has no {field}: nothing to check the re-derived images against")
            return
        if theirs == value:
            self.matched.append(field)
        else:
            self.wrong.append(f"{field} ({str(value)[:12]} here, {str(theirs)[:12]} in the row)")


def evaluation_images(row: dict, validate: bool, compare: Compared) -> dict:
    """Final-test images (and with `validate`, validation images) of the cell, re-derived and compared with the
    row's hashes."""
    if not _given(row.get("data_dir")):
        raise CalibError("the row has no data_dir (torchvision's download); the check reads image folders only")
    root = Path(row["data_dir"])
    images, labels = read_image_folder(root / "test")
    pool, why = trained_on_pool(row)
    compare("data_test_sha256", content_sha256(images, labels))
    if why == "its weight card":
        compare("model_trained_on", "calibration_pool" if pool else "all_train")
    val_idx = None if pool else slice_of_test(labels)
    test_idx = np.arange(len(labels)) if pool else np.setdiff1d(np.arange(len(labels)), val_idx)
    compare("test_indices_sha256", indices_sha256(test_idx), required=True)
    out = {"test": (images[test_idx], labels[test_idx]), "trained_on_from": why}
    if validate:
        compare("validation_source", "train_validation_split" if pool else "test_slice")
        if pool:
            train_images, train_labels = read_image_folder(root / "train")
            compare("data_train_sha256", content_sha256(train_images, train_labels))
            val_idx = _per_class_draw(train_labels, TRAIN_VALIDATION_PER_CLASS, TRAIN_VALIDATION_SEED)
            out["validation"] = train_images[val_idx], train_labels[val_idx]
        else:
            out["validation"] = images[val_idx], labels[val_idx]
        compare("validation_indices_sha256", indices_sha256(val_idx), required=True)
    return out


def read_set_files(folder: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """A calibration set's `<class>/<id>.png` files in path order, decoded with PIL, and the hash calib names a
    set by (sha256 of the JSON of {path: sha256 of the file}, keys sorted)."""
    from PIL import Image

    files = sorted(p for p in folder.glob("*/*.png") if p.parent.name in CLASSES)
    if not files:
        raise CalibError(f"calibration set {folder} has no <class>/<id>.png files")
    digests, images = {}, []
    for p in files:
        digests[f"{p.parent.name}/{p.name}"] = hashlib.sha256(p.read_bytes()).hexdigest()
        with Image.open(p) as im:
            images.append(np.asarray(im.convert("RGB"), np.uint8))
    labels = np.array([CLASSES.index(p.parent.name) for p in files], np.int64)
    return np.stack(images), labels, hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def balanced_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """calib's draw: each class's images in a seeded order, classes taking turns in a seeded order, one image per
    turn; the first `size` drawn, ascending."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    turns = rng.permutation(classes)
    queues = {}
    for c in classes:
        idx = np.flatnonzero(labels == c)
        queues[int(c)] = idx[np.argsort(rng.permutation(len(idx)))]  # image j is drawn in round perm[j]
    rounds = max(len(q) for q in queues.values())
    drawn = [queues[int(c)][r] for r in range(rounds) for c in turns if r < len(queues[int(c)])]
    return np.sort(np.asarray(drawn[:size], np.int64))


def fp32_file(run: Path, row: dict) -> Path:
    """The FP32 file the cell quantized: the row's `fp32_file`, or for rows without it the one export under
    `models/fp32/` of the row's model, engine, fusion and weights."""
    if _given(row.get("fp32_file")):
        path = run / str(row["fp32_file"])
        if not path.is_file():
            raise CalibError(f"the row's fp32_file {path} does not exist")
        return path
    if not _given(row.get("weights_sha256")):
        raise CalibError("the row has neither fp32_file nor weights_sha256 to find its FP32 export by")
    fused = "unfused" if _given(row.get("fuse")) and not bool(row["fuse"]) else "fused"
    pattern = f"{row['model']}-{row['engine']}-{fused}-{str(row['weights_sha256'])[:12]}-*/fp32.xml"
    found = sorted((run / "models" / "fp32").glob(pattern))
    if len(found) != 1:
        raise CalibError(f"{'no' if not found else len(found)} FP32 exports match models/fp32/{pattern} in {run}, "
                         "and the row has no fp32_file to say which it quantized")
    return found[0]


def _inputs(images_u8: np.ndarray) -> np.ndarray:
    x = (images_u8.astype(np.float32) / np.float32(255.0) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _kernels(compiled) -> str:
    """The kernels OpenVINO picked for the compute layers, as rows write them ("Convolution:jit_avx2_I8 x2")."""
    from collections import Counter

    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else ""
        if layer in KERNEL_LAYERS:
            counts[f"{layer}:{info['primitiveType'].astype(str)}"] += 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))


def recheck_cell(run: Path, row: dict, fp32: Path, batch_1: bool = False) -> dict:
    """Redo one OpenVINO quantize cell in this process (`check_cell` starts one with the cell's cap).
    Calibration items hold the cell's `calibration_batch` images (per-image statistics, NNCF's
    `batchwise_statistics`), or one image each with `batch_1`."""
    validate = row["algo"] != "default"
    compare = Compared(row)
    data = evaluation_images(row, validate, compare)
    set_images, set_labels, set_hash = read_set_files(run / str(row["calib_set"]))
    compare("calib_hash", set_hash, required=True)
    n = int(row["subset_size_images"])
    if n > len(set_labels):
        raise Mismatch(f"the row's subset of {n} images exceeds the {len(set_labels)} files of {row['calib_set']}")
    order = balanced_subset(set_labels, n, int(row["seed"]))
    if isinstance(row.get("calib_per_class"), dict):
        counts = np.bincount(set_labels[order], minlength=len(CLASSES)).tolist()
        compare("calib_per_class", {c: n for c, n in zip(CLASSES, counts) if n},
                theirs={c: int(n) for c, n in row["calib_per_class"].items() if n})
    if compare.wrong:
        raise Mismatch(f"re-derived {'; '.join(compare.wrong)}: the check uses no other images")
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedAccuracyRestorerParameters,
        AdvancedQuantizationParameters,
    )
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    x = _inputs(set_images[order])
    recorded = row.get("calibration_batch")  # absent in rows of older runs: batch 1
    batch = 1 if batch_1 or not _given(recorded) else int(recorded)
    items = [x[i : i + batch] for i in range(0, n, batch)]
    model = ov.Core().read_model(str(fp32))
    if batch > 1:
        model.reshape({model.input(0).get_any_name(): ov.PartialShape([-1, *x.shape[1:]])})
    preset = nncf.QuantizationPreset.MIXED if row.get("preset") == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    common = dict(preset=preset, target_device=nncf.TargetDevice.CPU, subset_size=len(items),
                  fast_bias_correction=bool(row.get("fast_bias_correction", True)))
    advanced = AdvancedQuantizationParameters(
        overflow_fix=nncf.OverflowFix(row["overflow_fix"]) if _given(row.get("overflow_fix")) else None,
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        if row.get("calibrate_method") == "minmax" else None,
        batchwise_statistics=True if batch > 1 else None)
    if not validate:
        int8 = nncf.quantize(model, nncf.Dataset(items), advanced_parameters=advanced, **common)
    else:
        vx, vy = data["validation"]
        vx = _inputs(vx)
        val_items = [(vx[i : i + 1], int(vy[i])) for i in range(len(vx))]

        def validate_fn(compiled, items_):
            out = compiled.output(0)
            correct = [float(np.argmax(compiled(xi)[out]) == yi) for xi, yi in items_]
            return float(np.mean(correct)), correct

        ranking = row.get("ranking_subset_images")
        restorer = AdvancedAccuracyRestorerParameters(ranking_subset_size=int(ranking)) if _given(ranking) else None
        drop_type = nncf.DropType(row["drop_type"]) if _given(row.get("drop_type")) else nncf.DropType.ABSOLUTE
        int8 = nncf.quantize_with_accuracy_control(model, nncf.Dataset(items), nncf.Dataset(val_items), validate_fn,
                                                   max_drop=float(row["max_drop"]), drop_type=drop_type,
                                                   advanced_quantization_parameters=advanced,
                                                   advanced_accuracy_restorer_parameters=restorer, **common)
    compiled = ov.Core().compile_model(int8, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    tx, ty = data["test"]
    tx = _inputs(tx)
    out = compiled.output(0)
    preds = np.array([int(np.argmax(compiled(tx[i : i + 1])[out])) for i in range(len(tx))])
    return {"independent_int8_accuracy": float((preds == ty).mean()), "calibration_batch": batch,
            "predictions": "".join(map(str, preds)),
            "verified": ", ".join(compare.matched), "trained_on_from": data["trained_on_from"],
            "check_ov_kernels": _kernels(compiled)}


def _child(request: Path, result: Path) -> None:
    """The body of the checking process: one cell, its result (or why it failed) written as JSON."""
    from calib.core.hardware import CAP_ENVS

    req = json.loads(request.read_text())
    try:
        out = {"status": "ok", **recheck_cell(Path(req["run"]), req["row"], Path(req["fp32"]), req["batch_1"])}
    except Mismatch as e:
        out = {"status": "mismatch", "problem": str(e)}
    except CalibError as e:
        out = {"status": "error", "problem": str(e)}
    except Exception as e:  # an error row, not a crashed check: the other cells are still checked
        out = {"status": "error", "problem": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
               if str(e).strip() else type(e).__name__}
    out["check_caps"] = "; ".join(f"{k}={os.environ[k]}" for k in CAP_ENVS if os.environ.get(k))
    result.write_text(json.dumps(out))


def _jsonable(row: dict) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if _given(v) or v == ""}


def check_cell(run: Path, row: dict, batch_1: bool = False) -> dict:
    """Recheck one cell in a fresh process that runs the cell's ISA (`row["isa"]`), capped from its first
    instruction; one flat result, with `status` ok, mismatch or error and the `problem` in one line."""
    from calib.core.hardware import ISA_ENV, NATIVE, check_isa, hardware, isa_env

    isa = str(row["isa"]) if _given(row.get("isa")) else NATIVE
    base = {"cell": row["cell"], "model": row["model"], "source": row["source"], "algo": row["algo"],
            "seed": int(row["seed"]), "isa": isa, "subset_size_images": int(row["subset_size_images"]),
            "calib_hash": str(row["calib_hash"])[:12], "study_int8_accuracy": float(row["int8_accuracy"])}
    try:
        env = {k: v for k, v in os.environ.items() if k != ISA_ENV} | isa_env(check_isa(isa))
        here = str(Path(__file__).resolve().parents[2])  # the child imports this very calib, wherever it runs
        env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])
        fp32 = fp32_file(run, row)
    except CalibError as e:
        return base | {"status": "error", "problem": str(e), "hardware_key": hardware()["hardware_key"]}
    base |= {"fp32_file": str(fp32.relative_to(run)) if fp32.is_relative_to(run) else str(fp32),
             "hardware_key": hardware(env)["hardware_key"]}
    with tempfile.TemporaryDirectory(prefix="calib-check-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"run": str(run), "row": _jsonable(row), "fp32": str(fp32),
                                       "batch_1": batch_1}))
        done = subprocess.run([sys.executable, "-m", "calib.study.check", str(request), str(result)], env=env,
                              capture_output=True, text=True, check=False)
        if not result.is_file():
            last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no output")
            return base | {"status": "error", "problem": f"checking process exited with {done.returncode}: "
                                                         f"{last.strip()[:300]}"}
        out = json.loads(result.read_text())
    if "independent_int8_accuracy" in out:
        out["abs_difference"] = abs(out["independent_int8_accuracy"] - base["study_int8_accuracy"])
    mine, theirs = out.pop("predictions", None), row.get("int8_predictions")
    if mine is not None and isinstance(theirs, str) and len(theirs) == len(mine):  # class by class, image by image
        out["prediction_agreement"] = float(np.mean(np.frombuffer(mine.encode(), np.uint8)
                                                    == np.frombuffer(theirs.encode(), np.uint8)))
    if _given(row.get("ov_kernels")) and "check_ov_kernels" in out:
        out["kernels_as_cell"] = out["check_ov_kernels"] == row["ov_kernels"]
    return base | out


COLUMNS = ("cell", "model", "source", "algo", "seed", "isa", "subset_size_images", "calibration_batch", "calib_hash",
           "study_int8_accuracy", "independent_int8_accuracy", "abs_difference", "prediction_agreement", "status",
           "problem", "verified",
           "trained_on_from", "fp32_file", "check_caps", "check_ov_kernels", "kernels_as_cell")
PRINTED = ("model", "source", "algo", "seed", "isa", "subset_size_images", "calibration_batch",
           "study_int8_accuracy", "independent_int8_accuracy", "abs_difference", "prediction_agreement", "status")


def printed(table) -> str:
    """The table as `calib study check` prints it, with what the check shares with calib and every problem."""
    lines = [table[[c for c in PRINTED if c in table]].to_string(index=False), SHARED_WITH_CALIB]
    for r in table[table.status != "ok"].itertuples():
        lines.append(f"{r.status}: cell {r.cell} ({r.model}, {r.source}, {r.algo}, seed {r.seed}): {r.problem}")
    return "\n".join(lines)


def check_run(run: Path, cells: int = 5, seed: int = 0, tolerance: float = 0.003, out: Path | None = None,
              models: list[str] | None = None, sources: list[str] | None = None, batch_1: bool = False):
    """Recheck `cells` OpenVINO quantize cells of a run (0: all), drawn with `seed` among those of `models` and
    `sources` (default: all); writes `check.csv` (a `pandas.DataFrame`, one row per cell)."""
    import pandas as pd
    from rich.progress import track

    from calib.core.progress import stderr_console
    from calib.study.report import load_rows

    df = load_rows(run)
    need = {"int8_accuracy", "calib_set", "calib_hash", "subset_size_images"}
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
    results = [check_cell(run, row, batch_1) for row in track(picked.to_dict("records"), description="check",
                                                             transient=True, console=stderr_console())]
    table = pd.DataFrame(results).reindex(columns=[*COLUMNS, "hardware_key"])
    # INT8 arithmetic follows the CPU's instruction set: say where the cell ran and where it was rechecked
    table.insert(len(table.columns) - 1, "study_hardware_key",
                 picked["hardware_key"].tolist() if "hardware_key" in picked else None)
    table["within_tolerance"] = (table.status == "ok") & (table.abs_difference <= tolerance)
    table["shared_with_calib"] = SHARED_WITH_CALIB
    atomic_write_bytes(out or run / "check.csv", table.to_csv(index=False).encode())
    return table


if __name__ == "__main__":
    _child(Path(sys.argv[1]), Path(sys.argv[2]))
