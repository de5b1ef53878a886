"""`calib zoo`: the CIFAR-10 classifiers: list, train, export, eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from calib.cli.app import App, Format, OutputFormat, console, emit, is_quiet, print_json, result_table, say, spinner
from calib.cli.options import DEFAULT_RECORD, DataDir, ModelArg, Overwrite, RecordPath, Seed, WeightsPath, one_model
from calib.core.errors import OptionError

app = App(help="The CIFAR-10 classifiers (19, the study's five by default): list, train, export, eval.")


@app.command("list")
def zoo_list(tiny: Annotated[bool, typer.Option(help="Include test-only tiny models.")] = False,
             format: OutputFormat = Format.text) -> None:
    """List registered models: parameters and MAdds (counted), published top-1, official weight file."""
    from calib.core.zoo import list_models, model_complexity, model_info

    rows = []
    for name in list_models(include_tiny=tiny):
        info, (params, madds) = model_info(name), model_complexity(name)
        rows.append({"model": name, "params": params, "madds_m": round(madds / 1e6, 2),
                     "published_top1": info.published_top1, "study": info.study,
                     "release": f"{info.family}/{info.hash_prefix}" if info.family else None})

    def text() -> None:
        t = result_table("model", "params", "MAdds (M)", "top-1 %", "study", "release",
                  caption="MAdds counted per 32x32 image; top-1 as published with the release")
        for r in rows:
            top1 = f"{r['published_top1']:.2f}" if r["published_top1"] is not None else "-"
            t.add_row(r["model"], f"{r['params']:,}", f"{r['madds_m']:.2f}", top1, "yes" if r["study"] else "",
                      r["release"] or "-")
        console.print(t)

    emit(rows, format, text)


@app.command("train")
def zoo_train(
    name: ModelArg = None,
    model: Annotated[str | None, typer.Option(help="Zoo model to train.")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 200,
    batch_size: Annotated[int, typer.Option("--batch", min=1, help="Images per training step.")] = 256,
    lr: Annotated[float, typer.Option(min=0.0)] = 0.1,
    warmup_epochs: Annotated[float, typer.Option(min=0.0)] = 0.0,
    seed: Seed = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Run folder; default runs/zoo/<model>.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last.pt if present.")] = True,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps (smoke runs).")] = None,
    hold_out_validation: Annotated[bool, typer.Option(
        help="Train on the calibration pool only, so accuracy-aware validation stays unseen by the model "
             "(--no-hold-out-validation trains on all of train and says so on the card).")] = True,
    data_dir: DataDir = None,
) -> None:
    """Train a zoo model with the zoo's recipe; resumes from its last checkpoint."""
    from calib.core.data import load_split, train_splits
    from calib.core.train import TrainConfig, train_model
    from calib.core.zoo import model_info

    name = one_model(name, model)
    model_info(name)
    cfg = TrainConfig(name, epochs, batch_size, lr, warmup_epochs=warmup_epochs, seed=seed, device=device,
                      max_steps=max_steps)
    train = train_splits(data_dir)["calibration_pool"] if hold_out_validation else load_split("train", data_dir)
    with spinner(f"zoo train {name}"):
        summary = train_model(cfg, train, out or Path("runs/zoo") / name, test=load_split("test", data_dir),
                              resume=resume)
    print_json(summary)


@app.command("export")
def zoo_export(
    name: ModelArg = None,
    model: Annotated[str | None, typer.Option(help="Zoo model to export.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder (files <model>_fp32.xml/.bin/.onnx).")]
    = Path("runs/export"),
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch/--batch-1", help="Input batch: any (every "
                                                "command reads the file at any --batch), or fixed at 1 "
                                                "(files named <model>_b1_fp32.*).")] = True,
    onnx: Annotated[bool, typer.Option(help="Also write an ONNX file.")] = False,
    fuse: Annotated[bool, typer.Option(help="Fuse RepVGG branches before export.")] = True,
    pretrained: Annotated[bool, typer.Option(help="Load trained weights (off: random, for speed tests).")] = True,
    weights: WeightsPath = None,
    overwrite: Overwrite = False,
) -> None:
    """Export a zoo model to OpenVINO IR (FP32) and optionally ONNX."""
    from calib.core.export import save_ir, to_onnx, to_openvino
    from calib.core.folders import claim_files
    from calib.core.weights import load_model

    name = one_model(name, model)
    stem = out / f"{name}{'' if dynamic_batch else '_b1'}_fp32"
    targets = [stem.with_suffix(".xml"), *([stem.with_suffix(".onnx")] if onnx else [])]
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file; give a folder")
    claim_files(targets, overwrite)
    net = load_model(name, weights, pretrained=pretrained, fuse=fuse)
    say(f"wrote {save_ir(to_openvino(net, dynamic_batch), targets[0])}")
    if onnx:
        say(f"wrote {to_onnx(net, targets[1], dynamic_batch)}")


@app.command("eval")
def zoo_eval(name: ModelArg = None,
             model: Annotated[str | None, typer.Option(help="Zoo model to evaluate.")] = None,
             weights: WeightsPath = None, data_dir: DataDir = None,
             fuse: Annotated[bool, typer.Option(help="Fuse RepVGG branches first.")] = True,
             record_path: RecordPath = DEFAULT_RECORD, format: OutputFormat = Format.text) -> None:
    """Top-1 accuracy of a zoo model in PyTorch on the CIFAR-10 test split, beside its weight card's."""
    from calib.core.progress import progress
    from calib.core.runs import record
    from calib.core.weights import zoo_test_accuracy

    name = one_model(name, model)
    with progress(f"zoo eval {name}", None, is_quiet()):
        r = zoo_test_accuracy(name, weights, data_dir, fuse)
    row = record(record_path, "zoo_eval", r, inputs={"weights": r.get("weights_sha256", "")})

    def text() -> None:
        say(f"{name}: test accuracy {r['accuracy']:.4f} on {r['images']:,} images of {r['test_data']} "
            f"(weights {r['weights_file']}, sha256 {r['weights_sha256'][:8]}"
            f"{', official' if r['weights_official'] else ''})")
        stated = [r["card_accuracy_same_data"]] if r["card_accuracy_same_data"] else r["card_accuracies"]
        for acc, data in stated:
            say(f"  weight card: {acc:.4f} on {data}")
        if r["published_top1"] is not None:
            say(f"  published top-1: {r['published_top1']:.2f}")

    emit(row, format, text)
