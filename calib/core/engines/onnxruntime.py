"""ONNX Runtime: FP32 ONNX, INT8 by `quantize_static` (QDQ, per-channel symmetric INT8 weights).

Activations: asymmetric UINT8 by default (ONNX Runtime's own choice, the counterpart of NNCF's `mixed`
preset), symmetric INT8 with `preset=performance`. Weights: 7-bit (`reduce_range`) by default where the CPU
has no VNNI and 8-bit where it has, as `quantize_static`'s documentation advises for x86 CPUs (its u8s8 kernels
can saturate without VNNI); `reduce_range` set either way overrides that, and the row says which it was.

Activation ranges: minmax (default) through `quantize_static`; entropy and percentile from ONNX Runtime's own
histogram calibrator with the bins stated in `HISTOGRAM` and recorded, handed to `quantize_static` as its
calibration cache. (Through `quantize_static` alone, entropy gets 128 histogram bins for 128 quantized bins, a
single candidate threshold, so it returns the min-max ranges: onnxruntime 1.32.)

ONNX Runtime has no async queue: throughput requests run on worker threads, one session each (see
`ThreadPoolRunner`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.core.engines import Engine, Protocol, Runner, ThreadPoolRunner, random_input, static_chw
from calib.core.engines.registry import register_engine
from calib.core.errors import CalibError
from calib.core.spec import option_value

if TYPE_CHECKING:
    from calib.core.contract import InputContract
    from calib.core.data import LabeledImages
    from calib.core.spec import QuantizeSpec

METHODS = ("minmax", "entropy", "percentile")
# the histogram calibrators' settings (ONNX Runtime's `create_calibrator` keys); entropy: 2048 bins searched for
# the 128-level threshold of least KL divergence (TensorRT's recipe); percentile: ONNX Runtime's defaults
HISTOGRAM = {"entropy": {"num_bins": 2048, "num_quantized_bins": 128},
             "percentile": {"num_bins": 2048, "percentile": 99.999, "symmetric": True}}


def input_name(path: Path | str) -> str:
    """The model's one image input, as its graph names it (exporters name it `input`, `images`, `x`, ...)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in weights]
    if len(names) != 1:
        raise CalibError(f"{path} has {len(names)} inputs ({', '.join(names)}); calib quantizes image classifiers "
                         "with one image input")
    return names[0]


class ItemReader:
    """`CalibrationDataReader` over prepared items (duck-typed: ORT only calls get_next/rewind). Its min-max
    calibrator keeps the extremes of everything it sees, so items of several images give the same ranges."""

    def __init__(self, items: list[np.ndarray], input_name: str):
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


def reduce_range_choice(option: bool | None) -> tuple[bool, str]:
    """7-bit weights or not, and why: the option if given, else ONNX Runtime's guidance for this CPU."""
    from calib.core.hardware import has_vnni

    if option is not None:
        return bool(option), "option"
    vnni = has_vnni()
    return not vnni, f"default: {'VNNI' if vnni else 'no VNNI'} on this CPU"


def histogram_ranges(model: Path, items: list[np.ndarray], method, settings: dict, cache: Path) -> None:
    """Activation ranges from ONNX Runtime's histogram calibrator with `settings` (`create_calibrator`'s keys),
    written as the calibration cache `quantize_static` reads."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    augmented = cache.with_name("augmented.onnx")
    # its progress lines ("Collecting tensor data ...") print to stdout, which the CLI routes to the run's log
    calibrator = create_calibrator(model, None, augmented_model_path=str(augmented), calibrate_method=method,
                                   extra_options=dict(settings))
    calibrator.collect_data(ItemReader(items, input_name(model)))
    save_tensors_data(calibrator.compute_data(), cache)
    del calibrator


@register_engine
class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"
    suffix = ".onnx"
    description = "ONNX Runtime, static INT8 QDQ"
    label = "ONNX Runtime"
    calibrate_methods = METHODS
    options = frozenset({"subset_size", "preset", "seed", "calibrate_method", "reduce_range", "calibration_batch"})
    hints = {"overflow_fix": "its counterpart here is --reduce-range/--no-reduce-range",
             "algo": "it has the default algorithm only"}

    def export(self, model, out: Path) -> Path:
        from calib.core.export import to_onnx

        return to_onnx(model, out / "fp32.onnx")

    def quantize(self, fp32: Path, items: list[np.ndarray], spec: QuantizeSpec, out: Path,
                 validation: LabeledImages | None = None,
                 contract: InputContract | None = None) -> tuple[Path, dict]:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        method = option_value(spec.calibrate_method or "minmax")
        preset = option_value(spec.preset or "mixed")
        symmetric = preset == "performance"
        reduce_range, reason = reduce_range_choice(spec.reduce_range)
        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        out.mkdir(parents=True, exist_ok=True)
        int8 = out / "int8.onnx"
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="calib-ort-") as tmp:
            prepped = Path(tmp) / "fp32_prep.onnx"
            quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
            cache = None
            if method in HISTOGRAM:
                cache = Path(tmp) / "ranges.json"
                histogram_ranges(prepped, items, methods[method], HISTOGRAM[method], cache)
            quantize_static(str(prepped), str(int8), ItemReader(items, input_name(prepped)),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=reduce_range, weight_type=QuantType.QInt8,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            calibrate_method=methods[method], extra_options={"ActivationSymmetric": symmetric},
                            calibration_cache_path=cache)
        record = {"algo": "default", "preset": preset, "activations": "symmetric" if symmetric else "asymmetric",
                  "calibrate_method": method, **{f"calib_{k}": v for k, v in HISTOGRAM.get(method, {}).items()},
                  "reduce_range": reduce_range, "reduce_range_reason": reason, "quant_format": "QDQ",
                  "per_channel": True, "calibration_batch": int(items[0].shape[0]),
                  "quantize_seconds": round(time.perf_counter() - t0, 2)}
        return int8, record

    def scores(self, model, x: np.ndarray, batch: int = 50) -> tuple[np.ndarray, float]:
        """The last batch is zero-padded to `batch` rows (a file may take that batch only); padding is dropped."""
        sess = session(model)
        name = sess.get_inputs()[0].name
        n = len(x)
        padded = np.zeros((n + (-n) % batch, *x.shape[1:]), np.float32)
        padded[:n] = x
        t0 = time.perf_counter()
        out = np.concatenate([sess.run(None, {name: padded[s : s + batch]})[0]
                              for s in range(0, len(padded), batch)])
        return out[:n], n / (time.perf_counter() - t0)

    def throughput_runner(self, model, protocol: Protocol) -> Runner:
        calls = []
        for i in range(protocol.n_requests):
            sess = session(model, protocol.threads_per_request)
            shape = protocol.input_shape or static_chw(sess.get_inputs()[0].shape)
            feed = {sess.get_inputs()[0].name: random_input(protocol.batch, i, shape)}
            calls.append(lambda sess=sess, feed=feed: sess.run(None, feed))
        return ThreadPoolRunner(calls, {"sessions": protocol.n_requests,
                                        "threads_per_session": protocol.threads_per_request})

    def latency_step(self, model, protocol: Protocol) -> Callable[[], Any]:
        sess = session(model, protocol.n_threads)
        shape = protocol.input_shape or static_chw(sess.get_inputs()[0].shape)
        feed = {sess.get_inputs()[0].name: random_input(1, 0, shape)}
        return lambda: sess.run(None, feed)
