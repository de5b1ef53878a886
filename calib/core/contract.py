"""A classifier's input contract: what its input tensor must be, stated once.

`InputContract` holds the mean and std (in the model's channel order), the input size (H, W), the layout
(NCHW), the channel order (RGB or BGR), the pixel scale (1/255: pixels to [0, 1] first; 1: raw 0..255) and the
class names. It is validated when built, whatever it is built from: options (`from_options`), a small TOML card
beside the model (`<model>.calib.toml`, `from_card`), or the model file itself where calib wrote it there
(OpenVINO IR `rt_info`, ONNX `metadata_props`, key `calib_contract`; `read_from_model`, `write_to_ir`,
`write_to_onnx`). `find` reads them in that order, options overriding single fields of a card or file contract.
A mean or std in the other units than the pixel scale (0.485 with raw pixels, 123.7 with 1/255) is refused.

`to_model_input` turns uint8 NHWC RGB images into the model's float32 NCHW input: resize to the input size
(PIL bilinear, as torchvision's `Resize` does on PIL images), BGR swap, scale, normalize. `embed_preprocessing`
puts the same steps after the resize into an OpenVINO model with OpenVINO's own `PrePostProcessor`, so the IR
takes uint8 NHWC RGB images. The zoo's contract is `CIFAR10`, which gives exactly `calib.core.data.to_model_input`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tomllib

from calib.core.errors import CalibError, OptionError

META_KEY = "calib_contract"
CARD_SUFFIX = ".calib.toml"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputContract:
    """How images become the model's input; see the module docstring. Mean and std are in the model's channel
    order and in the units after scaling (e.g. 0.485 for scale 1/255, 123.675 for scale 1)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]  # (H, W)
    layout: str = "NCHW"
    channel_order: str = "RGB"
    scale: float = 1 / 255
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        def triple(name: str, value) -> tuple[float, float, float]:
            try:
                out = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                raise OptionError(f"contract {name} must be three numbers, not {value!r}") from None
            if len(out) != 3 or not all(math.isfinite(v) for v in out):
                raise OptionError(f"contract {name} must be three finite numbers, not {value!r}")
            return out  # type: ignore[return-value]

        mean, std = triple("mean", self.mean), triple("std", self.std)
        if min(std) <= 0:
            raise OptionError(f"contract std must be positive, not {list(std)}")
        try:
            size = tuple(int(v) for v in self.input_size)
        except (TypeError, ValueError):
            raise OptionError(f"contract input size must be H W (two integers), not {self.input_size!r}") from None
        if len(size) != 2 or min(size) < 1 or any(float(a) != b for a, b in zip(self.input_size, size)):
            raise OptionError(f"contract input size must be H W (two positive integers), not {self.input_size!r}")
        layout = str(self.layout).upper()
        if layout != "NCHW":
            raise OptionError(f"contract layout {self.layout!r} is not supported: calib feeds NCHW")
        order = str(self.channel_order).upper()
        if order not in ("RGB", "BGR"):
            raise OptionError(f"contract channel order must be RGB or BGR, not {self.channel_order!r}")
        scale = float(self.scale)
        if not (math.isclose(scale, 1 / 255) or scale == 1.0):
            raise OptionError(f"contract pixel scale must be 1/255 or 1, not {self.scale!r}")
        classes = self.classes
        if classes is not None:
            classes = tuple(str(c) for c in classes)
            if not classes or any(not c.strip() for c in classes):
                raise OptionError("contract class names must be non-empty names")
            if len(set(classes)) != len(classes):
                dup = sorted({c for c in classes if classes.count(c) > 1})
                raise OptionError(f"contract class names repeat: {', '.join(dup)}")
        if scale != 1.0 and max(max(mean), max(std)) > 1:
            raise OptionError(f"mean {list(mean)} and std {list(std)} are in 0..255 pixel units but the pixel scale "
                              "is 1/255: add --raw-pixels (a card: scale = 1), or state them in 0..1 units")
        if scale == 1.0 and (0 < max(mean) <= 1 or max(std) < 1):
            raise OptionError(f"mean {list(mean)} and std {list(std)} are in 0..1 units but the pixel scale is 1 "
                              "(raw 0..255 pixels): leave --raw-pixels out (a card: no scale), or state them in "
                              "0..255 units")
        for name, value in (("mean", mean), ("std", std), ("input_size", size), ("layout", layout),
                            ("channel_order", order), ("scale", 1 / 255 if scale != 1.0 else 1.0),
                            ("classes", classes)):
            object.__setattr__(self, name, value)

    @property
    def bgr(self) -> bool:
        return self.channel_order == "BGR"

    @property
    def shape(self) -> tuple[int, int, int]:
        """The input shape without the batch: (C, H, W)."""
        return (3, *self.input_size)

    def to_dict(self) -> dict:
        """Plain JSON-able values, for rows, manifests and model metadata."""
        d = asdict(self)
        d["mean"], d["std"], d["input_size"] = list(self.mean), list(self.std), list(self.input_size)
        d["classes"] = list(self.classes) if self.classes is not None else None
        return d

    def describe(self) -> str:
        return (f"{self.input_size[0]}x{self.input_size[1]} {self.channel_order} {self.layout}, scale "
                f"{'1/255' if self.scale != 1.0 else '1'}, mean {list(self.mean)}, std {list(self.std)}, "
                f"{len(self.classes) if self.classes else 'unnamed'} classes")


def cifar10() -> InputContract:
    """The zoo's contract: CIFAR-10's normalization, 32x32 RGB, CIFAR-10's class names."""
    from calib.core.data import CLASSES, IMAGE_SIZE, MEAN, STD

    return InputContract(MEAN, STD, (IMAGE_SIZE, IMAGE_SIZE), classes=CLASSES)


def from_dict(d: dict, where: str = "contract") -> InputContract:
    """A contract from a mapping with the field names of `InputContract` (the card's and the metadata's form);
    an unknown key is refused so that a misspelt one is never silently ignored."""
    known = {"mean", "std", "input_size", "layout", "channel_order", "scale", "classes"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise OptionError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    missing = sorted({"mean", "std", "input_size"} - set(d))
    if missing:
        raise OptionError(f"{where}: missing {', '.join(missing)}")
    try:
        return InputContract(**d)
    except OptionError as e:
        raise OptionError(f"{where}: {e}") from None


def read_classes(path: Path) -> tuple[str, ...]:
    """Class names from a text file, one a line (blank lines skipped), in the model's output order."""
    if not Path(path).is_file():
        raise OptionError(f"class names file {path} does not exist")
    names = tuple(line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
    if not names:
        raise OptionError(f"class names file {path} holds no names")
    return names


def from_options(mean: list[float] | None, std: list[float] | None, input_size: list[int] | None,
                 bgr: bool = False, scale: float = 1 / 255, classes: Path | None = None) -> InputContract:
    """A contract from command-line values: mean and std three numbers each, input size one (square) or two."""
    if mean is None or std is None or input_size is None:
        given = [n for n, v in (("--mean", mean), ("--std", std), ("--input-size", input_size)) if v is None]
        raise OptionError(f"a stated contract needs --mean, --std and --input-size; missing {', '.join(given)}")
    size = list(input_size) * 2 if len(input_size) == 1 else list(input_size)
    return InputContract(tuple(mean), tuple(std), tuple(size), channel_order="BGR" if bgr else "RGB",  # type: ignore[arg-type]
                         scale=scale, classes=read_classes(classes) if classes else None)


def card_path(model: Path) -> Path:
    """Where a model's card lives: `<model>.calib.toml` beside it (e.g. `net.onnx.calib.toml`)."""
    return Path(model).with_name(Path(model).name + CARD_SUFFIX)


def from_card(path: Path) -> InputContract:
    """A contract from a TOML card: `mean`, `std`, `input_size` (H, W), optional `channel_order`, `scale`,
    `layout`, and `classes` (a list) or `classes_file` (relative to the card)."""
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"contract card {path} does not exist")
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise OptionError(f"contract card {path} is not valid TOML ({e})") from None
    if "classes_file" in d:
        if "classes" in d:
            raise OptionError(f"contract card {path}: give classes or classes_file, not both")
        d["classes"] = read_classes(path.parent / d.pop("classes_file"))
    return from_dict(d, f"contract card {path}")


def read_from_model(path: Path) -> InputContract | None:
    """The contract calib wrote into an OpenVINO IR (`rt_info`) or ONNX file (`metadata_props`), else None."""
    path = Path(path)
    text = None
    if path.suffix == ".xml":
        import openvino as ov

        try:
            model = ov.Core().read_model(str(path))
        except RuntimeError as e:
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise CalibError(f"{path} is not a readable OpenVINO IR ({first[:200]})") from None
        if model.has_rt_info([META_KEY]):
            text = model.get_rt_info([META_KEY]).astype(str)
    elif path.suffix == ".onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
            raise CalibError(f"{path} is not a readable ONNX file ({type(e).__name__})") from None
        text = next((p.value for p in proto.metadata_props if p.key == META_KEY), None)
    if text is None:
        return None
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        raise CalibError(f"{path}: its {META_KEY} metadata is not JSON") from None
    return from_dict(d, f"{path} ({META_KEY} metadata)")


def write_to_ir(model, contract: InputContract):
    """Store the contract in an `ov.Model`'s `rt_info` (saved with the IR); returns the model."""
    model.set_rt_info(json.dumps(contract.to_dict()), [META_KEY])
    return model


def write_to_onnx(path: Path, contract: InputContract) -> Path:
    """Store the contract in an ONNX file's `metadata_props`, in place."""
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=META_KEY, value=json.dumps(contract.to_dict()))
    onnx.save(proto, str(path))
    return Path(path)


OPTION_FLAGS = {"mean": "--mean", "std": "--std", "input_size": "--input-size", "channel_order": "--bgr",
                "scale": "--raw-pixels", "classes": "--classes"}
NEEDED = ("mean", "std", "input_size")


@dataclass(frozen=True)
class Found:
    """The contract that applies to a model file, where it came from (`origin`, in words), and the options that
    override a field of the card or of the file's own contract (`overrides`, one line each)."""

    contract: InputContract
    origin: str
    overrides: tuple[str, ...] = ()


def _shown(name: str, value) -> str:
    if name == "input_size":
        return "x".join(str(v) for v in value)
    if name == "scale":
        return "1/255" if value != 1.0 else "1"
    if isinstance(value, tuple | list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def missing_text(model: Path | None) -> str:
    """How to state a contract, for the line that says there is none."""
    beside = card_path(model).name if model else "<model>" + CARD_SUFFIX
    return (f"pass --mean, --std and --input-size (with --bgr, --raw-pixels, --classes as they apply), or "
            f"--contract CARD, or put {beside} beside the model")


def find(model: Path | None, options: dict | None = None, card: Path | None = None) -> Found:
    """The contract of a model file, read in this order: `options` (field name -> value, only those given) over
    a card (`card`, else `<model>.calib.toml` beside the file), else over the contract calib wrote into the file;
    with neither card nor file contract, the options alone, which then need mean, std and input size. Each option
    that changes a card's or file's field is listed in `overrides`; one line when there is no contract."""
    options = dict(options or {})
    base, origin = None, "options"
    if card is not None:
        base, origin = from_card(card), f"card {card}"
    elif model is not None and card_path(model).is_file():
        base, origin = from_card(card_path(model)), f"card {card_path(model)}"
    elif model is not None and Path(model).is_file():
        base = read_from_model(model)
        origin = f"the contract inside {model}" if base is not None else origin
    if base is None:
        lacking = [OPTION_FLAGS[n] for n in NEEDED if n not in options]
        if lacking:
            given = [OPTION_FLAGS[n] for n in options]
            what = f" (given {', '.join(given)}; missing {', '.join(lacking)})" if given else ""
            raise OptionError(f"no input contract for {model or 'the model'}{what}: {missing_text(model)}")
        return Found(InputContract(**options), origin)
    flag = {n: OPTION_FLAGS[n] if n in ("channel_order", "scale") else f"{OPTION_FLAGS[n]} {_shown(n, v)}"
            for n, v in options.items()}
    overrides = tuple(f"{flag[n]} overrides {n.replace('_', ' ')} "
                      f"{_shown(n, getattr(base, n))} of {origin}" for n, v in options.items()
                      if _shown(n, v) != _shown(n, getattr(base, n)))
    try:
        merged = InputContract(**{**base.to_dict(), **options})
    except OptionError as e:
        raise OptionError(f"{e} (the options over {origin})") from None
    return Found(merged, origin, overrides)


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 NHWC images resized to (H, W) with PIL's bilinear filter (torchvision's `Resize` on PIL images);
    images already at that size are returned as they are."""
    from PIL import Image

    h, w = size
    if images.shape[1:3] == (h, w):
        return images
    out = np.empty((len(images), h, w, 3), np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
    return out


def to_model_input(images: np.ndarray, contract: InputContract) -> np.ndarray:
    """uint8 NHWC RGB images -> the model's float32 NCHW input under `contract`."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise CalibError(f"images must be uint8 NHWC RGB, not {images.dtype} {images.shape}")
    images = resize(images, contract.input_size)
    if contract.bgr:
        images = images[..., ::-1]
    x = images.astype(np.float32)
    if contract.scale != 1.0:
        x = x / np.float32(255.0)
    x = (x - np.asarray(contract.mean, np.float32)) / np.asarray(contract.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def embed_preprocessing(model, contract: InputContract):
    """The `ov.Model` with the contract's steps after the resize (layout, BGR swap, scale, normalization) put in
    front of it by OpenVINO's `PrePostProcessor`: the result takes uint8 NHWC RGB images at the input size."""
    import openvino as ov
    from openvino.preprocess import ColorFormat, PrePostProcessor

    ppp = PrePostProcessor(model)
    inp = ppp.input(0)
    inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.RGB)
    inp.model().set_layout(ov.Layout("NCHW"))
    steps = inp.preprocess().convert_element_type(ov.Type.f32)
    if contract.bgr:
        steps = steps.convert_color(ColorFormat.BGR)
    if contract.scale != 1.0:
        steps = steps.scale(255.0)
    steps.mean(list(contract.mean)).scale(list(contract.std))
    return ppp.build()
