"""Model files no code here defines: ONNX (.onnx), OpenVINO IR (.xml), TorchScript (.pt, .ts) and `torch.export`
archives (.pt2).

`open_model` reads a file's kind, input name, shape (C, H, W), batch and number of outputs from the file itself;
`check` holds them against an `InputContract` and says in one line where they disagree; `to_ov_model`, `to_ir`
and `to_onnx` give the engines their model (PyTorch files through `ov.convert_model` and `torch.onnx.export`),
with the contract written into the file's metadata. `load_module` gives the PyTorch module itself; only a
`torch.export` archive keeps what data-free inversion needs (its batch-norm calls and running statistics, read
without running pickled code).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from calib.core.contract import InputContract, write_to_ir, write_to_onnx
from calib.core.errors import CalibError


@dataclass(frozen=True)
class ForeignModel:
    """A model file and what it says about itself: `input_shape` is (C, H, W) with None where the file leaves a
    dimension open (always H and W for TorchScript, which declares no shapes), `classes` the output size, None
    until known (PyTorch files: found by one forward at the contract's size in `check`), `input_name` the image
    input as the file names it, and `batch` the batch it is fixed to (None: any)."""

    path: Path
    kind: str  # "onnx", "openvino", "torchscript" or "export" (`calib.core.kinds`)
    input_shape: tuple[int | None, int | None, int | None]
    classes: int | None
    input_name: str = "input"
    batch: int | None = None
    fp16_weights: bool = False  # an IR saved with FP16 compression: its weights are FP16, not FP32

    @property
    def declares_input(self) -> bool:
        """Whether the file fixes C, H and W itself (no contract needed to feed it)."""
        return all(d is not None for d in self.input_shape)


def _dims(partial) -> list[int | None]:
    return [None if d.is_dynamic else d.get_length() for d in partial]


def _one_image_input(path: Path, names: list[str], rank: int | None) -> None:
    if len(names) != 1 or rank != 4:
        found = f"{len(names)} inputs ({', '.join(names)})" if len(names) != 1 else f"a rank-{rank} input"
        raise CalibError(f"{path}: calib takes a classifier with one NCHW image input, and this one has {found}")


def open_model(path: Path) -> ForeignModel:
    """What a model file is and what it declares (input name, shape and batch, outputs), read from the file
    itself; one line for a file of another kind."""
    from calib.core.kinds import SUFFIXES, kind_of

    path = Path(path)
    if not path.is_file():
        raise CalibError(f"model file {path} does not exist")
    kind = kind_of(path)
    if kind == "openvino":
        from calib.core.engines.openvino import read_model

        model = read_model(path)
        shape = model.input(0).get_partial_shape() if len(model.inputs) == 1 else None
        _one_image_input(path, [i.get_any_name() for i in model.inputs],
                         shape.rank.get_length() if shape is not None and shape.rank.is_static else None)
        dims, out = _dims(shape), _dims(model.output(0).get_partial_shape())
        fp16 = any(op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "f16"
                   for op in model.get_ops())
        return ForeignModel(path, kind, tuple(dims[1:]), out[-1], model.input(0).get_any_name(), dims[0],  # type: ignore[arg-type]
                            fp16)
    if kind == "onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
            raise CalibError(f"{path} is not a readable ONNX file ({type(e).__name__})") from None
        if not proto.graph.node:
            raise CalibError(f"{path} is not a readable ONNX file (no graph)")
        inits = {i.name for i in proto.graph.initializer}
        inputs = [i for i in proto.graph.input if i.name not in inits]
        _one_image_input(path, [i.name for i in inputs],
                         len(inputs[0].type.tensor_type.shape.dim) if len(inputs) == 1 else None)

        def dims(value) -> list[int | None]:
            return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                    for d in value.type.tensor_type.shape.dim]

        shape, out = dims(inputs[0]), dims(proto.graph.output[0])
        return ForeignModel(path, kind, tuple(shape[1:]), out[-1] if out else None, inputs[0].name, shape[0])  # type: ignore[arg-type]
    if kind == "torchscript":
        module = load_torchscript(path)
        args = [a.name for a in module.forward.schema.arguments[1:]]
        _one_image_input(path, args, 4)
        return ForeignModel(path, kind, (3, None, None), None, args[0])
    if kind == "export":
        program = load_export(path)
        user = list(program.graph_signature.user_inputs)
        inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
        shape = inputs[0].meta["val"].shape if len(inputs) == 1 and "val" in inputs[0].meta else ()
        _one_image_input(path, user, len(shape))
        dims = [d if isinstance(d, int) else None for d in shape]
        return ForeignModel(path, kind, tuple(dims[1:]), None, user[0], dims[0])  # type: ignore[arg-type]
    raise CalibError(f"{path} is not ONNX, IR, TorchScript or a torch.export archive ({', '.join(SUFFIXES)})")


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


def _torch_classes(module, contract: InputContract, batch: int = 1) -> int:
    import torch

    try:
        with torch.no_grad():
            y = module(torch.zeros(batch, *contract.shape))
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
        classes = _torch_classes(load_module(model), contract, model.batch or 1)
    if contract.classes is not None and classes is not None and len(contract.classes) != classes:
        raise CalibError(f"{len(contract.classes)} class names but the model has {classes} outputs")
    return replace(model, input_shape=(3, ch, cw), classes=classes)


def to_ov_model(model: ForeignModel, contract: InputContract):
    """The model as an `ov.Model` (OpenVINO reads IR and ONNX, converts PyTorch files) at the contract's input
    size where the file leaves it open, with the file's own input name and batch (a file fixed to batch 1
    stays so), and the contract in its `rt_info`."""
    import warnings

    import openvino as ov

    if model.kind == "openvino":
        from calib.core.engines.openvino import read_model

        ov_model = read_model(model.path)
    elif model.kind == "onnx":
        ov_model = ov.convert_model(str(model.path))
    elif model.kind == "export":
        ov_model = ov.convert_model(load_export(model.path))
    else:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices, raised by the converter's tracing
            ov_model = ov.convert_model(load_torchscript(model.path), example_input=torch.zeros(1, *contract.shape),
                                        input=[(-1, *contract.shape)])
    shape = [-1 if model.batch is None else model.batch, *contract.shape]
    if _dims(ov_model.input(0).get_partial_shape()) != [None if d == -1 else d for d in shape]:
        try:
            ov_model.reshape({ov_model.input(0).get_any_name(): ov.PartialShape(shape)})
        except RuntimeError as e:
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise CalibError(f"{model.path} does not take input {shape} ({first[:160]})") from None
    return write_to_ir(ov_model, contract)


def to_ir(model: ForeignModel, contract: InputContract, out: Path) -> Path:
    """The model as an FP32 OpenVINO IR at `out` (`to_ov_model`), with the contract in its `rt_info`."""
    import openvino as ov

    ov_model = to_ov_model(model, contract)
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(out), compress_to_fp16=False)
    return out


def to_onnx(model: ForeignModel, contract: InputContract, out: Path) -> Path:
    """The model as an FP32 ONNX file at `out` (an ONNX file as it is; a PyTorch file exported with the batch it
    takes: dynamic unless the file fixes one), the contract in its `metadata_props`."""
    import shutil
    import warnings

    out.parent.mkdir(parents=True, exist_ok=True)
    if model.kind == "onnx":
        shutil.copyfile(model.path, out)
    elif model.kind in ("torchscript", "export"):
        import torch

        module = load_module(model)
        x = torch.zeros(model.batch or 2, *contract.shape)
        axes = {model.input_name: {0: "batch"}, "logits": {0: "batch"}} if model.batch is None else None
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and trace notices
            traced = torch.jit.trace(module, x) if not isinstance(module, torch.jit.ScriptModule) else module
            torch.onnx.export(traced, (x,), str(out), input_names=[model.input_name], output_names=["logits"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
    else:
        raise CalibError(f"{model.path}: an OpenVINO IR has no ONNX export here; use the openvino engine")
    return write_to_onnx(out, contract)
