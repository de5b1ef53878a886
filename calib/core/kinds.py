"""Which model files calib reads, and which engine reads each kind in each command: stated once, for the code and
for every command's --help alike.

Nothing is imported here, so that `calib --help` can quote these tables without loading a library.

- `quantize` (and `diagnose`, which reads NNCF's quantizers: openvino only): the engine makes the FP32 file it
  quantizes from yours (an IR: OpenVINO reads or converts it; ONNX Runtime takes ONNX, or a PyTorch file
  exported by `torch.onnx.export`).
- `run` (`evaluate`, `benchmark files`): the engine runs your file; PyTorch files go through OpenVINO's converter
  in memory (a `torch.export` archive may also run in PyTorch itself, the engine that writes zoo `.pt2` files).
"""

from __future__ import annotations

from pathlib import Path

SUFFIXES = {".xml": "openvino", ".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript",
            ".pt2": "export"}
NAMES = {"openvino": "OpenVINO IR", "onnx": "ONNX", "torchscript": "TorchScript", "export": "torch.export archive"}
# use -> file kind -> engines that read it, the default first
READERS = {
    "quantize": {"openvino": ("openvino",), "onnx": ("onnxruntime", "openvino"),
                 "torchscript": ("openvino", "onnxruntime"), "export": ("openvino", "onnxruntime")},
    "diagnose": {"openvino": ("openvino",), "onnx": ("openvino",), "torchscript": ("openvino",),
                 "export": ("openvino",)},
    "run": {"openvino": ("openvino",), "onnx": ("onnxruntime", "openvino"), "torchscript": ("openvino",),
            "export": ("pytorch", "openvino")},
}


def kind_of(path: str | Path) -> str | None:
    """The kind of a model file by its suffix ("openvino", "onnx", "torchscript", "export"), None for another."""
    return SUFFIXES.get(Path(path).suffix.lower())


def suffixes(kind: str) -> str:
    return "/".join(s for s, k in SUFFIXES.items() if k == kind)


def readers_text(use: str) -> str:
    """The kinds a command takes and their engines, in words: `.xml: openvino; .onnx: onnxruntime (default) or
    openvino; ...`."""
    parts = []
    for kind, engines in READERS[use].items():
        names = " or ".join(f"{e} (default)" if i == 0 and len(engines) > 1 else e for i, e in enumerate(engines))
        via = " via OpenVINO's converter" if kind in ("torchscript", "export") and engines[0] == "openvino" else ""
        parts.append(f"{suffixes(kind)} ({NAMES[kind]}): {names}{via}")
    return "; ".join(parts)


def refuse_text(path: str | Path, use: str) -> str:
    """The line for a file of no kind this use takes."""
    return (f"{path} is not a model file calib reads here; it takes {', '.join(SUFFIXES)} "
            f"({readers_text(use)})")
