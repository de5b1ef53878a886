"""Your own model (any file kind of `calib.core.kinds`, with its input contract) in `calib quantize`, `evaluate`,
`diagnose` and `benchmark files`: every option checked into the core's requests before any work.

The contract is read the same way by every command (`calib.core.contract.find`): the options over a card (given
with --contract, else `<model>.calib.toml` beside the file) over the contract calib wrote into the file; an
option that changes a card's field says so on stderr and in the row.
"""

from __future__ import annotations

from pathlib import Path

from calib.cli.app import Format, emit, err_console, is_quiet, keep_log, say
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


def contract_options(mean: str | None, std: str | None, input_size: str | None, bgr: bool = False,
                     raw_pixels: bool = False, classes: Path | None = None) -> dict:
    """The contract fields the options give (field name -> value), only those given."""
    from calib.core.contract import read_classes

    out: dict = {}
    if mean is not None:
        out["mean"] = tuple(_floats(mean, "--mean"))
    if std is not None:
        out["std"] = tuple(_floats(std, "--std"))
    if input_size is not None:
        size = _floats(input_size.lower().replace("x", ","), "--input-size")
        if not size or len(size) not in (1, 2) or any(v != int(v) or v < 1 for v in size):
            raise OptionError(f"--input-size takes H or HxW in pixels, not {input_size!r}")
        out["input_size"] = tuple(int(v) for v in size * (3 - len(size)))
    if bgr:
        out["channel_order"] = "BGR"
    if raw_pixels:
        out["scale"] = 1.0
    if classes is not None:
        out["classes"] = read_classes(classes)
    return out


def say_overrides(overrides) -> None:
    """Each option that overrides a card's or a file's contract field, one line on stderr (not with -q)."""
    if not is_quiet():
        for line in overrides:
            err_console.print(f"note: {line}", highlight=False, markup=False, soft_wrap=True)


def is_own(model: str, stated: dict, zoo_only: dict) -> bool:
    """Whether `--model` goes the own-model way: a contract option or --source is `stated` (option -> value, None
    or False where not given), or the file is PyTorch; then any `zoo_only` option given is refused in one line."""
    from calib.core.kinds import kind_of

    own = any(v not in (None, False) for v in stated.values()) or kind_of(model) in ("torchscript", "export")
    given = [k for k, v in zoo_only.items() if v not in (None, False)]
    if own and given:
        raise OptionError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for zoo models and --calib sets "
                          "only, not with your own model's contract and --source; leave "
                          f"{'it' if len(given) == 1 else 'them'} out")
    return own


def own_request(model: str, source: str | None, images: int, folder: Path | None, card: Path | None,
                options: dict, engine: str | None, seed: int, data_dir: Path | None, algo: str = "default",
                max_drop: float | None = None):
    """The `OwnRequest` the options describe, checked against the model file (one line each); the contract
    found as every command finds it, an override said on stderr."""
    from calib.core import contract as C
    from calib.core.own import AUTO, SOURCES, OwnRequest

    if source is None:
        raise OptionError(f"your own model needs --source ({', '.join(SOURCES)} or {AUTO}) to make its calibration "
                          "set")
    if source not in (*SOURCES, AUTO):
        raise OptionError(f"--source {source} is not one for your own model; sources: {', '.join(SOURCES)}, {AUTO} "
                          "(each data-free source tried, the lowest label-free estimate kept)")
    if (folder is None) != (source != "folder"):
        raise OptionError("--folder DIR goes with --source folder, and only with it")
    if not Path(model).is_file():
        raise OptionError(f"--model {model}: no such file (--source makes a set for your own model file; a zoo "
                          "model takes --calib SET)")
    refuse_int8(model)
    try:
        found = C.find(Path(model), options, card)
    except OptionError:
        raise
    except CalibError as e:
        raise OptionError(str(e)) from None
    return OwnRequest(Path(model), found.contract, source, images, seed, engine, folder, data_dir, algo=algo,
                      max_drop=max_drop, contract_from=found.origin, overrides=found.overrides)


def quantize_own_model(req, out: Path | None, overwrite: bool, record_path: Path, format: Format) -> None:
    """`calib quantize` for your own model: every check (`calib.core.own.plan_own`) before the folder is
    claimed, the folder named by the condition, a failed run leaving no folder and no row."""
    from dataclasses import replace

    from calib.core.folders import run_folder
    from calib.core.own import AUTO, DATA_FREE, own_folder, plan_own, quantize_auto, quantize_own
    from calib.core.progress import progress
    from calib.core.runs import record

    auto = req.source == AUTO
    plan = plan_own(replace(req, source=DATA_FREE[0]) if auto else req)
    say_overrides(req.overrides)
    out = out or own_folder(req)
    with run_folder(out, overwrite):
        with progress(f"quantize {req.model.name} ({plan.engine}, {req.source})", None, is_quiet()):
            row = quantize_auto(req, out, plan.tree) if auto else quantize_own(req, out, plan=plan)
    row = record(record_path, "quantize_own", row, seeds={"calibration": req.seed},
                 inputs={"model_sha256": row["model_sha256"]})
    keep_log(out)

    def text() -> None:
        c = req.contract
        shown = f"{row['images']} {row['source']} images"
        if row["images"] < req.images:
            shown += f" (the folder holds {row['images']} of the {req.images} asked)"
        say(f"{req.model.name} INT8 ({plan.engine}, {req.algo}, {shown} at {c.input_size[0]}x{c.input_size[1]}, "
            f"seed {req.seed}): {row['int8_path']}")
        say(f"  contract ({row['contract_from']}): {c.describe()}")
        aa = row["quantize"]
        if aa.get("aa_int8_validation_accuracy") is not None:
            say(f"  validation ({row['validation_images']} images, {row['validation_from']}): FP32 "
                f"{aa['aa_fp32_validation_accuracy']:.4f}, INT8 {aa['aa_int8_validation_accuracy']:.4f}, "
                f"{aa['aa_kept_fp32_count']} layers kept in FP32")
            if aa["aa_kept_fp32_count"] and aa["aa_kept_fp32_count"] == aa.get("aa_quantized_ops"):
                say(f"  every quantized layer was kept in FP32, so the INT8 file is no smaller: one of "
                    f"{row['validation_images']} validation images is {100 / row['validation_images']:.1f} "
                    f"points, more than --max-drop allows; give more validation images or a larger --max-drop")
        if row["int8_accuracy"] is not None:
            tested = accuracy_text(row)
        elif req.data_dir is None:
            tested = "accuracy not measured (--data-dir ROOT with ROOT/test/<class>/* measures it)"
        else:
            tested = f"accuracy not measured: {req.data_dir} has no test/ folder (ROOT/test/<class>/*)"
        given = "FP32" if not row["fp16_weights"] else "FP32 graph with FP16-compressed weights (as given)"
        say(f"  size {row['fp32_bytes'] / 1e6:.2f} MB {given} -> {row['int8_bytes'] / 1e6:.2f} MB INT8; {tested}")
        from calib.core.drop import drop_text  # numpy: not for `--help`

        say(f"  {drop_text(row)}")
        for t in row.get("choice", []):
            said = (t["error"] if t.get("error") else drop_text(t) if t.get("estimated_drop") is not None
                    else f"probe KL {t.get('probe_kl', float('nan')):.3g}")
            say(f"  --source auto tried {t['source']}{' (kept)' if t['source'] == row['source'] else ''}: {said}")
        say(f"  everything: {Path(row['out']) / 'quantize.json'} (--format json prints it)")

    emit(row, format, text)


def diagnose_own_model(req, reference: str, per_layer_accuracy: int, rank_by, out: Path | None, overwrite: bool,
                       record_path: Path) -> dict:
    """`calib diagnose` for your own model: `calib.core.diagnose.diagnose_own` into `out` (default
    runs/diagnose/own-<stem>-<kind>-openvino-<source>-<images>-s<seed>-<digest of the condition>)."""
    from calib.core.diagnose import diagnose_own
    from calib.core.own import own_folder, plan_own

    plan_own(req)
    say_overrides(req.overrides)
    extra = {"reference": str(reference), "per_layer_accuracy": per_layer_accuracy}
    out = out or own_folder(req, Path("runs/diagnose"), extra)
    return diagnose_own(req, out, reference, per_layer_accuracy, rank_by, is_quiet(), record_path, overwrite)


def evaluate_own_model(model: str, options: dict, card: Path | None, data_dir: Path | None, batch: int,
                       engine: str | None, record_path: Path, format: Format) -> bool:
    """`calib evaluate` for a model file with a contract (False, doing nothing, for a zoo file without one:
    it declares CIFAR-10's 3x32x32 input and 10 outputs itself)."""
    from calib.core.own import evaluate_own, is_zoo_file, without_contract
    from calib.core.progress import progress

    file = without_contract(Path(model), options, card)
    if file is not None and is_zoo_file(file):
        return False
    with progress(f"evaluate {Path(model).name}", None, is_quiet()):
        row = evaluate_own(Path(model), data_dir, options, card, batch, engine, record_path)
    say_overrides(row["contract_overrides"])
    emit(row, format, lambda: say(f"{model}: accuracy {row['accuracy']:.4f} on {row['images']} test images "
                                  f"({row['eval_fps']:.0f} images/s, engine {row['engine']}; contract from "
                                  f"{row['contract_from']})"))
    return True
