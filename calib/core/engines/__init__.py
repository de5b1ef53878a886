"""Inference engines: one module and one `@register_engine` each, all behind the same small interface.

An engine exports an FP32 model file, quantizes it from calibration items (or says it cannot), predicts
the classes of a batch of images, and opens a model for timing. The timing protocol lives here and the one
timing loop in `calib.core.speed`, so every engine is timed the same way:

- throughput: `Protocol.requests` requests of `Protocol.batch` images kept in flight (a new one starts as
  soon as one finishes), the cores shared among them;
- latency: one synchronous batch-1 request at a time on all cores.

Both: warm-up, then `repeats` runs of a fixed duration, median and spread; inputs are prepared first, at the
protocol's `input_shape` where it gives one (a model whose file leaves its height and width open).

The registry (`register_engine`, `get_engine`, `list_engines`, `engine_for_file`) lives in
`calib.core.engines.registry`, which imports no engine, so that `calib.core.spec` can look engines up without
importing them; it is re-exported here.
"""

from __future__ import annotations

import os
import queue
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from calib.core.engines.registry import engine_for_file, get_engine, list_engines, register_engine
from calib.core.errors import CalibError, OptionError

if TYPE_CHECKING:
    from calib.core.contract import InputContract
    from calib.core.data import LabeledImages
    from calib.core.spec import QuantizeSpec

IMAGE_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class Protocol:
    """How every engine is timed; see the module docstring."""

    warmup_s: float = 1.0
    duration_s: float = 3.0
    repeats: int = 3
    threads: int | None = None  # None: all cores
    batch: int = 1  # images per throughput request
    requests: int | None = None  # throughput requests in flight; None: one per thread
    input_shape: tuple[int, int, int] | None = None  # (C, H, W) of the inputs; None: the model's own, else the zoo's

    @property
    def n_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    @property
    def n_requests(self) -> int:
        return self.requests or self.n_threads

    @property
    def threads_per_request(self) -> int:
        return max(1, self.n_threads // self.n_requests)

    def describe(self) -> str:
        """One line for tables: which number is which."""
        return (f"throughput: {self.n_requests} requests of batch {self.batch} in flight on {self.n_threads} threads; "
                f"latency: one synchronous batch-1 request on {self.n_threads} threads; "
                f"{self.warmup_s:g} s warm-up, {self.repeats} x {self.duration_s:g} s, median")


class Runner(ABC):
    """A model opened for throughput: `start` one request (blocks while all are busy), `wait_all`."""

    info: dict = {}

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def wait_all(self) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional
        pass


class ThreadPoolRunner(Runner):
    """The async queue for engines without one: each of N slots owns a call (its own session and input) and
    runs it on its own worker thread; `start` waits for a free slot, as OpenVINO's AsyncInferQueue does."""

    def __init__(self, calls: list[Callable[[], Any]], info: dict | None = None):
        self.calls, self.info = calls, info or {}
        self._idle: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(len(calls)):
            self._idle.put(i)
        self._pool = ThreadPoolExecutor(len(calls), thread_name_prefix="infer")
        self._error: BaseException | None = None

    def _run(self, slot: int) -> None:
        try:
            self.calls[slot]()
        except BaseException as e:  # noqa: BLE001 - re-raised in wait_all
            self._error = e
        finally:
            self._idle.put(slot)

    def start(self) -> None:
        self._pool.submit(self._run, self._idle.get())

    def wait_all(self) -> None:
        slots = [self._idle.get() for _ in self.calls]
        for s in slots:
            self._idle.put(s)
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Engine(ABC):
    """The interface every engine implements; register an instance's class with `@register_engine`."""

    name: ClassVar[str]
    suffix: ClassVar[str]  # model file suffix, e.g. ".xml"
    int8: ClassVar[bool] = True  # False: FP32 baseline only
    description: ClassVar[str] = ""
    label: ClassVar[str] = ""  # how errors name the engine, e.g. "ONNX Runtime"
    # the options (`calib.core.spec.QUANTIZATION_OPTIONS`) this engine has; `check_options` refuses any other given
    options: ClassVar[frozenset[str]] = frozenset()
    hints: ClassVar[dict[str, str]] = {}  # a refused field -> what this engine has instead
    calibrate_methods: ClassVar[tuple[str, ...]] = ()  # the range estimators it has, its default first

    @abstractmethod
    def export(self, model, out: Path) -> Path:
        """Write the eval-mode `nn.Module` as this engine's FP32 file `out/fp32<suffix>` and return its path."""

    def check_options(self, spec: QuantizeSpec) -> None:
        """Refuse, before any work is done and in one line, every option given that this engine does not have
        (named as the user typed it); engines add checks of values."""
        from calib.core.spec import option_text, option_value

        if not self.int8:
            raise CalibError(f"engine {self.name} has no INT8 quantization (it is an FP32 baseline)")
        foreign = {k: option_text(k, v) for k, v in spec.given().items() if k not in self.options}
        if foreign:
            hints = "".join(f"; {self.hints[k]}" for k in foreign if k in self.hints)
            raise OptionError(f"{self.label or self.name} has no {', '.join(foreign.values())}: leave "
                             f"{'it' if len(foreign) == 1 else 'them'} out{hints}")
        method = option_value(spec.calibrate_method or self.calibrate_methods[0]) if self.calibrate_methods else None
        if method is not None and method not in self.calibrate_methods:
            raise OptionError(f"{self.label or self.name} has no --calibrate-method {method}: it calibrates with "
                             f"{', '.join(self.calibrate_methods)}")

    def quantize(self, fp32: Path, items: list[np.ndarray], spec: QuantizeSpec, out: Path,
                 validation: LabeledImages | None = None,
                 contract: InputContract | None = None) -> tuple[Path, dict]:
        """INT8 file from the FP32 file and batch-1 calibration tensors; returns (path, parameters used)."""
        raise CalibError(f"engine {self.name} has no INT8 quantization (it is an FP32 baseline)")

    @abstractmethod
    def scores(self, model, x: np.ndarray, batch: int = 50) -> tuple[np.ndarray, float]:
        """The model's outputs (N, classes) for every row of the normalized NCHW float32 `x`, and inference
        images/s (compilation and input preparation excluded)."""

    def predict(self, model, x: np.ndarray, batch: int = 50) -> tuple[np.ndarray, float]:
        """Class of every row of `x` (the largest score), and inference images/s."""
        scores, fps = self.scores(model, x, batch)
        return np.asarray(scores).argmax(1).astype(np.int64), fps

    @abstractmethod
    def throughput_runner(self, model, protocol: Protocol) -> Runner:
        """The model opened for `protocol.n_requests` concurrent requests of `protocol.batch` images."""

    @abstractmethod
    def latency_step(self, model, protocol: Protocol) -> Callable[[], Any]:
        """One synchronous batch-1 inference on all `protocol.n_threads` threads."""

    def owns(self, path: str | Path) -> bool:
        return str(path).endswith(self.suffix)


__all__ = ["Engine", "Protocol", "Runner", "ThreadPoolRunner", "engine_for_file", "get_engine", "list_engines",
           "random_input", "register_engine", "static_chw"]


def random_input(batch: int, seed: int = 0, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Random normal inputs of `shape` (C, H, W; None: the zoo's `IMAGE_SHAPE`)."""
    return np.random.default_rng(seed).standard_normal((batch, *(shape or IMAGE_SHAPE))).astype(np.float32)


def static_chw(dims) -> tuple[int, ...] | None:
    """(C, H, W) from a model's declared input dimensions (ints, with None, 0, -1 or strings where open);
    None unless all three are fixed numbers, in which case callers fall back to `IMAGE_SHAPE`."""
    dims = list(dims)
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        return None
    return tuple(dims[1:])


from calib.core.engines import onnxruntime, openvino, pytorch  # noqa: E402,F401
