"""`calib quantize` for your own model (ONNX, IR, TorchScript or torch.export, with its input contract): every
option checked, then `calib.core.own`."""

from __future__ import annotations

from pathlib import Path

from calib.cli.app import Format, emit, is_quiet, say
from calib.cli.options import refuse_int8
from calib.core.errors import CalibError, OptionError


def accuracy_text(r: dict) -> str:
    if r.get("int8_accuracy") is None:
        return "accuracy not measured (--evaluate measures it)"
    return (f"test accuracy FP32 {r['fp32_accuracy']:.4f}, INT8 {r['int8_accuracy']:.4f} "
            f"({100 * (r['int8_accuracy'] - r['fp32_accuracy']):+.2f} points), "
            f"{100 * r['int8_agreement']:.1f} % same predictions")


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise OptionError(f"{option} takes numbers separated by commas, not {text!r}") from None


def quantize_own_model(model: str, source: str | None, images: int, folder: Path | None, card: Path | None,
                       mean: str | None, std: str | None, input_size: str | None, bgr: bool, raw_pixels: bool,
                       classes: Path | None, engine: str | None, seed: int, out: Path | None, overwrite: bool,
                       data_dir: Path | None, record_path: Path, format: Format) -> None:
    """`calib quantize` for your own model: every option checked, then `calib.core.own.quantize_own`."""
    import shutil

    from calib.core import contract as C
    from calib.core import foreign
    from calib.core.own import SOURCES, OwnRequest, quantize_own
    from calib.core.progress import progress

    if source is None:
        raise OptionError(f"your own model needs --source ({', '.join(SOURCES)}) to make its calibration set")
    if source not in SOURCES:
        raise OptionError(f"--source {source} is not one for your own model; sources: {', '.join(SOURCES)}")
    if (folder is None) != (source != "folder"):
        raise OptionError("--folder DIR goes with --source folder, and only with it")
    stated = None
    if any(v is not None for v in (mean, std, input_size)) or bgr or raw_pixels or classes is not None:
        size = _floats(input_size.replace("x", ","), "--input-size") if input_size else None
        if size is not None and (len(size) not in (1, 2) or any(v != int(v) for v in size)):
            raise OptionError(f"--input-size takes H or HxW in pixels, not {input_size!r}")
        stated = C.from_options(_floats(mean, "--mean"), _floats(std, "--std"),
                                [int(v) for v in size] if size else None, bgr=bgr,
                                scale=1.0 if raw_pixels else 1 / 255, classes=classes)
    if not Path(model).is_file():
        raise OptionError(f"--model {model}: no such file (--source makes a set for your own model file; a zoo "
                          "model takes --calib SET)")
    refuse_int8(model)
    try:
        the_contract = C.resolve(Path(model), stated, card)
        checked = foreign.check(foreign.open_model(Path(model)), the_contract)
    except OptionError:
        raise
    except CalibError as e:
        raise OptionError(str(e)) from None
    if engine not in (None, "openvino", "onnxruntime") or (engine == "onnxruntime" and checked.kind == "openvino"):
        raise OptionError(f"--engine {engine} cannot quantize {model}; leave --engine out")
    engine_name = engine or ("onnxruntime" if checked.kind == "onnx" else "openvino")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise OptionError(f"--data-dir {data_dir}: no such folder")
    out = out or Path("runs/quantize") / f"own-{Path(model).stem}-{engine_name}-{source}-{images}-s{seed}"
    if out.exists() and not overwrite:
        raise OptionError(f"--out {out} exists; pass --overwrite to replace what calib wrote there")
    made = not out.exists()
    req = OwnRequest(Path(model), the_contract, source, images, seed, engine_name, folder, data_dir)
    try:
        with progress(f"quantize {Path(model).name} ({engine_name}, {source})", None, is_quiet()):
            row = quantize_own(req, out, record_path)
    except BaseException:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise

    def text() -> None:
        say(f"{Path(model).name} INT8 ({engine_name}, {images} {source} images at "
            f"{the_contract.input_size[0]}x{the_contract.input_size[1]}, seed {seed}): {row['int8_path']}")
        say(f"  contract: {the_contract.describe()}")
        say(f"  size {row['fp32_bytes'] / 1e6:.2f} MB FP32 -> {row['int8_bytes'] / 1e6:.2f} MB INT8; "
            f"{accuracy_text(row) if row['int8_accuracy'] is not None else 'no test data (--data-dir ROOT)'}")

    emit(row, format, text)


def own_contract(model: str, card: Path | None):
    """The contract of a model file that states one (--contract, a card beside it, or calib's metadata inside
    it); None for a zoo name or a file without one, which keep the CIFAR-10 path."""
    from calib.core import contract as C

    try:
        if card is not None:
            return C.from_card(card)
        if not Path(model).is_file():
            return None
        if C.card_path(Path(model)).is_file():
            return C.from_card(C.card_path(Path(model)))
        return C.read_from_model(Path(model))
    except OptionError:
        raise
    except CalibError as e:
        raise OptionError(str(e)) from None
