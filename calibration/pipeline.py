"""One step each: quantize a model with a set, evaluate a model, benchmark models; each records a flat row.

The CLI and the study runner both call these functions. No function here knows an engine by name: each
engine (`calibration.engines`) exports, quantizes, predicts and is timed behind the same interface.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from calibration.benchmark import Protocol, bench_file, model_size_bytes
from calibration.data import evaluation_split, final_test, load_split
from calibration.engines import Engine, get_engine, list_engines, measure
from calibration.errors import CalibError
from calibration.evaluate import evaluate
from calibration.quantize import (
    Algo,
    CalibMethod,
    DropType,
    OverflowFix,
    Preset,
    QuantizeConfig,
    calibration_items,
    select_calibration,
)
from calibration.runs import atomic_write_json, record, start_run
from calibration.sets import CalibrationSet, read_set


@dataclass(frozen=True)
class QuantizeRequest:
    """A quantization as asked for. None means "not given" (the engine's own default); an engine refuses every
    option given that it does not have (see `QuantizeConfig`)."""

    model: str
    calib: Path
    algo: str = "default"
    engine: str = "openvino"
    subset_size: int | None = None
    preset: str | None = None
    fast_bias_correction: bool | None = None  # NNCF
    max_drop: float | None = None  # NNCF accuracy-aware
    drop_type: str | None = None  # NNCF accuracy-aware
    calibrate_method: str | None = None
    seed: int = 0
    weights: Path | None = None
    data_dir: Path | None = None
    fuse: bool = True
    pretrained: bool = True  # False: random weights, for speed runs that need no trained model
    ranking_subset_size: int | None = None  # NNCF accuracy-aware: None = all validation images
    overflow_fix: str | None = None  # NNCF
    reduce_range: bool | None = None  # ONNX Runtime; None: on where the CPU has no VNNI
    calibration_batch: int = 1  # images per calibration item (see QuantizeConfig)

    def config(self) -> QuantizeConfig:
        try:
            return QuantizeConfig(Algo(self.algo), self.subset_size, Preset(self.preset) if self.preset else None,
                                  self.fast_bias_correction, self.max_drop,
                                  DropType(self.drop_type) if self.drop_type else None, self.seed,
                                  CalibMethod(self.calibrate_method) if self.calibrate_method else None,
                                  self.ranking_subset_size,
                                  OverflowFix(self.overflow_fix) if self.overflow_fix else None,
                                  self.reduce_range, self.calibration_batch)
        except ValueError as e:
            raise CalibError(f"invalid quantization option: {e}") from None


def predictions_to_str(preds: np.ndarray) -> str:
    """Per-image classes (0-9) as one digit per image, test-split order: compact enough for a JSON row."""
    preds = np.asarray(preds)
    if len(preds) and (preds.min() < 0 or preds.max() > 9):
        raise CalibError("predictions must be classes 0-9")
    return "".join(map(str, preds.tolist()))


def predictions_from_str(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64) - ord("0")


def _is_file(model: str) -> bool:
    return any(get_engine(e).owns(model) for e in list_engines())


def _stem(model: str) -> str:
    return Path(model).stem if _is_file(model) else model


def _weights_info(req: QuantizeRequest) -> tuple[Path | None, dict]:
    from calibration.weights import resolve_weights, weights_provenance

    path = resolve_weights(req.model, req.weights) if req.pretrained else None
    return path, {"model": req.model, "weights": str(path) if path else "random", **weights_provenance(path)}


def fp32_file(req: QuantizeRequest, engine: Engine, out: Path) -> tuple[Path, dict]:
    """The engine's FP32 file: the model file given, or the zoo model (trained or random weights) exported now."""
    if _is_file(req.model):
        if not engine.owns(req.model):
            raise CalibError(f"engine {engine.name} reads {engine.suffix} files, not {req.model}; pass a zoo name "
                             "to export it for this engine")
        if not Path(req.model).is_file():
            raise CalibError(f"model file {req.model} does not exist")
        return Path(req.model), {"model": req.model}
    from calibration.weights import load_model

    path, info = _weights_info(req)
    return engine.export(load_model(req.model, path, pretrained=req.pretrained, fuse=req.fuse), out), info


def quantize_with(req: QuantizeRequest, cset: CalibrationSet, out: Path, fp32: Path | None = None) -> dict:
    """Quantize `req.model` with `cset` into `out`; returns paths, sizes, the parameters used and, for trained
    weights, which images validate and which test (`calibration.data.Evaluation.facts`). `fp32`: the zoo
    model's FP32 file for this engine, already exported (a study exports each model once)."""
    engine = get_engine(req.engine)
    cfg = req.config()
    engine.check_options(cfg)
    subset = select_calibration(cset, req.subset_size, req.seed, req.data_dir)
    weights, info = _weights_info(req) if not _is_file(req.model) else (None, {"model": req.model})
    split = evaluation_split(req.data_dir, weights) if req.pretrained else None
    if cfg.algo == Algo.accuracy_aware and split is None:
        raise CalibError("accuracy-aware quantization needs trained weights (validation against random weights "
                         "means nothing)")
    validation = split.validation if cfg.algo == Algo.accuracy_aware else None
    fp32 = fp32 if fp32 is not None else fp32_file(req, engine, out)[0]
    int8, rec = engine.quantize(fp32, calibration_items(subset.images, cfg.calibration_batch), cfg, out, validation)
    facts = split.facts(validation=validation is not None) if split is not None else {}
    return {**info, "engine": engine.name, **rec, **facts, "subset_size_images": len(subset.images),
            "calib_per_class": subset.per_class, "seed": req.seed, "calib_set": str(cset.path),
            "calib_hash": cset.content_hash, "calib_source": cset.manifest["source"], "calib_images": len(cset),
            "fp32_path": str(fp32), "int8_path": str(int8), "fp32_bytes": model_size_bytes(fp32),
            "int8_bytes": model_size_bytes(int8)}


def accuracy_of(path: str | Path, test, batch: int = 50) -> dict:
    """Accuracy of a model file on `test` (role "test": `calibration.data.final_test` for the model's weights,
    so that FP32 and INT8 see the same images) with the engine that reads it; "predictions" holds each image's
    class, "test_indices_sha256" which images they were."""
    return evaluate(path, test, batch)


def quantize_folder(req: QuantizeRequest, cset: CalibrationSet) -> Path:
    """`runs/quantize/<model>-<engine>-<algo>-<set>-<subset>-s<seed>-<digest>`: the main conditions readable, and a
    digest of every option (weights, preset, method, batch...), so that runs that differ never share a folder."""
    from calibration.folders import name_digest

    options = {**asdict(req), "calib": cset.content_hash}
    subset = f"n{req.subset_size}" if req.subset_size else "all"
    return Path("runs/quantize") / (f"{_stem(req.model)}-{req.engine}-{req.algo}-{cset.content_hash[:8]}-{subset}-"
                                    f"s{req.seed}-{name_digest(options, 6)}")


def run_quantize(req: QuantizeRequest, out: Path | None = None, evaluate: bool = False,
                 record_path: Path = Path("runs/records.jsonl"), overwrite: bool = False) -> dict:
    """Quantize into `out` (default `quantize_folder`), refused if it exists (`overwrite`: replace what calib
    wrote there); a failed run leaves no folder (`calibration.folders.run_folder`)."""
    from calibration.data import data_provenance
    from calibration.folders import claim, run_folder
    from calibration.sets import check_calibration_set

    if out is not None:
        claim(out, overwrite)
    cset = read_set(req.calib)
    get_engine(req.engine).check_options(req.config())  # options and the set are refused before the run
    check_calibration_set(cset, req.data_dir)  # refused before the run folder exists: no half-written run
    out = out or quantize_folder(req, cset)
    data = data_provenance(req.data_dir)
    with run_folder(out, overwrite):
        start_run(out, req, seeds={"quantize": req.seed}, inputs={"calib": cset.content_hash, **data})
        row = {**quantize_with(req, cset, out), **data}
        if evaluate:
            weights = None if _is_file(req.model) else _weights_info(req)[0]
            test = final_test(req.data_dir, weights)  # a validation slice of test, if any, left out
            fp32, int8 = accuracy_of(row["fp32_path"], test), accuracy_of(row["int8_path"], test)
            row |= {"fp32_accuracy": fp32["accuracy"], "int8_accuracy": int8["accuracy"],
                    "int8_agreement": float((fp32["predictions"] == int8["predictions"]).mean()),
                    "test_images": fp32["test_images"], "test_indices_sha256": fp32["test_indices_sha256"]}
        row["out"] = str(out)
        atomic_write_json(out / "quantize.json", row)
    return record(record_path, "quantize", row, seeds={"quantize": req.seed},
                  inputs={"calib": cset.content_hash, "weights": Path(row.get("weights", "-")).name})


def run_evaluate(model: str, batch: int = 50, weights: Path | None = None, data_dir: Path | None = None,
                 record_path: Path = Path("runs/records.jsonl"), engine: str = "openvino") -> dict:
    """Accuracy of a model file, or of a zoo model exported now for `engine`; recorded without predictions. A
    file whose input batch is fixed (an ONNX file exported for batch 1) is run at that batch."""
    from calibration.export import fixed_batch

    test = load_split("test", data_dir)
    if _is_file(model):
        if not Path(model).is_file():
            raise CalibError(f"model file {model} does not exist")
        result = evaluate(model, test, fixed_batch(model) or batch)
    else:
        from calibration.weights import load_model

        with tempfile.TemporaryDirectory() as tmp:
            result = evaluate(get_engine(engine).export(load_model(model, weights), Path(tmp)), test, batch)
    result.pop("predictions")
    return record(record_path, "evaluate", {"model": model, **result}, inputs={"test": test.source})


def memory_set(source: str = "noise", per_class: int = 10, seed: int = 0) -> CalibrationSet:
    """A small in-memory set for speed runs, where calibration content does not matter."""
    from calibration.sources import generate

    g = generate(source, per_class, seed)
    digest = hashlib.sha256(g.images.tobytes()).hexdigest()
    return CalibrationSet(Path(f"<memory:{source}>"), g.images, g.labels, g.ids,
                          {"source": source, "content_hash": digest, "role": g.role, "in_memory": True})


def _speed_fields(prefix: str, b: dict) -> dict:
    return {f"{prefix}_fps": b["fps_throughput_median"], f"{prefix}_latency_fps": b["fps_latency_median"],
            f"{prefix}_runs": b["fps_throughput_runs"], f"{prefix}_latency_runs": b["fps_latency_runs"]}


def benchmark_models(names: list[str], engines: list[str], protocol: Protocol, out: Path, pytorch: bool = True,
                     trained: bool = False, record_path: Path = Path("runs/records.jsonl"),
                     quiet: bool = False) -> list[dict]:
    """FP32 (and INT8 where the engine quantizes) throughput and latency of zoo models, every engine and PyTorch
    under the same protocol; progress on stderr (`calibration.progress`) unless `quiet`."""
    from calibration.progress import track
    from calibration.weights import load_model

    cset = memory_set()
    rows = []
    for name in track(names, "benchmark models", quiet=quiet):
        torch_speed = measure("pytorch", load_model(name, pretrained=trained), protocol) if pytorch else None
        for engine in map(get_engine, engines):
            row = {"model": name, "engine": engine.name, "trained_weights": trained, "protocol": asdict(protocol),
                   "protocol_text": protocol.describe()}
            if engine.int8:
                q = quantize_for_speed(name, engine.name, cset, out, trained)
                row |= _speed_fields("fp32", bench_file(q["fp32_path"], protocol))
                row |= _speed_fields("int8", bench_file(q["int8_path"], protocol))
                row |= {"speedup": row["int8_fps"] / row["fp32_fps"], "fp32_bytes": q["fp32_bytes"],
                        "int8_bytes": q["int8_bytes"]}
            else:
                path = engine.export(load_model(name, pretrained=trained), out / f"{name}-{engine.name}")
                row |= _speed_fields("fp32", bench_file(path, protocol)) | {"fp32_bytes": model_size_bytes(path)}
            if torch_speed:
                row |= {"pytorch_fps": torch_speed["fps_throughput_median"],
                        "pytorch_latency_fps": torch_speed["fps_latency_median"]}
            rows.append(record(record_path, "benchmark", row))
    return rows


def quantize_for_speed(name: str, engine: str, cset: CalibrationSet, out: Path, trained: bool = False,
                       subset_size: int | None = None, seed: int = 0) -> dict:
    """FP32 and default-INT8 files of a zoo model for timing; random weights unless `trained`."""
    req = QuantizeRequest(model=name, calib=cset.path, engine=engine, subset_size=subset_size, seed=seed,
                          pretrained=trained)
    return quantize_with(req, cset, out / f"{name}-{engine}")


def evaluate_vs_benchmark_app(model: str, out: Path, data_dir: Path | None = None, seconds: int = 5,
                              batch: int = 50, repeats: int = 3, precision: str = "f32",
                              record_path: Path = Path("runs/records.jsonl")) -> dict:
    """`calib evaluate` throughput against benchmark_app's on the same INT8 IR, like with like: the same batch,
    precision hint and device configuration (streams, threads, requests; checked in benchmark_app's own report),
    alternating in one run; the ratio is of the medians."""
    from calibration.engines.openvino import benchmark_app, compile_model, device_config

    xml = Path(model) if model.endswith(".xml") else out / f"{model}-openvino" / "int8.xml"
    if not xml.exists():
        if model.endswith(".xml"):
            raise CalibError(f"IR {model} does not exist")
        quantize_for_speed(model, "openvino", memory_set(), out)
    compiled = compile_model(xml, precision, "THROUGHPUT", batch)
    config = device_config(compiled)
    requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    del compiled
    test = load_split("test", data_dir)
    evals, apps = [], []
    for _ in range(repeats):
        ev = evaluate(xml, test, batch)
        evals.append(ev["eval_fps"])
        app = benchmark_app(xml, config, batch, requests, seconds)
        if app["config"] != config or app["requests"] != requests:
            raise CalibError(f"benchmark_app ran with {app['config']} and {app['requests']} requests, the evaluator "
                             f"with {config} and {requests}: not like with like")
        apps.append(app["fps"])
    ratio = float(np.median(evals) / np.median(apps))
    row = {"model": model, "ir": str(xml), "batch": batch, "requests": requests, **config,
           "eval_fps": float(np.median(evals)), "eval_fps_runs": evals, "eval_accuracy": ev["accuracy"],
           "benchmark_app_fps": float(np.median(apps)), "benchmark_app_runs": apps,
           "benchmark_app_seconds": seconds, "benchmark_app_command": app["command"], "ratio": ratio}
    return record(record_path, "evaluate_vs_benchmark_app", row, inputs={"test": test.source})


def benchmark_sources(fractal_images: int = 500, inversion_images: int = 20, inversion_iterations: int = 400,
                      model: str = "resnet20", weights: Path | None = None,
                      record_path: Path = Path("runs/records.jsonl")) -> dict:
    """Fractal images/s and inversion seconds/image, each timed around the source function alone."""
    import time

    from calibration.sources import generate

    generate("fractal", 1, 99)  # warm-up (imports, first allocations)
    t0 = time.perf_counter()
    fractals = len(generate("fractal", max(1, fractal_images // 10), 0).images)
    fractal_rate = fractals / (time.perf_counter() - t0)
    batch = max(1, inversion_images // 10) * 10
    t0 = time.perf_counter()
    inverted = len(generate("inversion", batch // 10, 0, model=model, weights=weights,
                            iterations=inversion_iterations, batch_size=batch).images)
    inversion = (time.perf_counter() - t0) / inverted
    return record(record_path, "benchmark_sources", {"fractal_images_per_s": fractal_rate, "fractal_images": fractals,
                                                     "inversion_s_per_image": inversion, "inversion_model": model,
                                                     "inversion_images": inverted,
                                                     "inversion_iterations": inversion_iterations,
                                                     "inversion_batch": batch})


def compare_engines(model: str, calib: Path, protocol: Protocol, out: Path, subset_size: int | None = None,
                    data_dir: Path | None = None, record_path: Path = Path("runs/records.jsonl"),
                    engines: list[str] | None = None) -> list[dict]:
    """Every engine from one set in one run: FP32 and INT8 accuracy (INT8 where the engine quantizes), throughput
    and latency under one protocol, and size."""
    cset = read_set(calib)
    test = load_split("test", data_dir)
    rows = []
    for engine in map(get_engine, engines or list_engines()):
        req = QuantizeRequest(model=model, calib=calib, engine=engine.name, subset_size=subset_size,
                              data_dir=data_dir)
        folder = out / engine.name
        if engine.int8:
            q = quantize_with(req, cset, folder)
            files = {"fp32": q["fp32_path"], "int8": q["int8_path"]}
        else:
            q = {"subset_size_images": None}
            files = {"fp32": str(fp32_file(req, engine, folder)[0])}
        row = {"model": model, "engine": engine.name, "calib_hash": cset.content_hash,
               "subset_size_images": q["subset_size_images"], "protocol": asdict(protocol),
               "protocol_text": protocol.describe()}
        preds = {}
        for prec, path in files.items():
            acc = accuracy_of(path, test)
            preds[prec] = acc["predictions"]
            row |= {f"{prec}_accuracy": acc["accuracy"], f"{prec}_bytes": model_size_bytes(Path(path))}
            row |= _speed_fields(prec, bench_file(path, protocol))
        if "int8" in files:
            row["speedup"] = row["int8_fps"] / row["fp32_fps"]
            row["int8_agreement"] = float((preds["fp32"] == preds["int8"]).mean())
        rows.append(record(record_path, "compare_engines", row, inputs={"calib": cset.content_hash}))
    return rows
