"""Your own model (ONNX, IR, TorchScript or torch.export, with its input contract) in `calib quantize` and
`calib diagnose`: every option checked into a `calib.core.own.OwnRequest`, then the core."""

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


def is_own(model: str, stated: dict, zoo_only: dict) -> bool:
    """Whether `--model` goes the own-model way: a contract or --source is `stated` (option -> value, None or
    False where not given), or the file is PyTorch; then any `zoo_only` option given is refused in one line."""
    from calib.core.foreign import TORCHSCRIPT_SUFFIXES

    own = any(v not in (None, False) for v in stated.values()) or Path(model).suffix.lower() in TORCHSCRIPT_SUFFIXES
    given = [k for k, v in zoo_only.items() if v not in (None, False)]
    if own and given:
        raise OptionError(f"{', '.join(given)} is not available with your own model's contract and --source; "
                          "leave it out")
    return own


def own_request(model: str, source: str | None, images: int, folder: Path | None, card: Path | None,
                mean: str | None, std: str | None, input_size: str | None, bgr: bool, raw_pixels: bool,
                classes: Path | None, engine: str | None, seed: int, data_dir: Path | None, algo: str = "default",
                max_drop: float | None = None):
    """The `OwnRequest` the options describe, every one checked against the model file first (one line each)."""
    from calib.core import contract as C
    from calib.core import foreign
    from calib.core.own import SOURCES, OwnRequest

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
    if algo != "default" and engine_name != "openvino":
        raise OptionError(f"--algo {algo} is NNCF's (openvino); {model} goes to {engine_name}: pass --engine "
                          "openvino")
    if max_drop is not None and algo == "default":
        raise OptionError("--max-drop goes with --algo accuracy-aware")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise OptionError(f"--data-dir {data_dir}: no such folder")
    if algo != "default" and data_dir is None:
        raise OptionError("--algo accuracy-aware validates on your labeled images: give --data-dir ROOT with "
                          "ROOT/val/<class>/* (or ROOT/train/<class>/*, cut by a seed)")
    return OwnRequest(Path(model), the_contract, source, images, seed, engine_name, folder, data_dir, algo=algo,
                      max_drop=max_drop)


def quantize_own_model(req, out: Path | None, overwrite: bool, record_path: Path, format: Format) -> None:
    """`calib quantize` for your own model: `calib.core.own.quantize_own`, a failed run leaving no folder."""
    import shutil

    from calib.core.folders import claim
    from calib.core.own import quantize_own
    from calib.core.progress import progress

    algo = "" if req.algo == "default" else f"-{req.algo}"
    name = f"own-{req.model.stem}-{req.engine}{algo}-{req.source}-{req.images}-s{req.seed}"
    out = out or Path("runs/quantize") / name
    made = not out.exists()  # a new folder is removed again if the run fails
    claim(out, overwrite)
    try:
        with progress(f"quantize {req.model.name} ({req.engine}, {req.source})", None, is_quiet()):
            row = quantize_own(req, out, record_path)
    except BaseException:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise

    def text() -> None:
        c = req.contract
        say(f"{req.model.name} INT8 ({req.engine}, {req.algo}, {req.images} {req.source} images at "
            f"{c.input_size[0]}x{c.input_size[1]}, seed {req.seed}): {row['int8_path']}")
        say(f"  contract: {c.describe()}")
        aa = row["quantize"]
        if aa.get("aa_int8_validation_accuracy") is not None:
            say(f"  validation ({row['validation_images']} images, {row['validation_from']}): FP32 "
                f"{aa['aa_fp32_validation_accuracy']:.4f}, INT8 {aa['aa_int8_validation_accuracy']:.4f}, "
                f"{aa['aa_kept_fp32_count']} layers kept in FP32")
        say(f"  size {row['fp32_bytes'] / 1e6:.2f} MB FP32 -> {row['int8_bytes'] / 1e6:.2f} MB INT8; "
            f"{accuracy_text(row) if row['int8_accuracy'] is not None else 'no test data (--data-dir ROOT)'}")

    emit(row, format, text)


def diagnose_own_model(req, reference: str, per_layer_accuracy: int, rank_by, out: Path | None, overwrite: bool,
                       record_path: Path) -> dict:
    """`calib diagnose` for your own model: `calib.core.diagnose.diagnose_own` into `out` (default
    runs/diagnose/own-<model>-<source>-<images>-s<seed>)."""
    from calib.core.diagnose import diagnose_own
    from calib.core.folders import claim

    out = out or Path("runs/diagnose") / f"own-{req.model.stem}-{req.source}-{req.images}-s{req.seed}"
    claim(out, overwrite)
    return diagnose_own(req, out, reference, per_layer_accuracy, rank_by, is_quiet(), record_path, overwrite)


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
