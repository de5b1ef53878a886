"""The `calib` command line: a thin layer of typer sub-apps over library functions."""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from calibration.diagnose import RankBy
from calibration.errors import CalibError
from calibration.quantize import Algo, CalibMethod, DropType, OverflowFix, Preset

console = Console()
err_console = Console(stderr=True)


class App(typer.Typer):
    """A Typer whose commands turn `CalibError` into one red line and exit code 1, never a traceback."""

    def __init__(self, **kw):
        super().__init__(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, **kw)

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def deco(fn):
            @functools.wraps(fn)
            def wrapped(*a, **k):
                try:
                    return fn(*a, **k)
                except CalibError as e:
                    err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
                    raise typer.Exit(1) from None
                except KeyboardInterrupt:
                    err_console.print("[red]interrupted[/red]")
                    raise typer.Exit(130) from None

            return register(wrapped)

        return deco


app = App(help="Synthetic calibration data and an INT8 post-training-quantization study.")
zoo_app = App(help="The CIFAR-10 classifiers (19, the study's five by default): list, train, export, evaluate.")
gan_app = App(help="DiStyleGAN: parameter counts, teacher sets, distillation, sampling speed.")
sets_app = App(help="Calibration sets on disk: validate, export and import through Datumaro.")
study_app = App(help="Study grids: run (resumable), report tables, plot heatmaps.")
app.add_typer(zoo_app, name="zoo")
app.add_typer(gan_app, name="distylegan")
app.add_typer(sets_app, name="sets")
bench_app = App(help="Speed under one protocol: models (FP32 vs INT8), sources, generators.")
app.add_typer(study_app, name="study")
app.add_typer(bench_app, name="benchmark")

DataDir = Annotated[Path | None, typer.Option(help="CIFAR-10 image-folder root <root>/{train,test}/<class>/*; "
                                                   "default $CALIB_CIFAR10_DIR, else torchvision's download.")]
WeightsPath = Annotated[Path | None, typer.Option("--weights", help="Weight file; default: the first folder of "
                                                                    "$CALIB_WEIGHTS_DIR (folders joined by os.pathsep, "
                                                                    "earlier wins) that holds one, then the official "
                                                                    "release (hash-checked).")]


def print_json(obj) -> None:
    from calibration.runs import to_jsonable

    console.print_json(json.dumps(to_jsonable(obj)))


# ---------------------------------------------------------------- zoo
@zoo_app.command("list")
def zoo_list(tiny: Annotated[bool, typer.Option(help="Include test-only tiny models.")] = False) -> None:
    """List registered models: parameters and MAdds (counted), published top-1, official weight file."""
    from rich.table import Column

    from calibration.zoo import list_models, model_complexity, model_info

    table = Table(*(Column(h, no_wrap=True) for h in ("model", "params", "MAdds (M)", "top-1 %", "study",
                                                      "release")),
                  caption="MAdds counted per 32x32 image; top-1 as published with the release")
    for name in list_models(include_tiny=tiny):
        info, (params, madds) = model_info(name), model_complexity(name)
        top1 = f"{info.published_top1:.2f}" if info.published_top1 is not None else "-"
        table.add_row(name, f"{params:,}", f"{madds / 1e6:.2f}", top1, "yes" if info.study else "",
                      f"{info.family}/{info.hash_prefix}" if info.family else "-")
    console.print(table)


@zoo_app.command("train")
def zoo_train(
    name: str,
    epochs: Annotated[int, typer.Option(min=1)] = 200,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    lr: Annotated[float, typer.Option(min=0.0)] = 0.1,
    warmup_epochs: Annotated[float, typer.Option(min=0.0)] = 0.0,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Run folder; default runs/zoo/<name>.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last.pt if present.")] = True,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps (smoke runs).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Train a zoo model with the zoo's recipe; resumes from its last checkpoint."""
    from calibration.data import load_split
    from calibration.train import TrainConfig, train_model
    from calibration.zoo import model_info

    model_info(name)
    cfg = TrainConfig(name, epochs, batch_size, lr, warmup_epochs=warmup_epochs, seed=seed, device=device,
                      max_steps=max_steps)
    summary = train_model(cfg, load_split("train", data_dir), out or Path("runs/zoo") / name,
                          test=load_split("test", data_dir), resume=resume)
    print_json(summary)


@zoo_app.command("export")
def zoo_export(
    name: str,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/export"),
    dynamic_batch: Annotated[bool, typer.Option(help="Batch-dynamic input instead of 1x3x32x32.")] = False,
    onnx: Annotated[bool, typer.Option(help="Also write an ONNX file.")] = False,
    fuse: Annotated[bool, typer.Option(help="Fuse RepVGG branches before export.")] = True,
    pretrained: Annotated[bool, typer.Option(help="Load trained weights (off: random, for speed tests).")] = True,
    weights: WeightsPath = None,
) -> None:
    """Export a zoo model to OpenVINO IR (FP32) and optionally ONNX."""
    from calibration.export import save_ir, to_onnx, to_openvino
    from calibration.weights import load_model

    model = load_model(name, weights, pretrained=pretrained, fuse=fuse)
    suffix = "_dyn" if dynamic_batch else ""
    xml = save_ir(to_openvino(model, dynamic_batch), out / f"{name}{suffix}_fp32.xml")
    console.print(f"wrote {xml}")
    if onnx:
        console.print(f"wrote {to_onnx(model, out / f'{name}{suffix}_fp32.onnx', dynamic_batch)}")


@zoo_app.command("eval")
def zoo_eval(name: str, weights: WeightsPath = None, data_dir: DataDir = None,
             fuse: Annotated[bool, typer.Option(help="Fuse RepVGG branches first.")] = True) -> None:
    """Top-1 accuracy of a zoo model in PyTorch on the CIFAR-10 test split, beside its weight card's."""
    from calibration.weights import zoo_test_accuracy

    r = zoo_test_accuracy(name, weights, data_dir, fuse)
    console.print(f"{name}: test accuracy {r['accuracy']:.4f} on {r['images']:,} images of {r['test_data']} "
                  f"(weights {r['weights_file']}, sha256 {r['weights_sha256'][:8]}"
                  f"{', official' if r['weights_official'] else ''})", highlight=False, soft_wrap=True)
    stated = [r["card_accuracy_same_data"]] if r["card_accuracy_same_data"] else r["card_accuracies"]
    for acc, data in stated:
        console.print(f"  weight card: {acc:.4f} on {data}", highlight=False, soft_wrap=True)
    if r["published_top1"] is not None:
        console.print(f"  published top-1: {r['published_top1']:.2f}", highlight=False)


# ---------------------------------------------------------------- distylegan
@gan_app.command("params")
def gan_params() -> None:
    """Parameter counts of the full-size generator and discriminator against the published figures."""
    from distylegan.networks import CONFIGS, Discriminator, Generator, count_parameters

    g_cfg, d_cfg = CONFIGS["cifar10"]
    for label, n, ref in (("generator", count_parameters(Generator(g_cfg)), 2.05e6),
                          ("discriminator", count_parameters(Discriminator(d_cfg)), 3.4e6)):
        console.print(f"{label}: {n:,} parameters; reference about {ref / 1e6:.2f}M; "
                      f"difference {100 * (n - ref) / ref:+.2f}%")


@gan_app.command("teacher-set")
def gan_teacher_set(
    teacher: Annotated[str, typer.Option(help="tiny[:SEED] | module:PATH.pt | stylegan2-ada:PATH.pkl")],
    out: Annotated[Path, typer.Option()],
    count: Annotated[int, typer.Option(min=10)] = 50_000,
    seed: int = 0,
    trust_teacher: Annotated[bool, typer.Option(help="Allow loading a StyleGAN2-ADA pickle.")] = False,
    device: str = "cpu",
) -> None:
    """Write (z, class, image) triplets from a teacher; resumes an interrupted build."""
    from distylegan.teacher_set import build_teacher_set
    from distylegan.teachers import build_teacher

    t = build_teacher(teacher, trust=trust_teacher)
    t.module.to(device)
    console.print(f"wrote {build_teacher_set(t, out, count, seed, device=device)}")


@gan_app.command("parity")
def gan_parity(
    teacher: Annotated[Path, typer.Option(help="NVIDIA's network pickle (snapshot or release file).")],
    golden: Annotated[Path, typer.Option(help="NVIDIA's G_ema outputs for it (.npz: z, c, w_*, img_*).")],
    trust_teacher: Annotated[bool, typer.Option(help="Allow loading a StyleGAN2-ADA pickle.")] = False,
    record_path: Annotated[Path, typer.Option("--record", envvar="CALIB_RECORDS")] = Path("runs/records.jsonl"),
) -> None:
    """Max and mean |native - NVIDIA| on golden outputs of NVIDIA's own code (float32 CPU)."""
    from calibration.runs import record, sha256_file
    from distylegan.stylegan2 import golden_parity

    r = golden_parity(teacher, golden, trust_teacher)
    table = Table("array", "max |native-NVIDIA|", "mean |native-NVIDIA|", "max |NVIDIA|")
    for name, d in r.items():
        table.add_row(name, f"{d['max_abs']:.3g}", f"{d['mean_abs']:.3g}", f"{d['ref_max_abs']:.3g}")
    console.print(table)
    record(record_path, "stylegan2_parity", {f"{n}_{k}": v for n, d in r.items() for k, v in d.items()},
           inputs={"teacher": sha256_file(teacher), "golden": sha256_file(golden)})


@gan_app.command("train")
def gan_train(
    out: Annotated[Path, typer.Option(help="Run folder (options saved before the first step).")],
    teacher_set: Annotated[Path | None, typer.Option(help="Teacher-set folder; omit for real data only.")] = None,
    real: Annotated[bool, typer.Option(help="Add the real CIFAR-10 adversarial term (calibration pool).")] = True,
    network: Annotated[str, typer.Option(help="cifar10 or tiny")] = "cifar10",
    projection: Annotated[bool, typer.Option(help="Class-projection term in D (needed without a teacher).")] = False,
    steps: Annotated[int, typer.Option(min=1)] = 20_000,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: float = 2e-4,
    w_adv: float = 1.0,
    w_fm: float = 1.0,
    w_pixel: float = 1.0,
    w_real: float = 0.5,
    snapshot_every: Annotated[int, typer.Option(min=1)] = 1000,
    seed: int = 0,
    device: str = "auto",
    resume: Annotated[bool, typer.Option(help="Continue the run in --out bit-for-bit.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Distill a teacher set into DiStyleGAN (or train it on real images alone when no teacher exists)."""
    from calibration.data import train_splits
    from distylegan.networks import save_generator
    from distylegan.teacher_set import load_teacher_set
    from distylegan.train import DistillConfig, distill

    cfg = DistillConfig(network, projection, steps, batch_size, lr, w_adv=w_adv, w_fm=w_fm, w_pixel=w_pixel,
                        w_real=w_real, snapshot_every=snapshot_every, seed=seed, device=device)
    ts = load_teacher_set(teacher_set) if teacher_set else None
    pool = train_splits(data_dir)["calibration_pool"] if real else None
    trainer = distill(cfg, out, ts, pool, resume=resume)
    save_generator(trainer.G, out / "generator-fp16.pt", half=True, extra={"step": trainer.step})
    console.print(f"done: {trainer.step} steps in {trainer.elapsed:.0f} s; generator in {out / 'generator.pt'}")


# ---------------------------------------------------------------- sets, generate, show, inspect
def _source_enum():
    from calibration.sources import list_sources

    return Enum("Source", {n: n for n in list_sources()}, type=str)


Source = _source_enum()


def _inversion_init_enum():
    from calibration.sources.inversion import INITS

    return Enum("InversionInit", {n: n for n in INITS}, type=str)


InversionInit = _inversion_init_enum()


def _engine_enum():
    from calibration.engines import list_engines

    return Enum("Engine", {n: n for n in list_engines()}, type=str)


Engine = _engine_enum()


RecordPath = Annotated[Path, typer.Option("--record", help="JSON-lines file that gets one row per run.",
                                          envvar="CALIB_RECORDS")]
DEFAULT_RECORD = Path("runs/records.jsonl")
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar (none is drawn outside a terminal).")]


@app.command("generate")
def generate_cmd(
    source: Annotated[Source, typer.Option(help="Calibration source (registry).")],
    per_class: Annotated[int, typer.Option(min=1, help="Images per class.")] = 500,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    out: Annotated[Path | None, typer.Option(help="Set folder; default runs/sets/<source>-<N>pc-s<seed>.")] = None,
    overwrite: bool = False,
    model: Annotated[str | None, typer.Option(help="inversion: zoo model to invert.")] = None,
    weights: Annotated[Path | None, typer.Option(help="inversion: weight file.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="distylegan: generator (default: shipped).")] = None,
    teacher: Annotated[Path | None, typer.Option(help="stylegan2-ada: NVIDIA pickle or native checkpoint.")] = None,
    trust_teacher: Annotated[bool | None, typer.Option("--trust-teacher", help="stylegan2-ada: allow it.")] = None,
    truncation: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="stylegan2-ada: psi.")] = None,
    iterations: Annotated[int | None, typer.Option(min=1, help="inversion: optimizer steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="inversion: images per batch.")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="inversion: learning rate.")] = None,
    init: Annotated[InversionInit | None, typer.Option(help="inversion: start from noise or from the images of "
                                                            "another source (same seed).")] = None,
    data_dir: DataDir = None,
    quiet: Quiet = False,
) -> None:
    """Write a calibration set: class folders of 32x32 PNG plus a manifest."""
    from calibration.progress import progress
    from calibration.sources import generate_set

    name = source.value
    out = out or Path("runs/sets") / f"{name}-{per_class}pc-s{seed}"
    opts = dict(model=model, weights=weights, checkpoint=checkpoint, teacher=teacher, trust_teacher=trust_teacher,
                truncation=truncation, iterations=iterations, batch_size=batch_size, lr=lr, data_dir=data_dir,
                init=init.value if init else None)
    with progress(f"generate {name}", per_class * 10, quiet) as advance:
        path = generate_set(name, per_class, seed, out, overwrite=overwrite, **opts,
                            progress=lambda done, total: advance(completed=done, total=total))
    console.print(f"wrote {per_class * 10} images to {path}")


@app.command("show")
def show_cmd(set_dir: Annotated[Path, typer.Argument(metavar="SET")], out: Annotated[Path, typer.Option()],
             per_class: Annotated[int, typer.Option(min=1)] = 12) -> None:
    """Save a labelled grid of a set, one row per class."""
    from calibration.sets import read_set
    from calibration.show import save_grid

    console.print(f"wrote {save_grid(read_set(set_dir, allow_unbalanced=True), out, per_class)}")


@app.command("inspect")
def inspect_cmd(set_dir: Annotated[Path, typer.Argument(metavar="SET")], model: str = "resnet20",
                weights: WeightsPath = None, data_dir: DataDir = None,
                record_path: RecordPath = DEFAULT_RECORD) -> None:
    """Set-quality metrics under a zoo classifier; printed and recorded."""
    from calibration.data import train_splits
    from calibration.quality import set_metrics
    from calibration.runs import record
    from calibration.sets import read_set
    from calibration.weights import load_model, resolve_weights

    cset = read_set(set_dir)
    net = load_model(model, weights, fuse=False)
    metrics = set_metrics(net, cset.images, cset.labels, train_splits(data_dir)["validation"])
    row = record(record_path, "inspect", {"set": str(set_dir), "source": cset.manifest["source"], "model": model,
                                           **metrics}, inputs={"set": cset.content_hash,
                                                               "weights": resolve_weights(model, weights).name})
    print_json({k: row[k] for k in ("source", "model", *metrics)})


@sets_app.command("validate")
def sets_validate(set_dir: Annotated[Path, typer.Argument(metavar="SET")]) -> None:
    """Check a set against its manifest (files, hashes, sizes, balance)."""
    from calibration.sets import read_set

    cset = read_set(set_dir)
    console.print(f"{set_dir}: ok, {len(cset)} images, source {cset.manifest['source']}, role {cset.role}")


class ExportFormat(str, Enum):
    cifar = "cifar"
    imagenet = "imagenet"


@sets_app.command("export")
def sets_export(set_dir: Annotated[Path, typer.Argument(metavar="SET")],
                format: Annotated[ExportFormat, typer.Option("--format")],
                out: Annotated[Path, typer.Option()], quiet: Quiet = False) -> None:
    """Convert a set with Datumaro (cifar: the CIFAR-10 pickle layout; imagenet: class folders)."""
    from calibration.progress import progress
    from calibration.sets import export_set

    with progress(f"export {set_dir} ({format.value})", None, quiet):
        path = export_set(set_dir, format.value, out)
    console.print(f"wrote {path}")


@sets_app.command("import")
def sets_import(src: Path, out: Annotated[Path, typer.Option()],
                format: Annotated[str | None, typer.Option("--format", help="Datumaro format (default: detect).")]
                = None, quiet: Quiet = False) -> None:
    """Read any Datumaro-readable CIFAR-10-labelled dataset into the set format."""
    from calibration.progress import progress
    from calibration.sets import import_set

    with progress(f"import {src}", None, quiet):
        path = import_set(src, out, format)
    console.print(f"wrote {path}")


# ---------------------------------------------------------------- quantize, evaluate, benchmark
@app.command("quantize")
def quantize_cmd(
    model: Annotated[str, typer.Option(help="Zoo name (trained weights) or path to the engine's FP32 file "
                                            "(.xml for openvino, .onnx for onnxruntime).")],
    calib: Annotated[Path, typer.Option(help="Calibration set folder.")],
    algo: Annotated[Algo, typer.Option()] = Algo.default,
    engine: Annotated[Engine, typer.Option()] = Engine.openvino,
    subset_size: Annotated[int | None, typer.Option(min=1, help="Calibration images, drawn class-balanced "
                                                                "with --seed (default: all).")] = None,
    preset: Annotated[Preset | None, typer.Option(help="Activations symmetric (performance) or asymmetric (mixed); "
                                                       "default: the engine's own (openvino performance, "
                                                       "onnxruntime mixed).")] = None,
    fast_bias_correction: Annotated[bool, typer.Option("--fast-bias-correction/--no-fast-bias-correction")] = True,
    max_drop: Annotated[float, typer.Option(min=0.0)] = 0.01,
    drop_type: Annotated[DropType, typer.Option()] = DropType.absolute,
    calibrate_method: Annotated[CalibMethod | None, typer.Option(help="Activation ranges; onnxruntime: minmax "
                                                                      "(default), entropy, percentile; openvino: "
                                                                      "nncf (default) or minmax.")] = None,
    ranking_subset_size: Annotated[int | None, typer.Option(min=1, help="accuracy-aware: validation images NNCF "
                                                                        "ranks layers on (default: all).")] = None,
    overflow_fix: Annotated[OverflowFix | None, typer.Option(help="Weights on half the INT8 range against 8-bit "
                                                                  "saturation on CPUs without VNNI; default: the "
                                                                  "engine's own (openvino first_layer_only, "
                                                                  "onnxruntime disable).")] = None,
    calibration_batch: Annotated[int, typer.Option(min=1, help="Images per calibration item; statistics stay per "
                                                             "image, so the result equals batch 1 up to float "
                                                             "rounding, sooner.")] = 1,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="Output folder; default runs/quantize/<model>-<algo>-<set>.")] = None,
    evaluate: Annotated[bool, typer.Option(help="Also measure FP32 and INT8 test accuracy.")] = False,
    weights: WeightsPath = None,
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
) -> None:
    """Quantize to INT8 with any engine that quantizes: NNCF (default or accuracy-aware), ONNX Runtime (static QDQ)."""
    from calibration.pipeline import QuantizeRequest, run_quantize

    req = QuantizeRequest(model=model, calib=calib, algo=algo.value, engine=engine.value, subset_size=subset_size,
                          preset=preset.value if preset else None, fast_bias_correction=fast_bias_correction,
                          max_drop=max_drop, drop_type=drop_type.value,
                          calibrate_method=calibrate_method.value if calibrate_method else None, seed=seed,
                          weights=weights, data_dir=data_dir, ranking_subset_size=ranking_subset_size,
                          overflow_fix=overflow_fix.value if overflow_fix else None,
                          calibration_batch=calibration_batch)
    row = run_quantize(req, out, evaluate=evaluate, record_path=record_path)
    print_json(row)


@app.command("evaluate")
def evaluate_cmd(model: Annotated[str, typer.Argument(help="Model file (.xml, .onnx, .pt2) or zoo name.")],
                 batch: Annotated[int, typer.Option(min=1)] = 50, weights: WeightsPath = None,
                 engine: Annotated[Engine, typer.Option(help="For a zoo name: the engine it is exported to.")]
                 = Engine.openvino,
                 data_dir: DataDir = None, record_path: RecordPath = DEFAULT_RECORD) -> None:
    """Top-1 accuracy on the CIFAR-10 test split with the engine that reads the file (OpenVINO: all requests of
    an AsyncInferQueue kept busy)."""
    from calibration.pipeline import run_evaluate

    row = run_evaluate(model, batch=batch, weights=weights, data_dir=data_dir, record_path=record_path,
                       engine=engine.value)
    console.print(f"{model}: accuracy {row['accuracy']:.4f} on {row['images']} test images "
                  f"({row['eval_fps']:.0f} images/s, engine {row['engine']})")


@app.command("diagnose")
def diagnose_cmd(
    model: Annotated[str, typer.Option(help="Zoo name (trained weights) or path to an FP32 .xml.")],
    calib: Annotated[list[Path], typer.Option(help="Calibration set folder; repeat the option to compare sets.")],
    reference: Annotated[str, typer.Option(help="Images the ranges are judged on: 'validation' (held out from "
                                                "train) or a set folder; never the test split.")] = "validation",
    engine: Annotated[Engine, typer.Option(help="openvino only: ranges are read from NNCF's IR.")] = Engine.openvino,
    subset_size: Annotated[int | None, typer.Option(min=1, help="Calibration images (default: all).")] = None,
    preset: Annotated[Preset, typer.Option()] = Preset.performance,
    fast_bias_correction: Annotated[bool, typer.Option("--fast-bias-correction/--no-fast-bias-correction")] = True,
    seed: int = 0,
    per_layer_accuracy: Annotated[int, typer.Option(min=0, help="Validation accuracy with each of the worst K "
                                                                "quantizers removed (that input kept FP32); 0: off.")]
    = 0,
    rank_by: Annotated[RankBy, typer.Option(help="What 'worst' means in the ranked table.")] = RankBy.local_sqnr,
    top: Annotated[int, typer.Option(min=1, help="Rows printed per set (files hold every layer).")] = 10,
    out: Annotated[Path | None, typer.Option(help="Output folder; default runs/diagnose/<model>.")] = None,
    weights: WeightsPath = None,
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
    quiet: Quiet = False,
) -> None:
    """Which layers a calibration set gets wrong: each quantizer's range, the share of real values it clips,
    the share of its range they use, and the INT8 error against FP32, worst first."""
    import pandas as pd

    from calibration.diagnose import ranked_table, run_diagnose

    out = out or Path("runs/diagnose") / Path(model).stem
    r = run_diagnose(model, calib, out, reference, per_layer_accuracy, rank_by, quiet, record_path,
                     engine=engine.value, subset_size=subset_size, preset=preset.value,
                     fast_bias_correction=fast_bias_correction, seed=seed, weights=weights, data_dir=data_dir)
    df = pd.DataFrame(r["rows"])
    wide = console if console.is_terminal else Console(width=200)  # files and pipes get every column
    for name, part in df.groupby("set", sort=False):
        t = ranked_table(part.to_dict("records"), top)
        table = Table(*t.columns, title=f"{model} calibrated with {name} ({part.source.iloc[0]}): worst "
                      f"{len(t)} of {len(part)} quantizers by {RankBy(rank_by).value}, on {r['summary']['reference']} "
                      f"({r['summary']['reference_images']} images)")
        for row in t.itertuples(index=False):
            table.add_row(*("-" if pd.isna(v) else str(v) for v in row))
        wide.print(table)
    for p in r["written"]:
        console.print(f"wrote {p}")


@bench_app.command("models")
def benchmark_models_cmd(
    models: Annotated[str, typer.Option(help="Comma-separated zoo names, or 'all'.")] = "all",
    engines: Annotated[str, typer.Option(help="Comma-separated engines (registry), e.g. openvino,onnxruntime.")]
    = "openvino",
    duration: Annotated[float, typer.Option(min=0.5, help="Seconds per timed run.")] = 3.0,
    repeats: Annotated[int, typer.Option(min=3)] = 3,
    batch: Annotated[int, typer.Option(min=1, help="Images per throughput request.")] = 1,
    requests: Annotated[int | None, typer.Option(min=1, help="Throughput requests in flight (default: one per "
                                                             "core).")] = None,
    pytorch: Annotated[bool, typer.Option(help="Also time PyTorch FP32 under the same protocol.")] = True,
    trained: Annotated[bool, typer.Option(help="Use trained weights (speed does not need them).")] = False,
    app_check: Annotated[str | None, typer.Option(help="Model whose INT8 IR is also timed by `calib evaluate` "
                                                       "and benchmark_app; their ratio is printed.")] = "resnet20",
    out: Annotated[Path, typer.Option()] = Path("runs/benchmark"),
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
) -> None:
    """FP32 vs INT8 speed for zoo models under one protocol, plus the evaluate/benchmark_app ratio."""
    from calibration.benchmark import Protocol
    from calibration.pipeline import benchmark_models, evaluate_vs_benchmark_app
    from calibration.zoo import list_models

    names = list_models() if models == "all" else [m.strip() for m in models.split(",")]
    protocol = Protocol(duration_s=duration, repeats=repeats, batch=batch, requests=requests)
    rows = benchmark_models(names, [e.strip() for e in engines.split(",")], protocol, out, pytorch=pytorch,
                            trained=trained, record_path=record_path)
    table = Table("model", "engine", "FP32 tput", "INT8 tput", "INT8/FP32", "FP32 lat", "INT8 lat", "FP32 MB",
                  "INT8 MB", "PyTorch tput", "PyTorch lat", caption=f"img/s; {protocol.describe()}")
    for r in rows:
        table.add_row(r["model"], r["engine"], *(_num(r.get(k), d) for k, d in (
            ("fp32_fps", 0), ("int8_fps", 0), ("speedup", 2), ("fp32_latency_fps", 0), ("int8_latency_fps", 0))),
            _num(r.get("fp32_bytes"), 2, 1e6), _num(r.get("int8_bytes"), 2, 1e6), _num(r.get("pytorch_fps"), 0),
            _num(r.get("pytorch_latency_fps"), 0))
    console.print(table)
    if app_check:
        _print_app_ratio(evaluate_vs_benchmark_app(app_check, out, data_dir=data_dir, record_path=record_path))


def _num(value, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def _print_app_ratio(r: dict) -> None:
    console.print(f"{r['model']} INT8 IR, batch {r['batch']}, {r['NUM_STREAMS']} streams, {r['requests']} requests, "
                  f"{r['INFERENCE_NUM_THREADS']} threads, precision {r['INFERENCE_PRECISION_HINT']}: calib evaluate "
                  f"{r['eval_fps']:.0f} img/s, benchmark_app {r['benchmark_app_fps']:.0f} img/s, "
                  f"ratio {r['ratio']:.3f}", highlight=False)


@bench_app.command("evaluate-vs-app")
def benchmark_evaluate_vs_app_cmd(
    model: Annotated[str, typer.Argument(help="Zoo name (its INT8 IR is made with random weights) or an .xml.")]
    = "resnet20",
    batch: Annotated[int, typer.Option(min=1)] = 50,
    seconds: Annotated[int, typer.Option(min=1, help="benchmark_app seconds per round.")] = 5,
    repeats: Annotated[int, typer.Option(min=1, help="Rounds, evaluator and benchmark_app alternating.")] = 3,
    out: Annotated[Path, typer.Option()] = Path("runs/benchmark"),
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
) -> None:
    """`calib evaluate` against benchmark_app on the same IR at the same batch, precision and device settings."""
    from calibration.pipeline import evaluate_vs_benchmark_app

    _print_app_ratio(evaluate_vs_benchmark_app(model, out, data_dir, seconds, batch, repeats,
                                               record_path=record_path))


@bench_app.command("engines")
def benchmark_engines_cmd(
    calib: Annotated[Path, typer.Option(help="Calibration set folder.")],
    model: str = "resnet20",
    subset_size: Annotated[int | None, typer.Option(min=1)] = None,
    duration: Annotated[float, typer.Option(min=0.5)] = 3.0,
    repeats: Annotated[int, typer.Option(min=3)] = 3,
    batch: Annotated[int, typer.Option(min=1, help="Images per throughput request.")] = 1,
    requests: Annotated[int | None, typer.Option(min=1, help="Throughput requests in flight (default: one per "
                                                             "core).")] = None,
    out: Annotated[Path, typer.Option()] = Path("runs/engines"),
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
) -> None:
    """Every engine from the same set: FP32 and INT8 accuracy, throughput and latency under one protocol, size."""
    from calibration.benchmark import Protocol
    from calibration.pipeline import compare_engines

    protocol = Protocol(duration_s=duration, repeats=repeats, batch=batch, requests=requests)
    rows = compare_engines(model, calib, protocol, out, subset_size, data_dir, record_path)
    table = Table("engine", "FP32 acc", "INT8 acc", "FP32 tput", "INT8 tput", "INT8/FP32", "FP32 lat", "INT8 lat",
                  "FP32 MB", "INT8 MB", caption=f"tput, lat: img/s; {protocol.describe()}")
    for r in rows:
        table.add_row(r["engine"], *(_num(r.get(k), d) for k, d in (
            ("fp32_accuracy", 4), ("int8_accuracy", 4), ("fp32_fps", 0), ("int8_fps", 0), ("speedup", 2),
            ("fp32_latency_fps", 0), ("int8_latency_fps", 0))),
            _num(r.get("fp32_bytes"), 2, 1e6), _num(r.get("int8_bytes"), 2, 1e6))
    console.print(table)


@bench_app.command("sources")
def benchmark_sources_cmd(
    fractal_images: Annotated[int, typer.Option(min=10)] = 500,
    inversion_images: Annotated[int, typer.Option(min=1)] = 20,
    inversion_iterations: Annotated[int, typer.Option(min=1)] = 400,
    model: str = "resnet20",
    weights: WeightsPath = None,
    record_path: RecordPath = DEFAULT_RECORD,
) -> None:
    """Fractal images per second and inversion seconds per image, measured on this machine."""
    from calibration.pipeline import benchmark_sources

    r = benchmark_sources(fractal_images, inversion_images, inversion_iterations, model, weights, record_path)
    console.print(f"fractal: {r['fractal_images_per_s']:.0f} images/s ({fractal_images} images)")
    console.print(f"inversion ({model}, {inversion_iterations} iterations, batch {r['inversion_batch']}): "
                  f"{r['inversion_s_per_image']:.2f} s/image")


@bench_app.command("inversion")
def benchmark_inversion_cmd(
    models: Annotated[str, typer.Option(help="Comma-separated zoo models.")] = "resnet20",
    methods: Annotated[str, typer.Option(help="Comma-separated: calib, calib-old, mct, mct-matched, or "
                                              "TOOL:k=v,... (e.g. calib:iterations=100,mct).")] = "calib,mct",
    images: Annotated[int, typer.Option(min=10, help="Images per set (a multiple of 10).")] = 300,
    seeds: Annotated[str, typer.Option(help="Comma-separated set seeds.")] = "0",
    out: Annotated[Path, typer.Option(help="Sets and quantized models.")] = Path("runs/inversion"),
    markdown: Annotated[Path | None, typer.Option(help="Also write the summary table here.")] = None,
    weights: WeightsPath = None,
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
) -> None:
    """calib's inversion vs Sony MCT's data generation: images/s and INT8 accuracy (same NNCF settings, test
    split). MCT runs in its own venv (scripts/mct-venv.sh); rows already recorded are skipped."""
    from calibration.peers.inversion_bench import benchmark_inversion, markdown_table, split_methods, summary
    from calibration.runs import atomic_write_bytes, read_jsonl

    method_list = split_methods(methods)
    model_list = [m.strip() for m in models.split(",") if m.strip()]
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    benchmark_inversion(model_list, method_list, images, seed_list, out, weights, data_dir, record_path,
                        log=lambda msg: console.print(msg, highlight=False))
    rows = [r for r in read_jsonl(record_path) if r.get("kind") == "benchmark_inversion"
            and r["model"] in model_list and r["method"] in method_list and r["images"] == images]
    text = markdown_table(summary(rows))
    console.print(text, highlight=False, markup=False)
    if markdown is not None:
        atomic_write_bytes(markdown, text.encode())


@bench_app.command("inversion-speed")
def benchmark_inversion_speed_cmd(
    model: str = "resnet20",
    images: Annotated[int, typer.Option(min=10, help="Images per setting (a multiple of 10).")] = 100,
    with_mct: Annotated[bool, typer.Option("--with-mct", help="Also time MCT's defaults (its venv).")] = False,
    weights: WeightsPath = None,
    record_path: RecordPath = DEFAULT_RECORD,
) -> None:
    """Seconds per image of inversion before and after the speed-up, in one run, and their ratio."""
    from calibration.peers.inversion_bench import SPEED_OLD_METHOD, inversion_speed

    variants = {"old": SPEED_OLD_METHOD, **({"mct": "mct"} if with_mct else {}), "new": "calib"}
    r = inversion_speed(model, images, weights, variants, record_path)
    for name in variants:
        console.print(f"{name}: {r[f'{name}_s_per_image']:.3f} s/image ({r[f'{name}_method']}: "
                      f"{json.dumps(r[f'{name}_settings'])})", highlight=False)
    if with_mct:
        console.print(f"ratio mct/new: {r['mct_s_per_image'] / r['new_s_per_image']:.2f}x")
    console.print(f"ratio old/new: {r['ratio']:.2f}x ({model}, {images} images, {r['torch_threads']} threads)")


@bench_app.command("generators")
def benchmark_generators_cmd(
    images: Annotated[int, typer.Option(min=10)] = 200,
    batch: Annotated[int, typer.Option(min=1)] = 50,
    record_path: RecordPath = DEFAULT_RECORD,
) -> None:
    """Sampling speed on this CPU: DiStyleGAN vs the native StyleGAN2 generator (CIFAR-10 configuration)."""
    from distylegan.bench import benchmark_generators

    r = benchmark_generators(images, batch, record_path)
    console.print(f"DiStyleGAN: {r['distylegan_images_per_s']:.0f} images/s ({r['distylegan_params']:,} parameters)")
    console.print(f"StyleGAN2 (native, CIFAR-10 config): {r['stylegan2_images_per_s']:.1f} images/s "
                  f"({r['stylegan2_params']:,} parameters)")
    console.print(f"ratio DiStyleGAN / StyleGAN2: {r['ratio']:.1f}x")


# ---------------------------------------------------------------- study
class Executor(str, Enum):
    local = "local"
    ray = "ray"


@study_app.command("run")
def study_run(grid: Annotated[Path, typer.Argument(help="Grid TOML file.")],
              out: Annotated[Path | None, typer.Option(help="Run folder; default runs/study/<grid name>.")] = None,
              executor: Annotated[Executor, typer.Option()] = Executor.local,
              address: Annotated[str | None, typer.Option(help="Ray cluster address (ray executor).")] = None,
              models: Annotated[str | None, typer.Option(help="Only these models (comma-separated).")] = None,
              sources: Annotated[str | None, typer.Option(help="Only these sources (comma-separated).")] = None,
              data_dir: DataDir = None,
              jobs: Annotated[int, typer.Option(help="Local worker processes for cells that time nothing; timed "
                                                     "cells always run alone.")] = 1) -> None:
    """Run a grid; a rerun runs every cell without an ok row (so a killed run resumes, skipped cells retry)."""
    from experiments.grid import load_grid
    from experiments.runner import run_study

    out = out or Path("runs/study") / load_grid(grid).name
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    s = run_study(grid, out, executor.value, address, data_dir, split(models), split(sources), jobs=jobs)
    console.print(f"{out}: {s['cells']} cells ({s['ran']} run now, {s['skipped_done']} already done); "
                  f"{s['ok']} ok, {s['skipped']} skipped, {s['errors']} errors")
    console.print(f"wall time {s['wall_seconds']:.0f} s; peak resident memory {s['peak_rss_mib']:.0f} MiB "
                  f"({s['peak_rss_mib'] / 1024:.2f} GiB, all processes together)")


@study_app.command("check")
def study_check(run: Path,
                cells: Annotated[int, typer.Option(help="How many OpenVINO cells to recheck, drawn at random; "
                                                        "0: all.")] = 5,
                seed: Annotated[int, typer.Option(help="Seed of the draw.")] = 0,
                tolerance: Annotated[float, typer.Option(help="Largest accepted |difference| in accuracy.")] = 0.003,
                out: Annotated[Path | None, typer.Option(help="CSV of the comparison; default <run>/check.csv.")]
                = None,
                models: Annotated[str | None, typer.Option(help="Only cells of these models (comma-separated).")]
                = None,
                sources: Annotated[str | None, typer.Option(help="Only cells of these sources (comma-separated).")]
                = None,
                batch_1: Annotated[bool, typer.Option("--batch-1/--as-run", help="Calibrate with batch-1 items, "
                                                      "or with the cell's calibration batch.")] = False) -> None:
    """Redo cells with NNCF and OpenVINO called directly (same set, subset, seed, options) and compare."""
    from experiments.check import check_run

    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    table = check_run(run, cells, seed, tolerance, out, split(models), split(sources), batch_1)
    console.print(table.drop(columns=["cell", "calib_hash"]).to_string(index=False), soft_wrap=True, highlight=False)
    bad = int((~table.within_tolerance).sum())
    console.print(f"{len(table) - bad} of {len(table)} cells within {tolerance}; largest |difference| "
                  f"{table.abs_difference.max():.4f}; written to {out or run / 'check.csv'}", soft_wrap=True)
    if bad:
        err_console.print(f"[red]error:[/red] {bad} cells differ by more than {tolerance}")
        raise typer.Exit(1)


@study_app.command("report")
def study_report(run: Path, out: Annotated[Path | None, typer.Option(help="Default <run>/report.")] = None,
                 html: Annotated[bool, typer.Option("--html", help="Also write report.html: one self-contained "
                                                              "page with every table, plot and grid.")] = False,
                 grids: Annotated[Path | None, typer.Option(help="--html: folder of <source>.png sample grids, "
                                                                 "for runs without their sets/ folder.")] = None,
                 quality: Annotated[Path | None, typer.Option(help="--html: `calib inspect` rows (JSON lines); "
                                                                   "default <run>/inspect.jsonl.")] = None,
                 diagnose: Annotated[Path | None, typer.Option(help="--html: folder of `calib diagnose` outputs; "
                                                                    "default <run>/diagnose.")] = None,
                 screenshot: Annotated[bool, typer.Option(help="--html: also report.png, the page's top as "
                                                               "headless Chromium renders it.")] = False,
                 quiet: Quiet = False) -> None:
    """Write Table 1 and Table 2 (CSV and Markdown) from a run folder; with --html, one HTML page of it all."""
    from experiments.report import write_report

    for p in write_report(run, out):
        console.print(f"wrote {p}")
    if html:
        from experiments.html import screenshot as shoot
        from experiments.html import write_html

        page = write_html(run, out, grids, quality, diagnose, quiet)
        console.print(f"wrote {page}")
        if screenshot:
            console.print(f"wrote {shoot(page, page.with_suffix('.png'))}")


@study_app.command("plot")
def study_plot(run: Path, out: Annotated[Path | None, typer.Option(help="Default <run>/plots.")] = None) -> None:
    """Write seaborn heatmaps from a run folder."""
    from experiments.plot import write_plots

    for p in write_plots(run, out):
        console.print(f"wrote {p}")


def main() -> None:
    app(prog_name="calib")


if __name__ == "__main__":
    sys.exit(main())
