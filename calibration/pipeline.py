"""One step each: quantize a model with a set, evaluate a model, benchmark models; each records a flat row.

The CLI and the study runner both call these functions.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from calibration.benchmark import Protocol, bench_file, bench_torch, benchmark_app_fps, model_size_bytes
from calibration.data import load_split, train_splits
from calibration.errors import CalibError
from calibration.quantize import (
    Algo,
    DropType,
    Preset,
    QuantizeConfig,
    calibration_items,
    load_ir_or_zoo,
    quantize_model,
    select_calibration,
)
from calibration.runs import atomic_write_json, record, start_run
from calibration.sets import CalibrationSet, read_set


@dataclass(frozen=True)
class QuantizeRequest:
    model: str
    calib: Path
    algo: str = "default"
    engine: str = "openvino"
    subset_size: int | None = None
    preset: str = "performance"
    fast_bias_correction: bool = True
    max_drop: float = 0.01
    drop_type: str = "absolute"
    calibrate_method: str = "minmax"
    seed: int = 0
    weights: Path | None = None
    data_dir: Path | None = None
    fuse: bool = True
    pretrained: bool = True  # False: random weights, for speed runs that need no trained model


def _stem(model: str) -> str:
    return Path(model).stem if model.endswith((".xml", ".onnx")) else model


def quantize_with(req: QuantizeRequest, cset: CalibrationSet, out: Path) -> dict:
    """Quantize `req.model` with `cset` into `out`; returns paths, sizes and the parameters used."""
    if req.engine == "openvino":
        from calibration.export import save_ir

        ov_model, info = load_ir_or_zoo(req.model, req.weights, req.fuse, req.pretrained)
        fp32 = save_ir(ov_model, out / "fp32.xml")
        cfg = QuantizeConfig(Algo(req.algo), req.subset_size, Preset(req.preset), req.fast_bias_correction,
                             req.max_drop, DropType(req.drop_type), req.seed)
        validation = train_splits(req.data_dir)["validation"] if cfg.algo == Algo.accuracy_aware else None
        q, rec = quantize_model(ov_model, cset, cfg, validation)
        int8 = save_ir(q, out / "int8.xml")
    elif req.engine == "onnxruntime":
        from calibration.ort import quantize_onnx

        if req.algo != "default":
            raise CalibError("ONNX Runtime has no accuracy-aware algorithm; use --algo default")
        if req.model.endswith(".onnx"):
            fp32, info = Path(req.model), {"model": req.model}
        elif req.model.endswith(".xml"):
            raise CalibError("ONNX Runtime needs a zoo name or an .onnx file, not an OpenVINO IR")
        else:
            from calibration.export import to_onnx
            from calibration.weights import load_model, resolve_weights

            path = resolve_weights(req.model, req.weights) if req.pretrained else None
            model = load_model(req.model, path, pretrained=req.pretrained, fuse=req.fuse)
            fp32 = to_onnx(model, out / "fp32.onnx")
            info = {"model": req.model, "weights": str(path) if path else "random"}
        images = select_calibration(cset, req.subset_size, req.seed)
        int8 = quantize_onnx(fp32, out / "int8.onnx", calibration_items(images), req.calibrate_method)
        rec = {"algo": "default", "subset_size_images": len(images), "calibrate_method": req.calibrate_method,
               "quant_format": "QDQ", "per_channel": True, "seed": req.seed, "calib_set": str(cset.path),
               "calib_hash": cset.content_hash, "calib_source": cset.manifest["source"], "calib_images": len(cset)}
    else:
        raise CalibError(f"unknown engine {req.engine!r}")
    return {**info, "engine": req.engine, **rec, "fp32_path": str(fp32), "int8_path": str(int8),
            "fp32_bytes": model_size_bytes(fp32), "int8_bytes": model_size_bytes(int8)}


def accuracy_of(path: str | Path, test, batch: int = 50) -> dict:
    """Test accuracy of an IR or ONNX file, with the engine that reads it."""
    from calibration.data import require_role

    require_role(test, ("test",), "final accuracy")
    if str(path).endswith(".onnx"):
        from calibration.ort import predict_onnx

        preds, fps = predict_onnx(Path(path), test.images, batch)
        return {"accuracy": float((preds == test.labels).mean()), "images": len(test), "eval_fps": round(fps, 1),
                "engine": "onnxruntime"}
    from calibration.evaluate import evaluate

    return {**evaluate(str(path), test, batch), "engine": "openvino"}


def run_quantize(req: QuantizeRequest, out: Path | None = None, evaluate: bool = False,
                 record_path: Path = Path("runs/records.jsonl")) -> dict:
    cset = read_set(req.calib)
    out = out or Path("runs/quantize") / f"{_stem(req.model)}-{req.engine}-{req.algo}-{cset.content_hash[:8]}"
    start_run(out, req, seeds={"quantize": req.seed}, inputs={"calib": cset.content_hash})
    row = quantize_with(req, cset, out)
    if evaluate:
        test = load_split("test", req.data_dir)
        row["fp32_accuracy"] = accuracy_of(row["fp32_path"], test)["accuracy"]
        row["int8_accuracy"] = accuracy_of(row["int8_path"], test)["accuracy"]
    atomic_write_json(out / "quantize.json", row)
    return record(record_path, "quantize", row, seeds={"quantize": req.seed},
                  inputs={"calib": cset.content_hash, "weights": Path(row.get("weights", "-")).name})


def run_evaluate(model: str, batch: int = 50, weights: Path | None = None, data_dir: Path | None = None,
                 record_path: Path = Path("runs/records.jsonl")) -> dict:
    test = load_split("test", data_dir)
    if model.endswith((".xml", ".onnx")):
        if not Path(model).is_file():
            raise CalibError(f"model file {model} does not exist")
        result = accuracy_of(model, test, batch)
    else:
        from calibration.evaluate import evaluate

        ov_model, _ = load_ir_or_zoo(model, weights)
        result = {**evaluate(ov_model, test, batch), "engine": "openvino"}
    return record(record_path, "evaluate", {"model": model, **result}, inputs={"test": test.source})


def memory_set(source: str = "noise", per_class: int = 10, seed: int = 0) -> CalibrationSet:
    """A small in-memory set for speed runs, where calibration content does not matter."""
    from calibration.sources import generate

    g = generate(source, per_class, seed)
    digest = hashlib.sha256(g.images.tobytes()).hexdigest()
    return CalibrationSet(Path(f"<memory:{source}>"), g.images, g.labels, g.ids,
                          {"source": source, "content_hash": digest, "role": g.role})


def benchmark_models(names: list[str], engines: list[str], protocol: Protocol, out: Path, pytorch: bool = True,
                     trained: bool = False, record_path: Path = Path("runs/records.jsonl")) -> list[dict]:
    from rich.progress import track

    from calibration.weights import load_model

    cset = memory_set()
    rows = []
    for name in track(names, description="benchmark", transient=True):
        torch_fps = bench_torch(load_model(name, pretrained=trained), protocol) if pytorch else None
        for engine in engines:
            q = quantize_for_speed(name, engine, cset, out, trained)
            fp32, int8 = bench_file(q["fp32_path"], protocol), bench_file(q["int8_path"], protocol)
            row = {"model": name, "engine": engine, "trained_weights": trained,
                   "fp32_fps": fp32["fps_throughput_median"], "int8_fps": int8["fps_throughput_median"],
                   "speedup": int8["fps_throughput_median"] / fp32["fps_throughput_median"],
                   "fp32_latency_fps": fp32["fps_latency_median"], "int8_latency_fps": int8["fps_latency_median"],
                   "fp32_bytes": q["fp32_bytes"], "int8_bytes": q["int8_bytes"],
                   "fp32_runs": fp32.get("fps_throughput_runs", fp32["fps_latency_runs"]),
                   "int8_runs": int8.get("fps_throughput_runs", int8["fps_latency_runs"]),
                   "protocol": asdict(protocol)}
            if torch_fps:
                row["pytorch_fps"] = torch_fps["fps_latency_median"]
            rows.append(record(record_path, "benchmark", row))
    return rows


def quantize_for_speed(name: str, engine: str, cset: CalibrationSet, out: Path, trained: bool = False,
                       subset_size: int | None = None, seed: int = 0) -> dict:
    """FP32 and default-INT8 files of a zoo model for timing; random weights unless `trained`."""
    req = QuantizeRequest(model=name, calib=cset.path, engine=engine, subset_size=subset_size, seed=seed,
                          pretrained=trained)
    return quantize_with(req, cset, out / f"{name}-{engine}")


def evaluate_vs_benchmark_app(name: str, out: Path, data_dir: Path | None = None, seconds: int = 10,
                              record_path: Path = Path("runs/records.jsonl")) -> dict:
    """`calib evaluate` throughput against benchmark_app's async throughput on the same INT8 IR."""
    from calibration.evaluate import evaluate

    xml = out / f"{name}-openvino" / "int8.xml"
    if not xml.exists():
        quantize_for_speed(name, "openvino", memory_set(), out)
    test = load_split("test", data_dir)
    ev = evaluate(str(xml), test)
    app = benchmark_app_fps(xml, seconds)
    return record(record_path, "evaluate_vs_benchmark_app", {"model": name, "ir": str(xml), "eval_fps": ev["eval_fps"],
                                                             "benchmark_app_fps": app, "ratio": ev["eval_fps"] / app})


def benchmark_sources(fractal_images: int = 500, inversion_images: int = 20, inversion_iterations: int = 400,
                      model: str = "resnet20", weights: Path | None = None,
                      record_path: Path = Path("runs/records.jsonl")) -> dict:
    """Fractal images/s and inversion seconds/image, each timed around the source function alone."""
    import time

    from calibration.sources import generate

    per_class = max(1, fractal_images // 10)
    generate("fractal", 1, 99)  # warm-up (imports, first allocations)
    t0 = time.perf_counter()
    generate("fractal", per_class, 0)
    fractal = per_class * 10 / (time.perf_counter() - t0)
    per_class = max(1, inversion_images // 10)
    batch = per_class * 10
    t0 = time.perf_counter()
    generate("inversion", per_class, 0, model=model, weights=weights, iterations=inversion_iterations,
             batch_size=batch)
    inversion = (time.perf_counter() - t0) / batch
    return record(record_path, "benchmark_sources", {"fractal_images_per_s": fractal, "fractal_images": per_class * 10,
                                                     "inversion_s_per_image": inversion, "inversion_model": model,
                                                     "inversion_iterations": inversion_iterations,
                                                     "inversion_batch": batch})


def compare_engines(model: str, calib: Path, protocol: Protocol, out: Path, subset_size: int | None = None,
                    data_dir: Path | None = None, record_path: Path = Path("runs/records.jsonl")) -> list[dict]:
    """FP32 and INT8 accuracy, throughput and size for OpenVINO and ONNX Runtime, from one set, in one run."""
    cset = read_set(calib)
    test = load_split("test", data_dir)
    rows = []
    for engine in ("openvino", "onnxruntime"):
        q = quantize_with(QuantizeRequest(model=model, calib=calib, engine=engine, subset_size=subset_size,
                                          data_dir=data_dir), cset, out / engine)
        row = {"model": model, "engine": engine, "calib_hash": cset.content_hash,
               "subset_size_images": q["subset_size_images"], "fp32_bytes": q["fp32_bytes"],
               "int8_bytes": q["int8_bytes"], "protocol": asdict(protocol)}
        for prec in ("fp32", "int8"):
            path = q[f"{prec}_path"]
            row[f"{prec}_accuracy"] = accuracy_of(path, test)["accuracy"]
            bench = bench_file(path, protocol)
            row[f"{prec}_fps"] = bench["fps_throughput_median"]
            row[f"{prec}_latency_fps"] = bench["fps_latency_median"]
        row["speedup"] = row["int8_fps"] / row["fp32_fps"]
        rows.append(record(record_path, "compare_engines", row, inputs={"calib": cset.content_hash}))
    return rows
