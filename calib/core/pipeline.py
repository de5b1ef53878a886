"""Quantize a model with a set and evaluate a model, each recording a flat row; the benchmark drivers are in
`calib.core.benchmark`.

The CLI and the study runner both call these functions. No function here knows an engine by name: each
engine (`calib.core.engines`) exports, quantizes and predicts behind the same interface.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

from calib.core.data import Evaluation, evaluation_split, final_test, load_split
from calib.core.engines import Engine, get_engine, list_engines
from calib.core.errors import CalibError
from calib.core.evaluate import evaluate
from calib.core.quantize import calibration_items, select_calibration
from calib.core.runs import atomic_write_json, record, start_run
from calib.core.sets import CalibrationSet, read_set
from calib.core.spec import Algo, QuantizeSpec
from calib.core.speed import model_size_bytes


def _is_file(model: str) -> bool:
    return any(get_engine(e).owns(model) for e in list_engines())


def _stem(model: str) -> str:
    return Path(model).stem if _is_file(model) else model


def _weights_info(model: str, weights: Path | None, pretrained: bool = True) -> tuple[Path | None, dict]:
    from calib.core.weights import resolve_weights, weights_provenance

    path = resolve_weights(model, weights) if pretrained else None
    return path, {"model": model, "weights": str(path) if path else "random", **weights_provenance(path)}


def fp32_file(model: str, engine: Engine, out: Path, weights: Path | None = None, pretrained: bool = True,
              fuse: bool = True) -> tuple[Path, dict]:
    """The engine's FP32 file: the model file given, or the zoo model (trained or random weights) exported now."""
    if _is_file(model):
        if not engine.owns(model):
            raise CalibError(f"engine {engine.name} reads {engine.suffix} files, not {model}; pass a zoo name "
                             "to export it for this engine")
        if not Path(model).is_file():
            raise CalibError(f"model file {model} does not exist")
        return Path(model), {"model": model}
    from calib.core.weights import load_model

    path, info = _weights_info(model, weights, pretrained)
    return engine.export(load_model(model, path, pretrained=pretrained, fuse=fuse), out), info


def quantize_with(spec: QuantizeSpec, cset: CalibrationSet, out: Path, fp32: Path | None = None,
                  split: Evaluation | None = None) -> dict:
    """Quantize `spec.model` with `cset` into `out`; returns paths, sizes, the parameters used and, for trained
    weights, which images validate and which test (`calib.core.data.Evaluation.facts`). `fp32`: the zoo
    model's FP32 file for this engine, already exported (a study exports each model once); `split`: the
    validation and test images, already decided (a study decides them once per cell, in its driver)."""
    engine = get_engine(spec.engine)
    subset = select_calibration(cset, spec.subset_size, spec.seed, spec.data_dir)
    if _is_file(spec.model):
        weights, info = None, {"model": spec.model}
    else:
        weights, info = _weights_info(spec.model, spec.weights, spec.pretrained)
    if split is None and spec.pretrained:
        split = evaluation_split(spec.data_dir, weights)
    if spec.algo == Algo.accuracy_aware and split is None:
        raise CalibError("accuracy-aware quantization needs trained weights (validation against random weights "
                         "means nothing)")
    validation = split.validation if spec.algo == Algo.accuracy_aware else None
    fp32 = fp32 if fp32 is not None else fp32_file(spec.model, engine, out, spec.weights, spec.pretrained, spec.fuse)[0]
    int8, rec = engine.quantize(fp32, calibration_items(subset.images, spec.calibration_batch), spec, out, validation)
    facts = split.facts(validation=validation is not None) if split is not None else {}
    return {**info, "engine": engine.name, **rec, **facts, "subset_size_images": len(subset.images),
            "calib_per_class": subset.per_class, "seed": spec.seed, "calib_set": str(cset.path),
            "calib_hash": cset.content_hash, "calib_source": cset.manifest["source"], "calib_images": len(cset),
            "calib_kernels": cset.manifest.get("kernels", "the generating machine's own"),
            "fp32_path": str(fp32), "int8_path": str(int8), "fp32_bytes": model_size_bytes(fp32),
            "int8_bytes": model_size_bytes(int8)}


def quantize_folder(spec: QuantizeSpec, cset: CalibrationSet) -> Path:
    """`runs/quantize/<model>-<engine>-<algo>-<set>-<subset>-s<seed>-<digest>`: the main conditions readable, and a
    digest of every option (weights, preset, method, batch...), so that runs that differ never share a folder."""
    from calib.core.folders import name_digest

    options = {**asdict(spec), "calib": cset.content_hash}
    subset = f"n{spec.subset_size}" if spec.subset_size else "all"
    return Path("runs/quantize") / (f"{_stem(spec.model)}-{spec.engine}-{spec.algo}-{cset.content_hash[:8]}-{subset}-"
                                    f"s{spec.seed}-{name_digest(options, 6)}")


def run_quantize(spec: QuantizeSpec, out: Path | None = None, test: bool = False,
                 record_path: Path = Path("runs/records.jsonl"), overwrite: bool = False) -> dict:
    """Quantize into `out` (default `quantize_folder`), refused if it exists (`overwrite`: replace what calib
    wrote there); a failed run leaves no folder (`calib.core.folders.run_folder`)."""
    from calib.core.data import data_provenance
    from calib.core.folders import claim, run_folder
    from calib.core.sets import check_calibration_set

    if out is not None:
        claim(out, overwrite)
    cset = read_set(spec.calib)
    check_calibration_set(cset, spec.data_dir)  # refused before the run folder exists (the spec was checked)
    out = out or quantize_folder(spec, cset)
    data = data_provenance(spec.data_dir)
    with run_folder(out, overwrite):
        start_run(out, spec, seeds={"quantize": spec.seed}, inputs={"calib": cset.content_hash, **data})
        row = {**quantize_with(spec, cset, out), **data}
        row |= probe_quantized(row, cset)
        if test:
            weights = None if _is_file(spec.model) else _weights_info(spec.model, spec.weights, spec.pretrained)[0]
            images = final_test(spec.data_dir, weights)  # a validation slice of test, if any, left out
            fp32, int8 = evaluate(row["fp32_path"], images), evaluate(row["int8_path"], images)
            row |= {"fp32_accuracy": fp32["accuracy"], "int8_accuracy": int8["accuracy"],
                    "int8_agreement": float((fp32["predictions"] == int8["predictions"]).mean()),
                    "test_images": fp32["test_images"], "test_indices_sha256": fp32["test_indices_sha256"]}
        row["out"] = str(out)
        atomic_write_json(out / "quantize.json", row)
    return record(record_path, "quantize", row, seeds={"quantize": spec.seed},
                  inputs={"calib": cset.content_hash, "weights": Path(row.get("weights", "-")).name})


def probe_quantized(row: dict, cset: CalibrationSet) -> dict:
    """The label-free estimate of a zoo model's drop (`calib.core.drop`), on probe images the set never held."""
    from calib.core.data import to_model_input
    from calib.core.drop import measure, probe_images, probe_seed

    seed = probe_seed(cset.manifest.get("source"), cset.manifest.get("seeds", {}).get("set"))
    return measure(row["fp32_path"], row["int8_path"], to_model_input(probe_images(seed)), seed)


def run_evaluate(model: str, batch: int = 50, weights: Path | None = None, data_dir: Path | None = None,
                 record_path: Path = Path("runs/records.jsonl"), engine: str = "openvino") -> dict:
    """Accuracy of a model file, or of a zoo model exported now for `engine`; recorded without predictions. A
    file whose input batch is fixed (an ONNX file exported for batch 1) is run at that batch."""
    from calib.core.export import fixed_batch

    test = load_split("test", data_dir)
    if _is_file(model):
        if not Path(model).is_file():
            raise CalibError(f"model file {model} does not exist")
        result = evaluate(model, test, fixed_batch(model) or batch)
    else:
        from calib.core.weights import load_model

        with tempfile.TemporaryDirectory() as tmp:
            result = evaluate(get_engine(engine).export(load_model(model, weights), Path(tmp)), test, batch)
    result.pop("predictions")
    return record(record_path, "evaluate", {"model": model, **result}, inputs={"test": test.source})
