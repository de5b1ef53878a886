"""The RepVGG question, measured: does default NNCF INT8 collapse RepVGG here, and which lever recovers it?

Calls NNCF and OpenVINO directly (not calib's quantize path), so its numbers are an independent check of the
study's RepVGG cells. For one model, weights and calibration set it quantizes the fused and the unfused network
with NNCF's defaults and with one lever changed at a time, and records for each: test accuracy (all test
images), agreement with FP32, quantize seconds, INT8 throughput (median of 5 x 1 s, AsyncInferQueue) and the
number of FakeQuantize nodes. It also measures what the QARepVGG paper names as the cause: per-channel weight
outliers after fusion (max |w| of a layer over the median of its per-channel max |w|) and activation spread.

    CALIB_CIFAR10_DIR=../shared/data/cifar10-jpeg python scripts/repvgg_levers.py \
        --weights ../shared/weights/cifar10_repvgg_a0-20eadc6e.pt --out results/repvgg
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

LEVERS = ("default", "per_tensor_weights", "no_bias_correction", "full_bias_correction", "minmax",
          "mean_no_outliers", "percentile", "mixed_preset", "overflow_fix_disable", "smooth_quant",
          "accuracy_aware", "keep_worst_fp32")


def advanced(lever: str, batch: int):
    import nncf
    from nncf.common.quantization.structs import QuantizationScheme
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        QuantizationParameters,
    )
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    kw: dict = {"batchwise_statistics": True if batch > 1 else None}
    if lever == "per_tensor_weights":
        kw["weights_quantization_params"] = QuantizationParameters(per_channel=False, mode=QuantizationScheme.SYMMETRIC)
    elif lever == "no_bias_correction":
        kw["disable_bias_correction"] = True
    elif lever == "minmax":
        kw["activations_range_estimator_params"] = RangeEstimatorParametersSet.MINMAX
    elif lever == "mean_no_outliers":
        kw["activations_range_estimator_params"] = RangeEstimatorParametersSet.MEAN_NO_OUTLIERS_MINMAX
    elif lever == "percentile":
        kw["activations_range_estimator_params"] = RangeEstimatorParameters(
            min=StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MEAN, quantile_outlier_prob=1e-3),
            max=StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MEAN, quantile_outlier_prob=1e-3))
    elif lever == "overflow_fix_disable":
        kw["overflow_fix"] = nncf.OverflowFix.DISABLE
    elif lever == "smooth_quant":
        kw["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(convolution=0.5, matmul=-1)
    return AdvancedQuantizationParameters(**kw)


def quantize(fp32, lever: str, items: list, validation: list | None = None, ignored: list[str] | None = None):
    """`fp32` quantized by NNCF with one lever's settings, on calibration `items` (batches); accuracy_aware
    validates on `validation` ((input, label) items) with `top1`, `ignored` names layers kept FP32."""
    import nncf

    kw = {"subset_size": len(items), "fast_bias_correction": lever != "full_bias_correction",
          "preset": nncf.QuantizationPreset.MIXED if lever == "mixed_preset" else nncf.QuantizationPreset.PERFORMANCE}
    if lever == "smooth_quant":
        kw["model_type"] = nncf.ModelType.TRANSFORMER
    if ignored is not None:
        kw["ignored_scope"] = nncf.IgnoredScope(names=ignored)
    batch = len(items[0])
    if lever == "accuracy_aware":
        return nncf.quantize_with_accuracy_control(
            fp32, nncf.Dataset(items), nncf.Dataset(validation), top1, max_drop=0.01,
            advanced_quantization_parameters=advanced("default", batch), **kw)
    return nncf.quantize(fp32, nncf.Dataset(items), advanced_parameters=advanced(lever, batch), **kw)


def validation_items(validation) -> list:
    """(input, label) items of one image each, as `top1` reads them, from labeled images."""
    from calib.core.data import to_model_input

    return [(x[None], int(y)) for x, y in zip(to_model_input(validation.images), validation.labels)]


def top1(compiled, data) -> float:
    """NNCF's validation function for accuracy-aware quantization: top-1 accuracy over (input, label) items."""
    data = list(data)
    preds = np.array([compiled(x)[0].argmax(1)[0] for x, _ in data])
    return float((preds == np.array([y for _, y in data])).mean())


def throughput(xml, seconds: float = 1.0, repeats: int = 5, batch: int = 16) -> dict:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    model.reshape([batch, 3, 32, 32])
    compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"})
    n_req = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    q = ov.AsyncInferQueue(compiled, n_req)
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    for r in q:
        r.set_input_tensor(ov.Tensor(x))

    def run(s: float) -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < s:
            q.start_async()
            n += 1
        q.wait_all()
        return n * batch / (time.perf_counter() - t0)

    run(min(0.5, seconds))
    runs = [run(seconds) for _ in range(repeats)]
    med = float(np.median(runs))
    return {"fps_median": round(med, 1), "fps_min": round(min(runs), 1), "fps_max": round(max(runs), 1),
            "fps_spread": round((max(runs) - min(runs)) / med, 3)}


def predict(xml_or_model, x: np.ndarray, batch: int = 100) -> np.ndarray:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml_or_model)) if isinstance(xml_or_model, str | Path) else xml_or_model.clone()
    model.reshape([batch, 3, 32, 32])
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = []
    for s in range(0, len(x), batch):
        chunk = x[s : s + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), np.float32)])
        out.append(compiled(chunk)[0][:n].argmax(1))
    return np.concatenate(out)


def weight_outliers(net) -> list[dict]:
    """Per 3x3 conv of the (fused) network: how far the largest weight sits above a typical channel's range."""
    import torch

    rows = []
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            w = m.weight.detach().abs().flatten(1).max(1).values.numpy()
            rows.append({"layer": name, "channels": len(w), "max_abs": float(w.max()),
                         "outlier_ratio": float(w.max() / np.median(w)),
                         "per_tensor_step_vs_median_channel": float(w.max() / np.median(w))})
    return rows


def consumers(model, producers: list[str]) -> list[str]:
    """Names of the nodes that read the named nodes' outputs: ignoring those keeps the quantized edge FP32."""
    by_name = {op.get_friendly_name(): op for op in model.get_ops()}
    names = []
    for p in producers:
        for out in by_name[p].outputs():
            names += [t.get_node().get_friendly_name() for t in out.get_target_inputs()]
    return sorted(set(names))


def fq_count(model) -> int:
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def main(argv: list[str] | None = None) -> None:
    """The command line; `argv` lets the test suite run it at toy size in-process."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="repvgg_a0")
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--source", default="cifar10")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--levers", default=",".join(LEVERS))
    ap.add_argument("--fuse", default="fused,unfused")
    ap.add_argument("--worst", type=int, default=3, help="keep_worst_fp32: quantizers kept FP32 (diagnose ranks)")
    ap.add_argument("--out", type=Path, default=Path("results/repvgg"))
    ap.add_argument("--speed-seconds", type=float, default=1.0, help="each timed throughput repeat")
    ap.add_argument("--speed-repeats", type=int, default=5, help="timed throughput repeats (median, spread)")
    args = ap.parse_args(argv)

    import openvino as ov

    from calib.core.data import load_split, to_model_input, train_splits
    from calib.core.diagnose import measure_quantizers, rank
    from calib.core.export import to_openvino
    from calib.core.hardware import hardware
    from calib.core.quantize import balanced_indices
    from calib.core.runs import append_jsonl, file_sha256, git_sha, versions
    from calib.core.sources import generate
    from calib.core.weights import load_model

    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "levers.jsonl"
    test = load_split("test")
    validation = train_splits()["validation"]
    x_test = to_model_input(test.images)
    if args.source == "cifar10":
        pool = train_splits()["calibration_pool"]
        idx = balanced_indices(pool.labels, args.images, args.seed)
        calib_images = pool.images[idx]
    else:
        g = generate(args.source, args.images // 10, args.seed)
        calib_images = g.images[: args.images]
    items = [x for x in to_model_input(calib_images).reshape(-1, 30, 3, 32, 32)]
    val = validation_items(validation)
    common = {"model": args.model, "weights": args.weights.name, "weights_sha256": file_sha256(args.weights),
              "source": args.source, "calib_images": len(calib_images), "seed": args.seed,
              "test": test.source, "test_images": len(test), "git_sha": git_sha(), **hardware(),
              "versions": versions()}

    for fuse in args.fuse.split(","):
        net = load_model(args.model, args.weights, fuse=fuse == "fused")
        outliers = weight_outliers(net)
        (args.out / f"weights-{fuse}.json").write_text(json.dumps(outliers, indent=1))
        fp32 = to_openvino(net, dynamic_batch=True)
        fp32_pred = predict(fp32, x_test)
        fp32_acc = float((fp32_pred == test.labels).mean())
        fp32_xml = args.out / "models" / fuse / "fp32.xml"
        ov.save_model(fp32, str(fp32_xml), compress_to_fp16=False)
        print(f"{fuse}: FP32 {fp32_acc:.4f}", flush=True)
        append_jsonl(rows_path, {**common, "fuse": fuse, "lever": "fp32", "accuracy": fp32_acc,
                                 **throughput(fp32_xml, args.speed_seconds, args.speed_repeats), "fq_nodes": 0})
        worst_scope = None
        for lever in args.levers.split(","):
            if lever == "keep_worst_fp32" and worst_scope is None:
                print("  (keep_worst_fp32 needs the default lever first)")
                continue
            t0 = time.perf_counter()
            q = quantize(fp32, lever, items, val, worst_scope if lever == "keep_worst_fp32" else None)
            seconds = time.perf_counter() - t0
            xml = args.out / "models" / fuse / f"{lever}.xml"
            ov.save_model(q, str(xml), compress_to_fp16=False)
            pred = predict(q, x_test)
            acc = float((pred == test.labels).mean())
            row = {**common, "fuse": fuse, "lever": lever, "accuracy": acc, "fp32_accuracy": fp32_acc,
                   "drop_points": round(100 * (acc - fp32_acc), 2),
                   "agreement": float((pred == fp32_pred).mean()), "quantize_seconds": round(seconds, 1),
                   "fq_nodes": fq_count(q), **throughput(xml, args.speed_seconds, args.speed_repeats)}
            if lever == "default":
                diag = rank(measure_quantizers(fp32, q, validation))
                (args.out / f"diagnose-{fuse}.json").write_text(json.dumps(diag, indent=1, default=str))
                worst = [r for r in diag if r["op_type"] != "Parameter"][: args.worst]
                worst_scope = consumers(fp32, [r["node"] for r in worst])
                row["worst_quantizers"] = [(r["layer"], r.get("local_sqnr_db"), r.get("clipped_fraction"))
                                           for r in worst]
            if lever == "keep_worst_fp32":
                row["kept_fp32"] = worst_scope
            append_jsonl(rows_path, row)
            print(f"  {lever:22s} {acc:.4f} ({row['drop_points']:+.2f} pts) {seconds:6.1f} s "
                  f"{row['fps_median']:8.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
