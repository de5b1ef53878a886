"""Speed under the one protocol of `calibration.engines`: a model file is timed by the engine that reads it.

Throughput: `Protocol.requests` concurrent requests of `Protocol.batch` images; latency: synchronous batch-1
requests. Every setting goes into the returned record.
"""

from __future__ import annotations

from pathlib import Path

from calibration.engines import Protocol, engine_for_file, measure

__all__ = ["Protocol", "bench_file", "model_size_bytes"]


def bench_file(path: str | Path, protocol: Protocol = Protocol()) -> dict:
    """Throughput and latency of a model file (.xml, .onnx, .pt2, ...) with its engine, under `protocol`."""
    return measure(engine_for_file(path), path, protocol)


def model_size_bytes(path: Path) -> int:
    """On-disk size: an IR's .xml + .bin, or a single file (ONNX, .pt2)."""
    path = Path(path)
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(f.stat().st_size for f in files if f.exists())
