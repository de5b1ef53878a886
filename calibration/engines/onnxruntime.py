"""ONNX Runtime: FP32 ONNX, INT8 by `quantize_static` (QDQ, per-channel symmetric INT8 weights).

Activations: asymmetric UINT8 by default (ONNX Runtime's own choice, the counterpart of NNCF's `mixed`
preset), symmetric INT8 with `preset=performance`. ONNX Runtime has no async queue: throughput requests run
on worker threads, one session each (see `ThreadPoolRunner`). Note: through `quantize_static`, `entropy` gets
ONNX Runtime's default of 128 histogram bins for 128 quantized bins, so its search has a single candidate and
it returns the min-max ranges (onnxruntime 1.32).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calibration.engines import Engine, Protocol, Runner, ThreadPoolRunner, random_input, register_engine
from calibration.errors import CalibError

if TYPE_CHECKING:
    from calibration.data import LabeledImages
    from calibration.quantize import QuantizeConfig

METHODS = ("minmax", "entropy", "percentile")


class ItemReader:
    """`CalibrationDataReader` over prepared items (duck-typed: ORT only calls get_next/rewind). Its min-max
    calibrator keeps the extremes of everything it sees, so items of several images give the same ranges."""

    def __init__(self, items: list[np.ndarray], input_name: str = "input"):
        self.items, self.input_name, self.pos = items, input_name, 0

    def get_next(self) -> dict | None:
        if self.pos >= len(self.items):
            return None
        self.pos += 1
        return {self.input_name: self.items[self.pos - 1]}

    def rewind(self) -> None:
        self.pos = 0


def session(path: Path | str, threads: int | None = None):
    """A CPU session with `threads` intra-op threads (default all cores)."""
    import os

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types for unreadable files
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CalibError(f"{path} is not a readable ONNX model ({first})") from None


def _value(option) -> str:
    return str(getattr(option, "value", option))


@register_engine
class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"
    suffix = ".onnx"
    description = "ONNX Runtime, static INT8 QDQ"

    def export(self, model, out: Path) -> Path:
        from calibration.export import to_onnx

        return to_onnx(model, out / "fp32.onnx")

    def check_options(self, cfg: QuantizeConfig) -> None:
        if cfg.algo != "default":
            raise CalibError("ONNX Runtime has no accuracy-aware algorithm; use --algo default")
        if _value(cfg.calibrate_method or "minmax") not in METHODS:
            raise CalibError(f"unknown calibration method {cfg.calibrate_method!r} ({', '.join(METHODS)})")
        if _value(cfg.overflow_fix or "disable") not in ("disable", "enable"):
            raise CalibError("ONNX Runtime reduces the range of all weights or of none: --overflow-fix enable or "
                             "disable")

    def quantize(self, fp32: Path, items: list[np.ndarray], cfg: QuantizeConfig, out: Path,
                 validation: LabeledImages | None = None) -> tuple[Path, dict]:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.check_options(cfg)
        method = _value(cfg.calibrate_method or "minmax")
        preset = _value(cfg.preset or "mixed")
        symmetric = preset == "performance"
        reduce_range = _value(cfg.overflow_fix or "disable") == "enable"
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        out.mkdir(parents=True, exist_ok=True)
        int8 = out / "int8.onnx"
        prepped = out / "fp32_prep.onnx"
        t0 = time.perf_counter()
        quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
        try:
            quantize_static(str(prepped), str(int8), ItemReader(items), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=reduce_range, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            calibrate_method=methods[method], extra_options={"ActivationSymmetric": symmetric})
        finally:
            prepped.unlink(missing_ok=True)
        record = {"algo": "default", "preset": preset, "activations": "symmetric" if symmetric else "asymmetric",
                  "calibrate_method": method, "overflow_fix": "enable" if reduce_range else "disable",
                  "quant_format": "QDQ", "per_channel": True, "calibration_batch": int(items[0].shape[0]),
                  "quantize_seconds": round(time.perf_counter() - t0, 2)}
        return int8, record

    def predict(self, model, x: np.ndarray, batch: int = 50) -> tuple[np.ndarray, float]:
        sess = session(model)
        name = sess.get_inputs()[0].name
        preds = np.empty(len(x), np.int64)
        t0 = time.perf_counter()
        for s in range(0, len(x), batch):
            preds[s : s + batch] = sess.run(None, {name: x[s : s + batch]})[0].argmax(1)
        return preds, len(x) / (time.perf_counter() - t0)

    def throughput_runner(self, model, protocol: Protocol) -> Runner:
        calls = []
        for i in range(protocol.n_requests):
            sess = session(model, protocol.threads_per_request)
            feed = {sess.get_inputs()[0].name: random_input(protocol.batch, i)}
            calls.append(lambda sess=sess, feed=feed: sess.run(None, feed))
        return ThreadPoolRunner(calls, {"sessions": protocol.n_requests,
                                        "threads_per_session": protocol.threads_per_request})

    def latency_step(self, model, protocol: Protocol) -> Callable[[], Any]:
        sess = session(model, protocol.n_threads)
        feed = {sess.get_inputs()[0].name: random_input(1)}
        return lambda: sess.run(None, feed)
