"""Calibration sets: `calib generate`, `show` and `inspect`, and `calib sets validate|export|import`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from calib.cli.app import App, Format, OutputFormat, Quiet, emit, is_quiet, say
from calib.cli.choices import InversionInit, Source
from calib.cli.options import DEFAULT_RECORD, DataDir, RecordPath, Seed, WeightsPath, check_zoo_name
from calib.core.errors import OptionError

app = App(help="Calibration sets on disk: validate, export and import through Datumaro.")


def generate_cmd(
    source: Annotated[Source, typer.Option(help="Calibration source (registry).")],
    per_class: Annotated[int, typer.Option(min=1, help="Images per class.")] = 500,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="Set folder; default runs/sets/<source>[-<model>]-<N>pc-s<seed>"
                                                  "[-<digest of the other options given>].")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the set calib wrote at --out (refused "
                                                                "if other files are there).")] = False,
    model: Annotated[str | None, typer.Option(help="inversion: zoo model to invert.")] = None,
    weights: Annotated[Path | None, typer.Option(help="inversion: weight file.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="distylegan: generator (default: shipped).")] = None,
    teacher: Annotated[Path | None, typer.Option(help="stylegan2-ada: NVIDIA pickle or native checkpoint.")] = None,
    trust_teacher: Annotated[bool | None, typer.Option("--trust-teacher", help="stylegan2-ada: allow it.")] = None,
    truncation: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="stylegan2-ada: psi.")] = None,
    iterations: Annotated[int | None, typer.Option(min=1, help="inversion: optimizer steps.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch", min=1, help="inversion: images per batch.")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="inversion: learning rate.")] = None,
    init: Annotated[InversionInit | None, typer.Option(help="inversion: start from noise or from the images of "
                                                            "another source (same seed).")] = None,
    data_dir: DataDir = None,
    quiet: Quiet = False,
) -> None:
    """Write a calibration set: class folders of 32x32 PNG plus a manifest."""
    from calib.core.progress import progress
    from calib.core.sources import default_set_folder, generate_set, source_info

    name = source.value
    opts = dict(model=model, weights=weights, checkpoint=checkpoint, teacher=teacher, trust_teacher=trust_teacher,
                truncation=truncation, iterations=iterations, batch_size=batch_size, lr=lr, data_dir=data_dir,
                init=init.value if init else None)
    unknown = [k for k, v in opts.items() if v is not None and k not in source_info(name).options]
    if unknown:
        flags = ", ".join("--" + ("batch" if k == "batch_size" else k.replace("_", "-")) for k in unknown)
        raise OptionError(f"source {name} does not take {flags}")
    out = out or default_set_folder(name, per_class, seed, **opts)
    with progress(f"generate {name}", per_class * 10, quiet) as advance:
        path = generate_set(name, per_class, seed, out, overwrite=overwrite, **opts,
                            progress=lambda done, total: advance(completed=done, total=total))
    say(f"wrote {per_class * 10} images to {path}")


def show_cmd(set_dir: Annotated[Path, typer.Argument(metavar="SET")],
             out: Annotated[Path | None, typer.Option(help="Image file (.png, .jpg); default runs/show/<set>.png.")]
             = None,
             per_class: Annotated[int, typer.Option(min=1, help="Images per class row.")] = 12,
             overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")]
             = False) -> None:
    """Save a labelled grid of a set, one row per class."""
    from calib.core.folders import claim_files
    from calib.core.sets import read_set
    from calib.core.show import check_image_path, save_grid

    out = out or Path("runs/show") / f"{set_dir.resolve().name}.png"
    check_image_path(out)
    claim_files([out], overwrite)
    say(f"wrote {save_grid(read_set(set_dir, allow_unbalanced=True), out, per_class)}")


def inspect_cmd(set_dir: Annotated[Path, typer.Argument(metavar="SET")],
                model: Annotated[str, typer.Option(help="Zoo classifier the metrics are measured under (a zoo "
                                                        "name; a model file is refused).")]
                = "resnet20",
                weights: WeightsPath = None, data_dir: DataDir = None,
                record_path: RecordPath = DEFAULT_RECORD, format: OutputFormat = Format.text) -> None:
    """Set-quality metrics under a zoo classifier; printed and recorded. Zoo models only: the metrics read the
    classifier's features and BatchNorm statistics in PyTorch and compare the set with CIFAR-10's validation
    split, so your own model's file (and its input contract) has no place here."""
    from calib.core.data import train_splits
    from calib.core.kinds import kind_of
    from calib.core.progress import progress
    from calib.core.quality import set_metrics
    from calib.core.runs import record
    from calib.core.sets import read_set
    from calib.core.weights import load_model, resolve_weights

    if kind_of(model) is not None or Path(model).exists():
        raise OptionError(f"--model {model} is a model file; calib inspect measures sets under a zoo classifier "
                          "only (its features and BatchNorm statistics, against CIFAR-10's validation split): give "
                          "a zoo name (calib zoo list)")
    check_zoo_name(model)
    cset = read_set(set_dir)
    net = load_model(model, weights, fuse=False)
    with progress(f"inspect {set_dir.name}", None, is_quiet()):
        metrics = set_metrics(net, cset.images, cset.labels, train_splits(data_dir)["validation"])
    row = record(record_path, "inspect", {"set": str(set_dir), "source": cset.manifest["source"], "model": model,
                                           **metrics}, inputs={"set": cset.content_hash,
                                                               "weights": resolve_weights(model, weights).name})

    def text() -> None:
        say(f"{set_dir} ({row['source']}) under {model}:")
        for k in metrics:
            v = row[k]
            say(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")

    emit(row, format, text)


@app.command("validate")
def sets_validate(set_dir: Annotated[Path, typer.Argument(metavar="SET")],
                  format: OutputFormat = Format.text) -> None:
    """Check a set against its manifest (files, hashes, sizes, balance)."""
    from calib.core.data import CLASSES
    from calib.core.sets import read_set

    cset = read_set(set_dir)
    row = {"set": str(set_dir), "ok": True, "images": len(cset), "source": cset.manifest["source"],
           "role": cset.role, "content_hash": cset.content_hash,
           "per_class": {c: int((cset.labels == i).sum()) for i, c in enumerate(CLASSES)}}
    emit(row, format, lambda: say(f"{set_dir}: ok, {len(cset)} images, source {row['source']}, role {cset.role}"))


class DatasetFormat(str, Enum):
    cifar = "cifar"
    imagenet = "imagenet"


@app.command("export")
def sets_export(set_dir: Annotated[Path, typer.Argument(metavar="SET")],
                dataset_format: Annotated[DatasetFormat, typer.Option("--dataset-format", help="cifar: the "
                                                                      "CIFAR-10 pickle layout; imagenet: class "
                                                                      "folders.")],
                out: Annotated[Path, typer.Option(help="Empty or new folder.")], quiet: Quiet = False) -> None:
    """Convert a set with Datumaro (cifar: the CIFAR-10 pickle layout; imagenet: class folders)."""
    from calib.core.progress import progress
    from calib.core.sets import export_set

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OptionError(f"--out {out} exists and is not an empty folder")
    with progress(f"export {set_dir} ({dataset_format.value})", None, quiet):
        path = export_set(set_dir, dataset_format.value, out)
    say(f"wrote {path}")


@app.command("import")
def sets_import(src: Annotated[Path, typer.Argument(metavar="SRC", help="Dataset folder Datumaro reads.")],
                out: Annotated[Path, typer.Option(help="New set folder.")],
                dataset_format: Annotated[str | None, typer.Option("--dataset-format", help="Datumaro format "
                                                                   "(default: detect).")] = None,
                quiet: Quiet = False) -> None:
    """Read any Datumaro-readable CIFAR-10-labelled dataset into the set format."""
    from calib.core.progress import progress
    from calib.core.sets import import_set

    with progress(f"import {src}", None, quiet):
        path = import_set(src, out, dataset_format)
    say(f"wrote {path}")
