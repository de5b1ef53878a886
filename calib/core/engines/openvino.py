"""OpenVINO + NNCF: FP32 IR, INT8 by `nncf.quantize` (default) or `nncf.quantize_with_accuracy_control`.

Inference keeps every request of an `AsyncInferQueue` busy, with inputs and outputs bound to preallocated
arrays (no copies, no Python callback per request), as benchmark_app does; FP32 stays at f32 precision.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calib.core.engines import IMAGE_SHAPE, Engine, Protocol, Runner, random_input, static_chw
from calib.core.engines.registry import register_engine
from calib.core.errors import CalibError
from calib.core.spec import option_value

if TYPE_CHECKING:
    from calib.core.contract import InputContract
    from calib.core.data import LabeledImages
    from calib.core.spec import QuantizeSpec

DEVICE = "CPU"
# compiled-model properties that make two runs "the same device configuration"
CONFIG_KEYS = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT")


def read_model(model):
    """An `ov.Model` from an `ov.Model` or an `.xml` path; a malformed file is one clear error."""
    import openvino as ov

    if not isinstance(model, str | Path):
        return model
    if not Path(model).is_file():
        raise CalibError(f"IR {model} does not exist")
    try:
        return ov.Core().read_model(str(model))
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise CalibError(f"{model} is not a readable OpenVINO IR ({first[:200]})") from None


def input_chw(model) -> tuple[int, ...]:
    """(C, H, W) of an `ov.Model`'s or compiled model's input where it is fixed; else the zoo's `IMAGE_SHAPE`."""
    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic:
        return IMAGE_SHAPE
    return static_chw([-1 if d.is_dynamic else d.get_length() for d in shape]) or IMAGE_SHAPE


def compile_model(model, precision: str = "f32", hint: str = "THROUGHPUT", batch: int | None = None,
                  threads: int | None = None, streams: int | None = None, chw: tuple[int, ...] | None = None):
    """Compile an `ov.Model` or `.xml` for CPU; `batch` reshapes the input to a static batch first, at `chw`
    (C, H, W) where given (a model whose file leaves them open), else at the model's own."""
    import openvino as ov

    model = read_model(model)
    if batch is not None:
        try:
            model.reshape({model.input(0).get_any_name(): [batch, *(chw or input_chw(model))]})
        except RuntimeError as e:
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise CalibError(f"the model does not take batch {batch} of {list(chw or input_chw(model))} "
                             f"({first[:160]})") from None
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if streams:
        config["NUM_STREAMS"] = streams
    try:
        return ov.Core().compile_model(model, DEVICE, config)
    except RuntimeError as e:
        raise CalibError(f"OpenVINO cannot compile the model: {str(e).strip().splitlines()[0][:200]}") from None


def device_config(compiled) -> dict[str, str]:
    """The properties that decide speed, as the compiled model reports them."""
    out = {k: str(compiled.get_property(k)) for k in CONFIG_KEYS}
    out["INFERENCE_PRECISION_HINT"] = _precision_name(out["INFERENCE_PRECISION_HINT"])
    out["PERFORMANCE_HINT"] = out["PERFORMANCE_HINT"].split(".")[-1]
    return out


def _precision_name(text: str) -> str:
    text = text.lower()
    return "f32" if "float32" in text or text == "f32" else "bf16" if "bf16" in text else "f16" if "f16" in text \
        else text


def _classes(compiled) -> int:
    return compiled.output(0).get_partial_shape()[1].get_length()


def run_queue(compiled, inputs: list, outputs: list, requests: int) -> float:
    """Run every input tensor with `requests` requests kept busy, each result written into its output tensor;
    one warm-up inference per request first (untimed). Returns seconds for the timed part."""
    import openvino as ov

    q = ov.AsyncInferQueue(compiled, requests)
    scratch = [ov.Tensor(np.empty(tuple(outputs[0].shape), np.float32)) for _ in range(requests)]
    for i in range(requests):  # warm-up: first inferences allocate and tune
        req = q[q.get_idle_request_id()]
        req.set_input_tensor(inputs[0])
        req.set_output_tensor(scratch[i])
        q.start_async()
    q.wait_all()
    t0 = time.perf_counter()
    for x, y in zip(inputs, outputs):
        req = q[q.get_idle_request_id()]
        req.set_input_tensor(x)
        req.set_output_tensor(y)
        q.start_async()
    q.wait_all()
    return time.perf_counter() - t0


def scores_ov(model, x: np.ndarray, batch: int = 50, precision: str = "f32") -> tuple[np.ndarray, float, dict]:
    """Outputs for `x` under the THROUGHPUT hint, the inference images/s, and the device configuration it ran
    with. The last batch is zero-padded; padding rows are dropped."""
    import openvino as ov

    compiled = compile_model(model, precision, "THROUGHPUT", batch)
    n = len(x)
    padded = np.zeros((n + (-n) % batch, *x.shape[1:]), np.float32)
    padded[:n] = x
    logits = np.empty((len(padded), _classes(compiled)), np.float32)
    starts = range(0, len(padded), batch)
    inputs = [ov.Tensor(padded[s : s + batch], shared_memory=True) for s in starts]
    outputs = [ov.Tensor(logits[s : s + batch], shared_memory=True) for s in starts]
    requests = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    seconds = run_queue(compiled, inputs, outputs, requests)
    return logits[:n], n / seconds, {**device_config(compiled), "requests": requests, "batch": batch}


def predict_ov(model, x: np.ndarray, batch: int = 50, precision: str = "f32") -> tuple[np.ndarray, float, dict]:
    """Classes of `x` (`scores_ov`'s largest output), the inference images/s and the device configuration."""
    scores, fps, config = scores_ov(model, x, batch, precision)
    return scores.argmax(1), fps, config


class QueueRunner(Runner):
    """AsyncInferQueue with one prepared input per request; `start` blocks while all requests are busy."""

    def __init__(self, compiled, requests: int, batch: int):
        import openvino as ov

        self.queue = ov.AsyncInferQueue(compiled, requests)
        for i, req in enumerate(self.queue):
            req.set_input_tensor(ov.Tensor(random_input(batch, i, input_chw(compiled))))
        self.info = {"device_config": device_config(compiled)}

    def start(self) -> None:
        self.queue.start_async()

    def wait_all(self) -> None:
        self.queue.wait_all()


@contextlib.contextmanager
def _quiet_torch_probe():
    """NNCF probes whether a model is a torch model by importing nncf.torch, whose torch extension loader logs
    'No CUDA runtime is found' on CPU machines; that one logger is raised to ERROR while NNCF runs."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _validation_fn(compiled_model, items) -> tuple[float, list[float]]:
    """Top-1 over (batch-1 input, label) items, all requests of an async queue kept busy; per-item correctness
    lets NNCF rank layers without running items one by one."""
    import openvino as ov

    items = list(items)
    labels = np.asarray([y for _, y in items])
    logits = np.empty((len(items), _classes(compiled_model)), np.float32)
    inputs = [ov.Tensor(np.ascontiguousarray(x), shared_memory=True) for x, _ in items]
    outputs = [ov.Tensor(logits[i : i + 1], shared_memory=True) for i in range(len(items))]
    run_queue(compiled_model, inputs, outputs, max(2, compiled_model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    correct = (logits.argmax(1) == labels).astype(float)
    return float(correct.mean()), correct.tolist()


def validation_items(validation: LabeledImages, contract: InputContract | None = None) -> list[tuple[np.ndarray, int]]:
    """(batch-1 model input, label) per validation image, in order: what `_validation_fn` takes; the images
    become inputs by the model's contract (default: the zoo's)."""
    from calib.core import contract as C

    x = C.to_model_input(validation.images, contract or C.cifar10())
    return [(x[i : i + 1], int(validation.labels[i])) for i in range(len(x))]


def _any_batch(model):
    """The model with a dynamic batch dimension, for calibration items of several images."""
    from openvino import PartialShape

    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or shape[0].is_dynamic:
        return model
    try:
        model.reshape({model.input(0).get_any_name(): PartialShape([-1, *input_chw(model)])})
    except RuntimeError as e:
        raise CalibError(f"this IR takes batch {shape[0]} only, so calibrate with batch 1 "
                         f"({str(e).strip().splitlines()[0][:120]})") from None
    return model


RANGE_ESTIMATORS = ("nncf", "minmax")  # NNCF's defaults, or global min/max for activations as ONNX Runtime does


class _Captured(logging.Handler):
    """NNCF's log records while it runs: kept in memory (to read its accuracy-aware report) and written to a
    file of the run folder."""

    def __init__(self, path: Path):
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.file = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s:%(name)s:%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.file.emit(record)

    def close(self) -> None:
        self.file.close()
        super().close()


@contextlib.contextmanager
def _nncf_log_to(path: Path):
    """NNCF's log records also go into `path` (and into the returned handler) while the block runs, and not to
    stdout through NNCF's own handler; handlers others put there (the CLI's routing) keep theirs."""
    from nncf.common.logging import logger as nncf_logging

    log = nncf_logging.nncf_logger
    captured = _Captured(path)
    own = nncf_logging.stdout_handler if nncf_logging.stdout_handler in log.handlers else None
    level = log.level
    if own is not None:
        log.removeHandler(own)
    log.addHandler(captured)
    log.setLevel(min(level or logging.INFO, logging.INFO))  # the accuracy-aware report is logged at INFO
    try:
        yield captured
    finally:
        log.removeHandler(captured)
        log.setLevel(level)
        captured.close()
        if own is not None:
            log.addHandler(own)


_REVERTED = re.compile(r"^(\d+) out of (\d+) were reverted back to the floating-point precision:")
_METRIC = re.compile(r"^Metric of (\w+) model: ([-\d.eE+]+)$")
_TOTAL = re.compile(r"^Total number of quantized operations in the model: (\d+)")


def accuracy_restorer_report(messages: list[str]) -> dict:
    """What NNCF's accuracy-aware loop logged: its metric of the FP32 (`initial`) and default INT8 (`quantized`)
    models, the operations it reverted to floating point (none when the default INT8 model met the drop), and
    whether it reached the drop (`aa_nncf_reached_drop`; when it removed every quantizer it lists none, and
    `aa_kept_fp32_count` is then every quantized operation)."""
    out: dict = {"aa_kept_fp32": [], "aa_kept_fp32_count": 0, "aa_nncf_reached_drop": True}
    listed = False
    for msg in messages:
        if m := _METRIC.match(msg):
            out.setdefault(f"aa_nncf_{m[1]}_metric", float(m[2]))
        elif m := _TOTAL.match(msg):
            out["aa_quantized_ops"] = int(m[1])
        elif m := _REVERTED.match(msg):
            names = [line.strip() for line in msg.splitlines()[1:] if line.strip()]
            out |= {"aa_kept_fp32": names, "aa_kept_fp32_count": int(m[1]), "aa_quantized_ops": int(m[2])}
            listed = True
        elif "could not achieve the required accuracy drop" in msg:
            out["aa_nncf_reached_drop"] = False
    if not out["aa_nncf_reached_drop"] and not listed:  # NNCF lists nothing when it removed every quantizer
        out |= {"aa_kept_fp32": None, "aa_kept_fp32_count": out.get("aa_quantized_ops")}
    return out


def validation_accuracy(model, items: list) -> float:
    """Top-1 of an IR or `ov.Model` over (input, label) items with `_validation_fn`, compiled at f32 as NNCF
    compiles the models it validates."""
    return _validation_fn(compile_model(model, "f32"), items)[0]


@register_engine
class OpenVINOEngine(Engine):
    name = "openvino"
    suffix = ".xml"
    description = "OpenVINO IR, INT8 by NNCF"
    label = "OpenVINO (NNCF)"
    calibrate_methods = RANGE_ESTIMATORS
    options = frozenset({"algo", "subset_size", "preset", "fast_bias_correction", "max_drop", "drop_type", "seed",
                         "calibrate_method", "ranking_subset_size", "overflow_fix", "calibration_batch"})
    hints = {"reduce_range": "NNCF's counterpart is --overflow-fix"}

    def export(self, model, out: Path) -> Path:
        from calib.core.export import save_ir, to_openvino

        return save_ir(to_openvino(model), out / "fp32.xml")

    def quantize(self, fp32: Path, items: list[np.ndarray], spec: QuantizeSpec, out: Path,
                 validation: LabeledImages | None = None,
                 contract: InputContract | None = None) -> tuple[Path, dict]:
        from calib.core.data import require_role
        from calib.core.export import save_ir

        out.mkdir(parents=True, exist_ok=True)
        with _quiet_torch_probe(), _nncf_log_to(out / "nncf.log") as log:
            import nncf
            from nncf.quantization.advanced_parameters import (
                AdvancedAccuracyRestorerParameters,
                AdvancedQuantizationParameters,
            )
            from nncf.quantization.range_estimator import RangeEstimatorParametersSet

            preset = option_value(spec.preset or "performance")
            estimator = option_value(spec.calibrate_method or "nncf")
            overflow = option_value(spec.overflow_fix or "first_layer_only")  # NNCF's defaults, from here on
            fast_bc = True if spec.fast_bias_correction is None else bool(spec.fast_bias_correction)
            batch = int(items[0].shape[0])
            advanced = AdvancedQuantizationParameters(
                overflow_fix=nncf.OverflowFix(overflow),
                activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX if estimator == "minmax"
                else None,
                batchwise_statistics=True if batch > 1 else None)  # NNCF: keep the batch axis, per-image statistics
            common = dict(preset=nncf.QuantizationPreset(preset), target_device=nncf.TargetDevice.CPU,
                          subset_size=len(items), fast_bias_correction=fast_bc)
            record = {"algo": option_value(spec.algo), "preset": preset,
                      "activations": "symmetric" if preset == "performance" else "asymmetric",
                      "calibrate_method": estimator, "overflow_fix": overflow, "fast_bias_correction": fast_bc,
                      "target_device": "CPU", "calibration_batch": batch, "nncf": nncf.__version__,
                      "nncf_log": str(out / "nncf.log")}
            model = read_model(fp32)
            if batch > 1:
                model = _any_batch(model)
            t0 = time.perf_counter()
            if spec.algo == "default":
                q = nncf.quantize(model, nncf.Dataset(items), advanced_parameters=advanced, **common)
            else:
                if validation is None:
                    raise CalibError("accuracy-aware quantization needs validation images")
                require_role(validation, ("validation",), "accuracy-aware validation data")
                ranking = min(spec.ranking_subset_size or len(validation), len(validation))
                val_items = validation_items(validation, contract)
                max_drop = 0.01 if spec.max_drop is None else float(spec.max_drop)
                drop_type = option_value(spec.drop_type or "absolute")
                q = nncf.quantize_with_accuracy_control(
                    model, nncf.Dataset(items), nncf.Dataset(val_items), _validation_fn, max_drop=max_drop,
                    drop_type=nncf.DropType(drop_type), advanced_quantization_parameters=advanced,
                    advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                        ranking_subset_size=ranking), **common)
                record |= {"max_drop": max_drop, "drop_type": drop_type, "ranking_subset_images": ranking,
                           "validation_images": len(val_items), "validation_role": validation.role}
            record["quantize_seconds"] = round(time.perf_counter() - t0, 2)
        int8 = save_ir(q, out / "int8.xml")
        if spec.algo != "default":
            fp32_acc, int8_acc = validation_accuracy(fp32, val_items), validation_accuracy(int8, val_items)
            record |= {"aa_fp32_validation_accuracy": fp32_acc, "aa_int8_validation_accuracy": int8_acc,
                       "aa_validation_drop": round(fp32_acc - int8_acc, 6),
                       **accuracy_restorer_report(log.messages)}
        return int8, record

    def scores(self, model, x: np.ndarray, batch: int = 50) -> tuple[np.ndarray, float]:
        scores, fps, _ = scores_ov(model, x, batch)
        return scores, fps

    def throughput_runner(self, model, protocol: Protocol) -> Runner:
        compiled = compile_model(model, "f32", "THROUGHPUT", protocol.batch, protocol.n_threads,
                                 protocol.n_requests, protocol.input_shape)
        return QueueRunner(compiled, protocol.n_requests, protocol.batch)

    def latency_step(self, model, protocol: Protocol) -> Callable[[], Any]:
        import openvino as ov

        compiled = compile_model(model, "f32", "LATENCY", 1, protocol.n_threads, chw=protocol.input_shape)
        req = compiled.create_infer_request()
        req.set_input_tensor(ov.Tensor(random_input(1, 0, input_chw(compiled))))
        return req.infer


_PROPERTY = re.compile(r"^\[ INFO \]\s+(?P<key>[A-Z_]+):\s+(?P<value>.+)$", re.M)


def benchmark_app(xml: Path, config: dict[str, str], batch: int, requests: int, seconds: int = 10) -> dict:
    """OpenVINO's own benchmark_app on the same IR with the same device configuration (given to it through
    `-load_config`), batch and number of requests; returns its throughput and the configuration it reports."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.json"
        cfg.write_text(json.dumps({DEVICE: {**config, "PERFORMANCE_HINT_NUM_REQUESTS": str(requests)}}))
        cmd = ["benchmark_app", "-m", str(xml), "-d", DEVICE, "-hint", config["PERFORMANCE_HINT"].lower(),
               "-b", str(batch), "-nireq", str(requests), "-t", str(seconds), "-load_config", str(cfg)]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise CalibError("benchmark_app not found; it comes with the openvino package") from None
    out = run.stdout + run.stderr
    m = re.search(r"Throughput:\s+([\d.]+)\s*FPS", out)
    if not m:
        raise CalibError(f"benchmark_app gave no throughput for {xml}: {out.strip()[-300:]}")
    seen = {k: v.strip() for k, v in _PROPERTY.findall(out) if k in CONFIG_KEYS}
    if "INFERENCE_PRECISION_HINT" in seen:
        seen["INFERENCE_PRECISION_HINT"] = _precision_name(seen["INFERENCE_PRECISION_HINT"])
    if "PERFORMANCE_HINT" in seen:
        seen["PERFORMANCE_HINT"] = seen["PERFORMANCE_HINT"].split(".")[-1]
    nreq = re.search(r"(\d+) inference requests", out)
    return {"fps": float(m.group(1)), "config": seen, "requests": int(nreq.group(1)) if nreq else None,
            "command": " ".join(cmd[:-2])}
