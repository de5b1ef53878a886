"""Speed under the one protocol of `calib.core.engines`: a model is timed by its engine, a file by the engine
that reads it.

Throughput: `Protocol.requests` concurrent requests of `Protocol.batch` images; latency: synchronous batch-1
requests. Every setting goes into the returned record.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from calib.core.engines import Engine, Protocol, Runner, engine_for_file, get_engine


def _summary(values: list[float], unit: str) -> dict:
    v = np.asarray(values)
    return {f"{unit}_median": round(float(np.median(v)), 2), f"{unit}_min": round(float(v.min()), 2),
            f"{unit}_max": round(float(v.max()), 2), f"{unit}_runs": [round(float(x), 2) for x in v]}


def _latency_run(step: Callable[[], Any], protocol: Protocol) -> float:
    """Synchronous steps for the fixed duration; returns steps per second."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < protocol.duration_s:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


def _throughput_run(runner: Runner, seconds: float) -> int:
    """Keep every request busy for `seconds`, then wait for the last ones; returns requests started."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        runner.start()
        n += 1
    runner.wait_all()
    return n


def time_model(engine: Engine | str, model, protocol: Protocol = Protocol()) -> dict:
    """Throughput and latency of `model` (a file of the engine, or what the engine opens) under `protocol`."""
    engine = get_engine(engine) if isinstance(engine, str) else engine
    runner = engine.throughput_runner(model, protocol)
    try:
        _throughput_run(runner, protocol.warmup_s)
        t_runs = []
        for _ in range(protocol.repeats):
            t0 = time.perf_counter()
            n = _throughput_run(runner, protocol.duration_s)
            t_runs.append(n * protocol.batch / (time.perf_counter() - t0))
        info = dict(runner.info)
    finally:
        runner.close()
    step = engine.latency_step(model, protocol)
    _latency_run(step, Protocol(duration_s=protocol.warmup_s))
    l_runs = [_latency_run(step, protocol) for _ in range(protocol.repeats)]
    return {"engine": engine.name, **_summary(t_runs, "fps_throughput"), **_summary(l_runs, "fps_latency"),
            "throughput_batch": protocol.batch, "throughput_requests": protocol.n_requests,
            "threads": protocol.n_threads, "latency_batch": 1, **info, "protocol": asdict(protocol),
            "protocol_text": protocol.describe()}


def ratio_interval(base: list[float], other: list[float], confidence: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> dict:
    """`other / base` from paired repeats (repeat i of each ran back to back): the median of the per-repeat
    ratios and a bootstrap interval over the repeats (seeded); a noisy machine shows as a wide interval."""
    a, b = np.asarray(base, float), np.asarray(other, float)
    if len(a) != len(b) or not len(a):
        raise ValueError("paired repeats: give as many runs of each, at least one")
    ratios = b / a
    rng = np.random.default_rng(seed)
    boot = np.median(ratios[rng.integers(0, len(ratios), (resamples, len(ratios)))], axis=1)
    tail = (1 - confidence) / 2
    return {"ratio": round(float(np.median(ratios)), 4), "ratio_low": round(float(np.quantile(boot, tail)), 4),
            "ratio_high": round(float(np.quantile(boot, 1 - tail)), 4),
            "ratio_runs": [round(float(r), 4) for r in ratios]}


def interleaved(models: dict[str, tuple[Engine | str, Any]], protocol: Protocol = Protocol()) -> dict[str, list[float]]:
    """Throughput of several models timed in turns (A B A B ...): every model is compiled and warmed up first,
    then repeat i of each runs back to back, so a slow spell of the machine hits all of them alike. Returns
    each name's images/s per repeat."""
    runners = {}
    try:
        for name, (engine, model) in models.items():
            engine = get_engine(engine) if isinstance(engine, str) else engine
            runners[name] = engine.throughput_runner(model, protocol)
            _throughput_run(runners[name], protocol.warmup_s)
        runs: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(protocol.repeats):
            for name, runner in runners.items():
                t0 = time.perf_counter()
                n = _throughput_run(runner, protocol.duration_s)
                runs[name].append(n * protocol.batch / (time.perf_counter() - t0))
        return runs
    finally:
        for runner in runners.values():
            runner.close()


def bench_file(path: str | Path, protocol: Protocol = Protocol()) -> dict:
    """Throughput and latency of a model file (.xml, .onnx, .pt2, ...) with its engine, under `protocol`."""
    return time_model(engine_for_file(path), path, protocol)


def model_size_bytes(path: Path) -> int:
    """On-disk size: an IR's .xml + .bin, or a single file (ONNX, .pt2)."""
    path = Path(path)
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(f.stat().st_size for f in files if f.exists())


def model_fingerprint(path: Path) -> str:
    """sha256 of what a model file computes: an IR's layers (type, attributes, ports), edges and weights (.bin),
    without the names and metadata that differ between equal models (NNCF's options in `rt_info`, generated
    node names); any other file's bytes. Equal fingerprints time as one model."""
    import xml.etree.ElementTree as ET

    path = Path(path)
    h = hashlib.sha256()
    if path.suffix != ".xml":
        h.update(path.read_bytes())
        return h.hexdigest()
    net = ET.parse(path).getroot()
    for layer in sorted(net.iter("layer"), key=lambda e: int(e.get("id", "0"))):
        h.update(f"{layer.get('id')}|{layer.get('type')}|{layer.get('version')}|".encode())
        data = layer.find("data")
        if data is not None:
            h.update(json.dumps(sorted(data.attrib.items())).encode())
        for tag in ("input", "output"):
            block = layer.find(tag)
            for port in block.findall("port") if block is not None else []:
                dims = [d.text for d in port.iter("dim")]
                h.update(f"{tag}:{port.get('id')}:{port.get('precision')}:{dims}|".encode())
    edges = net.find("edges")
    for e in edges if edges is not None else []:
        h.update(json.dumps(sorted(e.attrib.items())).encode())
    h.update(path.with_suffix(".bin").read_bytes())
    return h.hexdigest()


def speed_fields(prefix: str, b: dict) -> dict:
    """Median, min, max, relative spread ((max - min) / median) and the runs, of throughput and latency."""
    out = {}
    for name, unit in (("fps", "fps_throughput"), ("latency_fps", "fps_latency")):
        med = b[f"{unit}_median"]
        out |= {f"{prefix}_{name}": med, f"{prefix}_{name}_min": b[f"{unit}_min"],
                f"{prefix}_{name}_max": b[f"{unit}_max"],
                f"{prefix}_{name}_spread": round((b[f"{unit}_max"] - b[f"{unit}_min"]) / med, 4) if med else None,
                f"{prefix}_{name}_runs": b[f"{unit}_runs"]}
    return out
