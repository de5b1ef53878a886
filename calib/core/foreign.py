"""Model files no code here defines: ONNX (.onnx), OpenVINO IR (.xml), TorchScript (.pt, .ts) and `torch.export`
archives (.pt2).

`open_model` reads a file's kind, input shape (C, H, W) and number of outputs; `check` holds them against an
`InputContract` and says in one line where they disagree; `to_ir` and `to_onnx` give the engines their file
(PyTorch files through `ov.convert_model` and `torch.onnx.export`), with the contract written into the file's
metadata. `load_module` gives the PyTorch module itself; only a `torch.export` archive keeps what data-free
inversion needs (its batch-norm calls and running statistics, read without running pickled code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from calib.core.contract import InputContract, write_to_ir, write_to_onnx
from calib.core.errors import CalibError

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
EXPORT_SUFFIX = ".pt2"


@dataclass(frozen=True)
class ForeignModel:
    """A model file and what it says about itself; `input_shape` is (C, H, W) with None where the file leaves a
    dimension open (always for TorchScript, which declares no shapes), `classes` the output size, None until
    known (TorchScript: found by one forward at the contract's size in `check`)."""

    path: Path
    kind: str  # "onnx", "openvino", "torchscript" or "export"
    input_shape: tuple[int | None, int | None, int | None]
    classes: int | None


def _dims(partial) -> list[int | None]:
    return [None if d.is_dynamic else d.get_length() for d in partial]


def open_model(path: Path) -> ForeignModel:
    """What a model file is and what shapes it declares; one line for a file of another kind."""
    path = Path(path)
    if not path.is_file():
        raise CalibError(f"model file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".xml":
        from calib.core.engines.openvino import read_model

        model = read_model(path)
        if len(model.inputs) != 1 or model.input(0).get_partial_shape().rank.get_length() != 4:
            raise CalibError(f"{path}: calib takes a classifier with one NCHW image input")
        dims, out = _dims(model.input(0).get_partial_shape()), _dims(model.output(0).get_partial_shape())
        return ForeignModel(path, "openvino", tuple(dims[1:]), out[-1])  # type: ignore[arg-type]
    if suffix == ".onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
            raise CalibError(f"{path} is not a readable ONNX file ({type(e).__name__})") from None
        inits = {i.name for i in proto.graph.initializer}
        inputs = [i for i in proto.graph.input if i.name not in inits]
        if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
            raise CalibError(f"{path}: calib takes a classifier with one NCHW image input")

        def dims(value) -> list[int | None]:
            return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

        out = dims(proto.graph.output[0])
        return ForeignModel(path, "onnx", tuple(dims(inputs[0])[1:]), out[-1] if out else None)  # type: ignore[arg-type]
    if suffix in TORCHSCRIPT_SUFFIXES:
        load_torchscript(path)
        return ForeignModel(path, "torchscript", (3, None, None), None)
    if suffix == EXPORT_SUFFIX:
        program = load_export(path)
        inputs = [n for n in program.graph.nodes if n.op == "placeholder"
                  and n.name in program.graph_signature.user_inputs]
        shape = inputs[0].meta["val"].shape if len(inputs) == 1 and "val" in inputs[0].meta else ()
        if len(shape) != 4:
            raise CalibError(f"{path}: calib takes a classifier with one NCHW image input")
        dims = [d if isinstance(d, int) else None for d in shape]
        return ForeignModel(path, "export", tuple(dims[1:]), None)  # type: ignore[arg-type]
    raise CalibError(f"{path} is not ONNX, IR, TorchScript or a torch.export archive (.onnx, .xml, "
                     f"{', '.join(TORCHSCRIPT_SUFFIXES)}, {EXPORT_SUFFIX})")


def load_torchscript(path: Path):
    """A TorchScript module in eval mode; a plain pickle or state dict is refused (nothing in it is run)."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001 - torch raises several types for a file that is not TorchScript
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise CalibError(f"{path} is not ONNX, IR, TorchScript or a torch.export archive ({first})") from None


def load_export(path: Path):
    """A `torch.export` archive's ExportedProgram (graph and tensors; no pickled code is run)."""
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001 - torch raises several types for a file that is not an archive
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise CalibError(f"{path} is not a torch.export archive ({first})") from None


def load_module(model: ForeignModel):
    """The PyTorch module of a TorchScript file or a torch.export archive, in eval mode."""
    if model.kind == "torchscript":
        return load_torchscript(model.path)
    if model.kind == "export":
        return load_export(model.path).module()
    raise CalibError(f"{model.path} is an {model.kind} file, not a PyTorch module")


def _torch_classes(module, contract: InputContract) -> int:
    import torch

    try:
        with torch.no_grad():
            y = module(torch.zeros(1, *contract.shape))
    except Exception as e:  # noqa: BLE001 - a shape mismatch surfaces as any of several errors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise CalibError(f"the model does not take the contract's {contract.input_size[0]}x"
                         f"{contract.input_size[1]} input ({first})") from None
    if not isinstance(y, torch.Tensor) or y.ndim != 2:
        raise CalibError("the model's output is not one (batch, classes) tensor of logits")
    return int(y.shape[1])


def check(model: ForeignModel, contract: InputContract) -> ForeignModel:
    """The model with its output size known, once it agrees with the contract; one line where it does not."""
    c, h, w = model.input_shape
    if c is not None and c != 3:
        raise CalibError(f"the model takes {c} channels; calib feeds 3 (RGB or BGR)")
    ch, cw = contract.input_size
    if (h is not None and h != ch) or (w is not None and w != cw):
        raise CalibError(f"contract says {ch}x{cw} but the model takes {h or '?'}x{w or '?'}")
    classes = model.classes
    if model.kind in ("torchscript", "export"):
        classes = _torch_classes(load_module(model), contract)
    if contract.classes is not None and classes is not None and len(contract.classes) != classes:
        raise CalibError(f"{len(contract.classes)} class names but the model has {classes} outputs")
    return ForeignModel(model.path, model.kind, (3, ch, cw), classes)


def to_ir(model: ForeignModel, contract: InputContract, out: Path) -> Path:
    """The model as an FP32 OpenVINO IR at `out` (batch left dynamic), with the contract in its `rt_info`."""
    import openvino as ov

    if model.kind == "openvino":
        from calib.core.engines.openvino import read_model

        ov_model = read_model(model.path)
    elif model.kind == "onnx":
        ov_model = ov.convert_model(str(model.path))
    elif model.kind == "export":
        ov_model = ov.convert_model(load_export(model.path))
        ov_model.reshape([-1, *contract.shape])  # the archive may leave H and W open
    else:
        import torch

        ov_model = ov.convert_model(load_torchscript(model.path), example_input=torch.zeros(1, *contract.shape),
                                    input=[(-1, *contract.shape)])
    write_to_ir(ov_model, contract)
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(out), compress_to_fp16=False)
    return out


def to_onnx(model: ForeignModel, contract: InputContract, out: Path) -> Path:
    """The model as an FP32 ONNX file at `out` with a dynamic batch, the contract in its `metadata_props`."""
    import shutil
    import warnings

    out.parent.mkdir(parents=True, exist_ok=True)
    if model.kind == "onnx":
        shutil.copyfile(model.path, out)
    elif model.kind in ("torchscript", "export"):
        import torch

        module = load_module(model)
        x = torch.zeros(2, *contract.shape)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and trace notices
            traced = torch.jit.trace(module, x) if not isinstance(module, torch.jit.ScriptModule) else module
            torch.onnx.export(traced, (x,), str(out), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                              dynamo=False)
    else:
        raise CalibError(f"{model.path}: an OpenVINO IR has no ONNX export here; use the openvino engine")
    return write_to_onnx(out, contract)
