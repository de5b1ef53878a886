"""Speed under one protocol, each driver recording flat rows: FP32 against INT8 per model and engine, every
engine from one set, `calib evaluate` against OpenVINO's benchmark_app, and the sources' own speed."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np

from calib.core.data import load_split
from calib.core.engines import get_engine, list_engines
from calib.core.errors import CalibError
from calib.core.evaluate import evaluate
from calib.core.pipeline import fp32_file, quantize_with
from calib.core.runs import record
from calib.core.sets import CalibrationSet, read_set
from calib.core.spec import QuantizeSpec
from calib.core.speed import (
    Protocol,
    bench_file,
    interleaved,
    model_size_bytes,
    ratio_interval,
    speed_fields,
    time_model,
)


def memory_set(source: str = "noise", per_class: int = 10, seed: int = 0) -> CalibrationSet:
    """A small in-memory set for speed runs, where calibration content does not matter."""
    from calib.core.sources import generate

    g = generate(source, per_class, seed)
    digest = hashlib.sha256(g.images.tobytes()).hexdigest()
    return CalibrationSet(Path(f"<memory:{source}>"), g.images, g.labels, g.ids,
                          {"source": source, "content_hash": digest, "role": g.role, "in_memory": True})


def benchmark_models(names: list[str], engines: list[str], protocol: Protocol, out: Path, pytorch: bool = True,
                     trained: bool = False, record_path: Path = Path("runs/records.jsonl"),
                     quiet: bool = False) -> list[dict]:
    """FP32 (and INT8 where the engine quantizes) throughput and latency of zoo models, every engine and PyTorch
    under the same protocol; progress on stderr (`calib.core.progress`) unless `quiet`."""
    from calib.core.progress import track
    from calib.core.weights import load_model

    cset = memory_set()
    rows = []
    for name in track(names, "benchmark models", quiet=quiet):
        torch_speed = time_model("pytorch", load_model(name, pretrained=trained), protocol) if pytorch else None
        for engine in map(get_engine, engines):
            row = {"model": name, "engine": engine.name, "trained_weights": trained, "protocol": asdict(protocol),
                   "protocol_text": protocol.describe()}
            if engine.int8:
                q = quantize_for_speed(name, engine.name, cset, out, trained)
                row |= speed_fields("fp32", bench_file(q["fp32_path"], protocol))
                row |= speed_fields("int8", bench_file(q["int8_path"], protocol))
                turns = interleaved({"fp32": (engine, q["fp32_path"]), "int8": (engine, q["int8_path"])}, protocol)
                paired = ratio_interval(turns["fp32"], turns["int8"])
                row |= {"speedup": paired["ratio"], "speedup_low": paired["ratio_low"],
                        "speedup_high": paired["ratio_high"], "speedup_runs": paired["ratio_runs"],
                        "speedup_protocol": "INT8 / FP32 throughput, interleaved repeats (FP32 INT8 FP32 INT8 ...), "
                                            "median of the per-repeat ratios, 95 % bootstrap interval",
                        "fp32_bytes": q["fp32_bytes"], "int8_bytes": q["int8_bytes"]}
            else:
                path = engine.export(load_model(name, pretrained=trained), out / f"{name}-{engine.name}")
                row |= speed_fields("fp32", bench_file(path, protocol)) | {"fp32_bytes": model_size_bytes(path)}
            if torch_speed:
                row |= {"pytorch_fps": torch_speed["fps_throughput_median"],
                        "pytorch_latency_fps": torch_speed["fps_latency_median"]}
            rows.append(record(record_path, "benchmark", row))
    return rows


def quantize_for_speed(name: str, engine: str, cset: CalibrationSet, out: Path, trained: bool = False,
                       subset_size: int | None = None, seed: int = 0) -> dict:
    """FP32 and default-INT8 files of a zoo model for timing; random weights unless `trained`."""
    spec = QuantizeSpec(model=name, calib=cset.path, engine=engine, subset_size=subset_size, seed=seed,
                          pretrained=trained)
    return quantize_with(spec, cset, out / f"{name}-{engine}")


def evaluate_vs_benchmark_app(model: str, out: Path, data_dir: Path | None = None, seconds: int = 5,
                              batch: int = 50, repeats: int = 3, precision: str = "f32",
                              record_path: Path = Path("runs/records.jsonl")) -> dict:
    """`calib evaluate` throughput against benchmark_app's on the same INT8 IR, like with like: the same batch,
    precision hint and device configuration (streams, threads, requests; checked in benchmark_app's own report),
    alternating in one run; the ratio is of the medians."""
    from calib.core.engines.openvino import benchmark_app, compile_model, device_config

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
    paired = ratio_interval(apps, evals)  # repeat i of each ran back to back
    ratio = paired["ratio"]
    row = {"model": model, "ir": str(xml), "batch": batch, "requests": requests, **config,
           "ratio_low": paired["ratio_low"], "ratio_high": paired["ratio_high"], "ratio_runs": paired["ratio_runs"],
           "eval_fps": float(np.median(evals)), "eval_fps_runs": evals, "eval_accuracy": ev["accuracy"],
           "benchmark_app_fps": float(np.median(apps)), "benchmark_app_runs": apps,
           "benchmark_app_seconds": seconds, "benchmark_app_command": app["command"], "ratio": ratio}
    return record(record_path, "evaluate_vs_benchmark_app", row, inputs={"test": test.source})


def benchmark_sources(fractal_images: int = 500, inversion_images: int = 20, inversion_iterations: int = 400,
                      model: str = "resnet20", weights: Path | None = None,
                      record_path: Path = Path("runs/records.jsonl")) -> dict:
    """Fractal images/s and inversion seconds/image, each timed around the source function alone."""
    import time

    from calib.core.sources import generate

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
        folder = out / engine.name
        if engine.int8:
            spec = QuantizeSpec(model=model, calib=calib, engine=engine.name, subset_size=subset_size,
                                data_dir=data_dir)
            q = quantize_with(spec, cset, folder)
            files = {"fp32": q["fp32_path"], "int8": q["int8_path"]}
        else:
            q = {"subset_size_images": None}
            files = {"fp32": str(fp32_file(model, engine, folder)[0])}
        row = {"model": model, "engine": engine.name, "calib_hash": cset.content_hash,
               "subset_size_images": q["subset_size_images"], "protocol": asdict(protocol),
               "protocol_text": protocol.describe()}
        preds = {}
        for prec, path in files.items():
            acc = evaluate(path, test)
            preds[prec] = acc["predictions"]
            row |= {f"{prec}_accuracy": acc["accuracy"], f"{prec}_bytes": model_size_bytes(Path(path))}
            row |= speed_fields(prec, bench_file(path, protocol))
        if "int8" in files:
            row["speedup"] = row["int8_fps"] / row["fp32_fps"]
            row["int8_agreement"] = float((preds["fp32"] == preds["int8"]).mean())
        rows.append(record(record_path, "compare_engines", row, inputs={"calib": cset.content_hash}))
    return rows
