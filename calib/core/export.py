"""PyTorch -> OpenVINO IR and ONNX, FP32 kept FP32, static batch 1 or batch-dynamic."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from calib.core.data import IMAGE_SIZE


def example_input(batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, 3, IMAGE_SIZE, IMAGE_SIZE)


def to_openvino(model: nn.Module, dynamic_batch: bool = False):
    """Convert an eval-mode module to an `ov.Model` with input shape [1|?, 3, 32, 32]."""
    import openvino as ov

    shape = [-1 if dynamic_batch else 1, 3, IMAGE_SIZE, IMAGE_SIZE]
    with torch.no_grad(), warnings.catch_warnings():
        # OpenVINO's PyTorch frontend traces with torch.jit, which torch marks deprecated on every call
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace", FutureWarning)
        ov_model = ov.convert_model(model.eval(), example_input=example_input(), input=[shape])
    return ov_model


def save_ir(ov_model, path: Path) -> Path:
    """Write `.xml` + `.bin` without FP16 compression, so FP32 stays FP32."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


def to_onnx(model: nn.Module, path: Path, dynamic_batch: bool = True) -> Path:
    """Export with torch's exporter (TorchScript path: stable opset, no extra dependencies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with torch.no_grad():
        torch.onnx.export(model.eval(), (example_input(),), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def fixed_batch(path: str | Path) -> int | None:
    """The batch size an ONNX file's input is fixed to, or None when it takes any batch (and for other files:
    OpenVINO reshapes an IR's batch when it compiles it)."""
    if not str(path).endswith(".onnx") or not Path(path).is_file():
        return None
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - a damaged file is reported where it is read
        return None
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if not inputs or not inputs[0].type.tensor_type.shape.dim:
        return None
    dim = inputs[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None
