"""Speed under the one protocol of `calibration.engines`: a model file is timed by the engine that reads it.

Throughput: `Protocol.requests` concurrent requests of `Protocol.batch` images; latency: synchronous batch-1
requests. Every setting goes into the returned record.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from calibration.engines import Protocol, engine_for_file, measure

__all__ = ["Protocol", "bench_file", "model_fingerprint", "model_size_bytes", "speed_fields"]


def bench_file(path: str | Path, protocol: Protocol = Protocol()) -> dict:
    """Throughput and latency of a model file (.xml, .onnx, .pt2, ...) with its engine, under `protocol`."""
    return measure(engine_for_file(path), path, protocol)


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
