"""Speed under one protocol: warm-up, fixed duration, >= 3 repeats, median and spread; inputs prepared first.

Throughput: asynchronous requests under the THROUGHPUT hint. Latency: synchronous batch-1 requests under
the LATENCY hint. PyTorch: batch 1, eval mode, no grad. Every setting goes into the returned record.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Protocol:
    warmup_s: float = 1.0
    duration_s: float = 3.0
    repeats: int = 3
    threads: int | None = None  # None: all cores


def _summary(values: list[float], unit: str) -> dict:
    v = np.asarray(values)
    return {f"{unit}_median": round(float(np.median(v)), 2), f"{unit}_min": round(float(v.min()), 2),
            f"{unit}_max": round(float(v.max()), 2), f"{unit}_runs": [round(float(x), 2) for x in v]}


def _timed_loop(step, protocol: Protocol) -> float:
    """Run `step` for warm-up then for the fixed duration; returns iterations per second."""
    t_end = time.perf_counter() + protocol.warmup_s
    while time.perf_counter() < t_end:
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < protocol.duration_s:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


def bench_torch(model, protocol: Protocol = Protocol()) -> dict:
    import torch

    if protocol.threads:
        torch.set_num_threads(protocol.threads)
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        runs = [_timed_loop(lambda: model(x), protocol) for _ in range(protocol.repeats)]
    return {"engine": "pytorch", **_summary(runs, "fps_latency"), "protocol": asdict(protocol)}


def bench_openvino(model, precision: str = "f32", protocol: Protocol = Protocol()) -> dict:
    """Async THROUGHPUT and sync LATENCY figures for an `ov.Model` or `.xml` (batch 1)."""
    import openvino as ov

    from calibration.evaluate import compile_model

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    tput = compile_model(model, precision, "THROUGHPUT", batch=1, threads=protocol.threads)
    nreq = tput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    queue = ov.AsyncInferQueue(tput, nreq)
    for req in queue:  # inputs set once: the loop measures inference, not copies
        req.set_input_tensor(ov.Tensor(x))

    def one_round():
        for _ in range(nreq):
            queue.start_async()
        queue.wait_all()

    t_runs = [nreq * _timed_loop(one_round, protocol) for _ in range(protocol.repeats)]
    lat = compile_model(model, precision, "LATENCY", batch=1, threads=protocol.threads)
    req = lat.create_infer_request()
    req.set_input_tensor(ov.Tensor(x))
    l_runs = [_timed_loop(req.infer, protocol) for _ in range(protocol.repeats)]
    return {"engine": "openvino", **_summary(t_runs, "fps_throughput"), **_summary(l_runs, "fps_latency"),
            "infer_requests": nreq, "precision_hint": precision, "protocol": asdict(protocol)}


def bench_file(path: str | Path, protocol: Protocol = Protocol()) -> dict:
    """Time an IR with OpenVINO or an .onnx file with ONNX Runtime, under the same protocol."""
    if str(path).endswith(".onnx"):
        from calibration.ort import bench_onnx

        return bench_onnx(Path(path), protocol)
    return bench_openvino(path, "f32", protocol)


def benchmark_app_fps(xml: Path, seconds: int = 10, hint: str = "throughput", batch: int = 1) -> float:
    """OpenVINO's own benchmark_app throughput for the same IR, as a reference for our measurements."""
    cmd = ["benchmark_app", "-m", str(xml), "-d", "CPU", "-hint", hint, "-t", str(seconds), "-b", str(batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    m = re.search(r"Throughput:\s+([\d.]+)\s*FPS", out)
    if not m:
        from calibration.errors import CalibError

        raise CalibError(f"benchmark_app gave no throughput for {xml}: {out[-300:]}")
    return float(m.group(1))


def model_size_bytes(path: Path) -> int:
    """On-disk size: an IR's .xml + .bin, or a single file (ONNX)."""
    path = Path(path)
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(f.stat().st_size for f in files if f.exists())
