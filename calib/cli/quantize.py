"""`calib quantize` (a zoo model, a model file, or your own model with its contract) and `calib evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from calib.cli.app import Format, OutputFormat, emit, is_quiet, keep_log, say
from calib.cli.choices import Engine, QuantEngine
from calib.cli.options import (
    DEFAULT_RECORD,
    Bgr,
    Classes,
    ContractCard,
    DataDir,
    Folder,
    Images,
    InputSize,
    Mean,
    ModelArg,
    Overwrite,
    RawPixels,
    RecordPath,
    Seed,
    Source,
    Std,
    WeightsPath,
    check_zoo_name,
    model_engine,
    one_model,
    refuse_int8,
    with_contract_order,
)
from calib.cli.own import accuracy_text, contract_options, evaluate_own_model, is_own, own_request, quantize_own_model
from calib.core.errors import CalibError, OptionError
from calib.core.kinds import readers_text
from calib.core.spec import Algo, CalibMethod, DropType, OverflowFix, Preset

ZOO = "Zoo models and --calib sets only: "


def quantize_cmd(
    model: Annotated[str, typer.Option(help="Zoo name (trained weights), or an FP32 model file, its engine by "
                                            f"kind: {readers_text('quantize')}.")],
    calib: Annotated[Path | None, typer.Option(help=ZOO + "calibration set folder (your own model: --source makes "
                                                    "one instead).")] = None,
    algo: Annotated[Algo, typer.Option(help="NNCF's default algorithm, or accuracy-aware (openvino).")]
    = Algo.default,
    engine: Annotated[QuantEngine | None, typer.Option(help="Engine for a zoo name (default openvino), or for a "
                                                            "file a kind's other engine (see --model).")] = None,
    subset_size: Annotated[int | None, typer.Option(min=1, help=ZOO + "calibration images, drawn class-balanced "
                                                                "with --seed (default: all).")] = None,
    preset: Annotated[Preset | None, typer.Option(help=ZOO + "activations symmetric (performance) or asymmetric "
                                                       "(mixed); default: the engine's own (openvino performance, "
                                                       "onnxruntime mixed).")] = None,
    fast_bias_correction: Annotated[bool | None, typer.Option(
        "--fast-bias-correction/--no-fast-bias-correction", help=ZOO + "openvino (default: on).")] = None,
    max_drop: Annotated[float | None, typer.Option(min=0.0, help="--algo accuracy-aware only: largest accuracy "
                                                                 "drop allowed (default 0.01).")] = None,
    drop_type: Annotated[DropType | None, typer.Option(help=ZOO + "--algo accuracy-aware (default: absolute).")]
    = None,
    calibrate_method: Annotated[CalibMethod | None, typer.Option(help=ZOO + "activation ranges; onnxruntime: "
                                                                      "minmax (default), entropy, percentile; "
                                                                      "openvino: nncf (default) or minmax.")] = None,
    ranking_subset_size: Annotated[int | None, typer.Option(min=1, help=ZOO + "--algo accuracy-aware: validation "
                                                                        "images NNCF ranks layers on (default: "
                                                                        "all).")] = None,
    overflow_fix: Annotated[OverflowFix | None, typer.Option(help=ZOO + "openvino: weights on half the INT8 range "
                                                                  "against 8-bit saturation on CPUs without VNNI "
                                                                  "(default first_layer_only).")] = None,
    reduce_range: Annotated[bool | None, typer.Option("--reduce-range/--no-reduce-range", help=ZOO + "onnxruntime: "
                                                      "7-bit weights everywhere (default: on where the CPU has no "
                                                      "VNNI).")] = None,
    calibration_batch: Annotated[int, typer.Option("--batch", min=1, help=ZOO + "images per calibration item; "
                                                   "statistics stay per image, so the result equals batch 1 up "
                                                   "to float rounding, sooner.")] = 1,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="Output folder; default runs/quantize/<model>-<engine>-<algo>-"
                                                  "<set>-<subset>-s<seed>-<digest of every option> (your own model: "
                                                  "own-<stem>-<kind>-<engine>-<source>-<images>-s<seed>-<digest of "
                                                  "the file's content, contract and options>).")] = None,
    overwrite: Overwrite = False,
    evaluate: Annotated[bool, typer.Option(help=ZOO + "also measure FP32 and INT8 test accuracy (your own model: "
                                                "--data-dir with a test/ folder measures it).")] = False,
    weights: WeightsPath = None,
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
    format: OutputFormat = Format.text,
    source: Source = None,
    images: Images = 300,
    folder: Folder = None,
    contract: ContractCard = None,
    mean: Mean = None,
    std: Std = None,
    input_size: InputSize = None,
    bgr: Bgr = False,
    raw_pixels: RawPixels = False,
    classes: Classes = None,
) -> None:
    """Quantize to INT8 with any engine that quantizes: NNCF (default or accuracy-aware), ONNX Runtime (static QDQ).
    Your own model (ONNX, IR, TorchScript or torch.export) with its input contract: --source makes the set,
    --data-dir (with your class folders) evaluates."""
    from calib.core.export import fixed_batch
    from calib.core.pipeline import run_quantize
    from calib.core.progress import progress
    from calib.core.spec import QuantizeSpec

    stated = {"--mean": mean, "--std": std, "--input-size": input_size, "--contract": contract, "--classes": classes,
              "--bgr": bgr, "--raw-pixels": raw_pixels, "--source": source, "--folder": folder}
    zoo_only = {"--calib": calib, "--subset-size": subset_size, "--preset": preset,
                "--fast-bias-correction": fast_bias_correction is not None, "--drop-type": drop_type,
                "--calibrate-method": calibrate_method, "--ranking-subset-size": ranking_subset_size,
                "--overflow-fix": overflow_fix, "--reduce-range": reduce_range is not None,
                "--batch": calibration_batch != 1,
                "--weights": weights, "--evaluate": evaluate}
    if is_own(model, stated, zoo_only):
        req = own_request(model, source, images, folder, contract,
                          contract_options(mean, std, input_size, bgr, raw_pixels, classes),
                          engine.value if engine else None, seed, data_dir, algo.value, max_drop)
        quantize_own_model(req, out, overwrite, record_path, format)
        return
    check_zoo_name(model)
    if calib is None:
        raise OptionError("give --calib SET (or, for your own model, --source to make the set)")
    engine_name = model_engine(model, engine.value if engine else None)
    refuse_int8(model)
    if fixed_batch(model) not in (None, calibration_batch):
        raise OptionError(f"--model {model} takes batch {fixed_batch(model)} only; pass --batch "
                          f"{fixed_batch(model)}, or export it with a dynamic batch (calib zoo export does)")
    try:  # the spec checks itself, the engine's options included: refused before any work, exit code 2
        spec = QuantizeSpec(model=model, calib=calib, algo=algo, engine=engine_name, subset_size=subset_size,
                            preset=preset, fast_bias_correction=fast_bias_correction, max_drop=max_drop,
                            drop_type=drop_type, calibrate_method=calibrate_method,
                            ranking_subset_size=ranking_subset_size, overflow_fix=overflow_fix,
                            reduce_range=reduce_range, seed=seed, weights=weights, data_dir=data_dir,
                            calibration_batch=calibration_batch)
    except OptionError:
        raise
    except CalibError as e:
        raise OptionError(str(e)) from None
    with progress(f"quantize {Path(model).name} ({engine_name}, {algo.value})", None, is_quiet()):
        row = run_quantize(spec, out, test=evaluate, record_path=record_path, overwrite=overwrite)
    keep_log(Path(row["out"]))

    def text() -> None:
        say(f"{row['model']} INT8 ({row['engine']}, {algo.value}, {row['subset_size_images']} images of "
            f"{row['calib_source']} set {Path(row['calib_set']).name}, seed {seed}): {row['int8_path']}")
        say(f"  size {row['fp32_bytes'] / 1e6:.2f} MB FP32 -> {row['int8_bytes'] / 1e6:.2f} MB INT8; "
            f"{accuracy_text(row)}")
        from calib.core.drop import drop_text  # numpy: not for `--help`

        say(f"  {drop_text(row)}")
        say(f"  everything: {Path(row['out']) / 'quantize.json'} (--format json prints it)")

    emit(row, format, text)


with_contract_order(quantize_cmd)


def evaluate_cmd(name: ModelArg = None,
                 model: Annotated[str | None, typer.Option(help="Zoo name, or a model file (FP32 or INT8), its "
                                                                f"engine by kind: {readers_text('run')}.")] = None,
                 batch: Annotated[int, typer.Option(min=1, help="Images per inference request (a file fixed to "
                                                                "one batch runs at it).")] = 50,
                 weights: WeightsPath = None,
                 engine: Annotated[Engine | None, typer.Option(help="For a zoo name: the engine it is exported to "
                                                                    "(default openvino); for a file, a kind's other "
                                                                    "engine (see --model).")] = None,
                 data_dir: DataDir = None, record_path: RecordPath = DEFAULT_RECORD,
                 format: OutputFormat = Format.text,
                 contract: ContractCard = None,
                 mean: Mean = None,
                 std: Std = None,
                 input_size: InputSize = None,
                 bgr: Bgr = False,
                 raw_pixels: RawPixels = False,
                 classes: Classes = None,
                 ) -> None:
    """Top-1 accuracy on the CIFAR-10 test split with the engine that reads the file (OpenVINO: all requests of
    an AsyncInferQueue kept busy); your own model's file, with its contract, on --data-dir ROOT/test. A file with
    no contract is a zoo model's only where it declares CIFAR-10's 3x32x32 input and 10 outputs itself."""
    from calib.core.kinds import kind_of
    from calib.core.pipeline import run_evaluate
    from calib.core.progress import progress

    model = one_model(name, model)
    options = contract_options(mean, std, input_size, bgr, raw_pixels, classes)
    check_zoo_name(model)
    if kind_of(model) is not None:
        if weights is not None:
            raise OptionError("--weights is for zoo models only; a model file holds its weights")
        if evaluate_own_model(model, options, contract, data_dir, batch, engine.value if engine else None,
                              record_path, format):
            return
    elif options or contract is not None:
        raise OptionError(f"--model {model} is a zoo model, whose contract is CIFAR-10's; the contract options are "
                          "for your own model's file")
    engine_name = model_engine(model, engine.value if engine else None)
    with progress(f"evaluate {Path(model).name} ({engine_name})", None, is_quiet()):
        row = run_evaluate(model, batch=batch, weights=weights, data_dir=data_dir, record_path=record_path,
                           engine=engine_name)
    emit(row, format, lambda: say(f"{model}: accuracy {row['accuracy']:.4f} on {row['images']} test images "
                                  f"({row['eval_fps']:.0f} images/s, engine {row['engine']})"))


with_contract_order(evaluate_cmd)
