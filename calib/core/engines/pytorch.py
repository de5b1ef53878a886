"""PyTorch itself as the FP32 baseline (no INT8): a `torch.export` program file (`.pt2`, batch-dynamic).

Timing and prediction accept the file or an `nn.Module` already in memory; inference runs under
`torch.inference_mode`. Throughput requests run on worker threads, the cores shared among them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from calib.core.engines import IMAGE_SHAPE, Engine, Protocol, Runner, ThreadPoolRunner, random_input
from calib.core.engines.registry import register_engine
from calib.core.errors import CalibError

_threads_lock = threading.Lock()


def load_module(model):
    """An eval-mode module from an `nn.Module` or a `.pt2` file written by `export`."""
    import torch

    if isinstance(model, torch.nn.Module):
        return model.eval()
    if not Path(model).is_file():
        raise CalibError(f"model file {model} does not exist")
    try:
        return torch.export.load(str(model)).module()
    except Exception as e:  # torch raises several types for damaged archives
        raise CalibError(f"{model} is not a readable torch.export file ({type(e).__name__})") from None


class _TorchRunner(ThreadPoolRunner):
    """Worker threads share torch's one intra-op pool: it is sized to the threads per request for the run (as
    each ONNX Runtime session is) and restored on close."""

    def __init__(self, calls: list, threads: int, info: dict):
        import torch

        with _threads_lock:
            self._saved = torch.get_num_threads()
            torch.set_num_threads(threads)
        super().__init__(calls, info)

    def close(self) -> None:
        import torch

        super().close()
        torch.set_num_threads(self._saved)


@register_engine
class PyTorchEngine(Engine):
    name = "pytorch"
    suffix = ".pt2"
    int8 = False
    description = "PyTorch eager FP32 (torch.export program)"

    def export(self, model, out: Path) -> Path:
        import torch

        out.mkdir(parents=True, exist_ok=True)
        batch = torch.export.Dim("batch", min=1, max=65536)
        with torch.no_grad():
            program = torch.export.export(model.eval(), (torch.zeros(2, *IMAGE_SHAPE),),
                                          dynamic_shapes=({0: batch},))
        path = out / "fp32.pt2"
        torch.export.save(program, str(path))
        return path

    def scores(self, model, x: np.ndarray, batch: int = 50) -> tuple[np.ndarray, float]:
        import torch

        module = load_module(model)
        n = len(x)
        padded = np.zeros((n + (-n) % batch, *x.shape[1:]), np.float32)  # a file may take that batch only
        padded[:n] = x
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = np.concatenate([module(torch.from_numpy(padded[s : s + batch])).float().numpy()
                                  for s in range(0, len(padded), batch)])
        return out[:n], n / (time.perf_counter() - t0)

    def throughput_runner(self, model, protocol: Protocol) -> Runner:
        import torch

        module = load_module(model)

        def call(x: torch.Tensor) -> Callable[[], Any]:
            def run():
                with torch.inference_mode():
                    return module(x)
            return run

        calls = [call(torch.from_numpy(random_input(protocol.batch, i, protocol.input_shape)))
                 for i in range(protocol.n_requests)]
        return _TorchRunner(calls, protocol.threads_per_request, {"torch_threads": protocol.threads_per_request})

    def latency_step(self, model, protocol: Protocol) -> Callable[[], Any]:
        import torch

        module = load_module(model)
        torch.set_num_threads(protocol.n_threads)
        x = torch.from_numpy(random_input(1, 0, protocol.input_shape))

        def run():
            with torch.inference_mode():
                return module(x)
        return run
