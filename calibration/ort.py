"""ONNX Runtime as a second engine: FP32 and static INT8 (QDQ, per-channel weights) from the same sets.

Calibration tensors come from `quantize.calibration_items`, exactly as NNCF receives them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from calibration.benchmark import Protocol, _summary, _timed_loop
from calibration.data import to_model_input
from calibration.errors import CalibError


class ItemReader:
    """`CalibrationDataReader` over prepared batch-1 items (duck-typed: ORT only calls get_next/rewind)."""

    def __init__(self, items: list[np.ndarray], input_name: str = "input"):
        self.items, self.input_name, self.pos = items, input_name, 0

    def get_next(self) -> dict | None:
        if self.pos >= len(self.items):
            return None
        self.pos += 1
        return {self.input_name: self.items[self.pos - 1]}

    def rewind(self) -> None:
        self.pos = 0

    def __iter__(self):
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item[self.input_name]


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def quantize_onnx(fp32: Path, out: Path, items: list[np.ndarray], method: str = "minmax") -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise CalibError(f"unknown calibration method {method!r} ({', '.join(methods)})")
    prepped = out.with_name(out.stem + "_prep.onnx")
    quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
    quantize_static(str(prepped), str(out), ItemReader(items), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=methods[method])
    prepped.unlink(missing_ok=True)
    return out


def predict_onnx(path: Path, images: np.ndarray, batch: int = 50) -> tuple[np.ndarray, float]:
    sess = session(path)
    name = sess.get_inputs()[0].name
    x = to_model_input(images)
    preds = np.empty(len(x), np.int64)
    t0 = time.perf_counter()
    for s in range(0, len(x), batch):
        preds[s : s + batch] = sess.run(None, {name: x[s : s + batch]})[0].argmax(1)
    return preds, len(x) / (time.perf_counter() - t0)


def bench_onnx(path: Path, protocol: Protocol = Protocol()) -> dict:
    sess = session(path, protocol.threads)
    name = sess.get_inputs()[0].name
    x = {name: np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    runs = [_timed_loop(lambda: sess.run(None, x), protocol) for _ in range(protocol.repeats)]
    summary = _summary(runs, "fps_latency")
    # ONNX Runtime has no async queue: batch-1 sequential runs are its throughput too
    return {"engine": "onnxruntime", **summary, "fps_throughput_median": summary["fps_latency_median"],
            "threads": sess.get_session_options().intra_op_num_threads, "protocol": protocol.__dict__}
