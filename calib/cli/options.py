"""Options several commands take, and the checks of `--model` that quantize, evaluate and diagnose share."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer

from calib.core.errors import OptionError

DataDir = Annotated[Path | None, typer.Option(help="Image-folder root <root>/{train,test}/<class>/*: CIFAR-10's "
                                                   "for zoo models (default $CALIB_CIFAR10_DIR, else torchvision's "
                                                   "download); your own model's classes for yours (test/ for "
                                                   "accuracy; val/, else a cut of train/, for validation).")]


def _weight_file(path: Path | None) -> Path | None:
    """A weight card (JSON) is not a weight file: say which file it describes instead of PyTorch's refusal."""
    if path is not None and path.suffix.lower() == ".json":
        raise typer.BadParameter(f"{path} is a weight card (JSON); --weights takes the .pt weight file it "
                                 "describes")
    return path


WeightsPath = Annotated[Path | None, typer.Option("--weights", callback=_weight_file,
                                                  help="Zoo models only: weight file (.pt); default: the first "
                                                       "folder of $CALIB_WEIGHTS_DIR (folders joined by os.pathsep, "
                                                       "earlier wins) that holds one, then the official release "
                                                       "(hash-checked).")]
RecordPath = Annotated[Path, typer.Option("--record", help="JSON-lines file that gets one row per run.",
                                          envvar="CALIB_RECORDS")]
DEFAULT_RECORD = Path("runs/records.jsonl")
Seed = Annotated[int, typer.Option(min=0, help="Seed of every random choice.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace what calib wrote in an existing --out "
                                                            "(only a folder calib made; other files stay).")]
ModelArg = Annotated[str | None, typer.Argument(metavar="MODEL", hidden=True, show_default=False,
                                                help="The same as --model.")]


def one_model(positional: str | None, option: str | None) -> str:
    """The model named by --model or, as older scripts do, by position."""
    if positional and option and positional != option:
        raise OptionError(f"two models given: {positional} and --model {option}; give one, with --model")
    model = option or positional
    if not model:
        raise OptionError("no model given: pass --model NAME (a zoo name or, where a file is read, its path)")
    return model


def check_zoo_name(model: str) -> None:
    """A --model that is no file calib reads must be a zoo name: refused in one line before any data is read."""
    from calib.core.kinds import kind_of, refuse_text

    if kind_of(model) is not None:
        if not Path(model).is_file():
            raise OptionError(f"--model {model}: no such file")
        return
    if Path(model).exists():
        raise OptionError(refuse_text(model, "run"))
    from calib.core.errors import CalibError
    from calib.core.zoo import model_info

    try:
        model_info(model)
    except CalibError as e:
        raise OptionError(f"--model {model} is neither a model file nor a zoo name ({e})") from None


def model_engine(model: str, engine: str | None, default: str = "openvino") -> str:
    """The engine for `--model`: the one that reads the file (by suffix), else `--engine`, else `default`; a
    file that the given --engine does not read, or one that does not exist, is refused."""
    from calib.core.engines import get_engine, list_engines

    owner = next((e for e in list_engines() if get_engine(e).owns(model)), None)
    if owner is None:
        return engine or default
    if engine and engine != owner:
        raise OptionError(f"--model {model} is a {get_engine(owner).suffix} file, which {owner} reads, not "
                          f"--engine {engine}; leave --engine out")
    if not Path(model).is_file():
        raise OptionError(f"--model {model}: no such file")
    return owner


def refuse_int8(model: str) -> None:
    """An FP32 model is needed: refuse an IR with FakeQuantize nodes or an ONNX file with QuantizeLinear nodes."""
    path = Path(model)
    if not path.is_file():
        return
    if path.suffix == ".xml":
        quantized = 'type="FakeQuantize"' in path.read_text(errors="ignore")
    elif path.suffix == ".onnx":
        import onnx

        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception:  # noqa: BLE001 - a damaged file is reported where it is read
            return
        quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in graph.node)
    else:
        return
    if quantized:
        raise OptionError(f"--model {model} is already INT8 (quantized nodes inside); give the FP32 model")


# Your own model: its input contract and the images --source makes (quantize and diagnose)
CONTRACT_ORDER = ("Your own model's input contract is read in this order: the options --mean, --std, --input-size, "
                  "--bgr, --raw-pixels, --classes (each overriding one field), a card (--contract, else "
                  "<model>.calib.toml beside the file), the contract calib wrote into the file.")


def with_contract_order(command):
    """Append how the input contract is read to a command's help (its docstring dedented first, so the help
    keeps its paragraphs)."""
    command.__doc__ = inspect.cleandoc(command.__doc__ or "") + "\n\n" + CONTRACT_ORDER
    return command


Source = Annotated[str | None, typer.Option(help="Your own model: make the calibration set at its input size from "
                                                 "noise, fractal, folder (--folder DIR), distylegan (32x32, resized) "
                                                 "or inversion (a .pt2 model's own BatchNorm statistics).")]
Images = Annotated[int, typer.Option(min=1, help="Your own model: calibration images --source makes.")]
Folder = Annotated[Path | None, typer.Option(help="--source folder: any folder of unlabeled images.")]
ContractCard = Annotated[Path | None, typer.Option("--contract", help="Your own model: its input contract card "
                                                                      "(TOML); default <model>.calib.toml beside it, "
                                                                      "else what the model file carries; "
                                                                      "--mean, --std, --input-size, --bgr, "
                                                                      "--raw-pixels and --classes override one "
                                                                      "field each.")]
Mean = Annotated[str | None, typer.Option(help="Your own model: mean per channel in its channel order, e.g. "
                                               "0.485,0.456,0.406.")]
Std = Annotated[str | None, typer.Option(help="Your own model: std per channel, e.g. 0.229,0.224,0.225.")]
InputSize = Annotated[str | None, typer.Option(help="Your own model: input size, 64 or 64x48 (H x W).")]
Bgr = Annotated[bool, typer.Option("--bgr", help="Your own model takes BGR channels (default RGB).")]
RawPixels = Annotated[bool, typer.Option("--raw-pixels", help="Your own model: mean/std are in 0..255 pixel units "
                                                              "(pixel scale 1, not 1/255).")]
Classes = Annotated[Path | None, typer.Option(help="Your own model: class names, one a line, in output order.")]
