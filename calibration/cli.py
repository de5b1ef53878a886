"""The `calib` command line: a thin layer of typer sub-apps over library functions.

Output for people and for pipes: stdout carries the command's result alone (a short summary, or with
`--format json|csv` the rows as recorded, whole and one per line); progress goes to stderr (a bar on a terminal,
a line every few seconds elsewhere); other libraries' output goes to stderr with `--verbose`, else to the run
folder's `calib.log` where there is one. Every problem is one line on stderr: exit code 2 for an option refused
before any work (click's usage errors and `OptionError`), 1 for a failure while working.
"""

from __future__ import annotations

import csv
import functools
import inspect
import io
import json
import sys
from collections.abc import Callable
from contextvars import ContextVar
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from calibration.diagnose import RankBy
from calibration.errors import CalibError, OptionError
from calibration.quantize import Algo, CalibMethod, DropType, OverflowFix, Preset

console = Console()  # results: bound to the command's stdout while it runs
err_console = Console(stderr=True)
HELP_WIDTH = 120  # help text wraps at this width (or the terminal's, if narrower); option names never shorten
PIPE_WIDTH = 100_000  # a result printed to a pipe or file is never wrapped or cut
# click's exception base, whichever click typer runs on (its own copy, or click itself)
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_RUN: ContextVar[dict] = ContextVar("calib_run")  # this command's --quiet and library log


class Group(TyperGroup):
    """Usage errors (unknown option, wrong type, value out of range) as one line on stderr, exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as e:
            where = f" (see {e.ctx.command_path} --help)" if getattr(e, "ctx", None) is not None else ""
            message = " ".join(e.format_message().split())
            print(f"error: {message}{where}", file=sys.stderr)
            sys.exit(e.exit_code)
        except typer.Abort:
            print("aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr (a bar on a terminal, a line "
                                                           "every 10 s elsewhere).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show other libraries' logs and bars (NNCF, "
                                                               "OpenVINO) on stderr instead of the run's log.")]


def _with_common_options(fn: Callable) -> tuple[Callable, bool]:
    """`fn`'s signature plus `--quiet` (unless it has one) and `--verbose`; returns (signature holder, has quiet)."""
    sig = inspect.signature(fn, eval_str=True)
    params = list(sig.parameters.values())
    has_quiet = "quiet" in sig.parameters
    extra = [] if has_quiet else [inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False,
                                                    annotation=Quiet)]
    extra.append(inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Verbose))
    return sig.replace(parameters=[*params, *extra]), has_quiet


class App(typer.Typer):
    """A Typer whose commands all take `--quiet` and `--verbose`, keep stdout for their result, and turn
    `CalibError` into one red line (exit code 1, or 2 for `OptionError`), never a traceback."""

    def __init__(self, **kw):
        super().__init__(cls=Group, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                         rich_markup_mode=None, context_settings={"max_content_width": HELP_WIDTH}, **kw)

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def deco(fn):
            signature, has_quiet = _with_common_options(fn)

            @functools.wraps(fn)
            def wrapped(*a, **k):
                from calibration.progress import library_output

                quiet = k["quiet"] if has_quiet else k.pop("quiet")
                verbose = k.pop("verbose")
                stdout = sys.stdout
                console.file = stdout
                console.width = PIPE_WIDTH if not stdout.isatty() else None
                run = {"quiet": quiet, "log": None}
                token = _RUN.set(run)
                try:
                    with library_output(verbose) as log:
                        run["log"] = log
                        return fn(*a, **k)
                except CalibError as e:
                    err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
                    raise typer.Exit(e.exit_code) from None
                except KeyboardInterrupt:
                    err_console.print("[red]interrupted[/red]")
                    raise typer.Exit(130) from None
                finally:
                    _RUN.reset(token)
                    console.file = None
                    console.width = None

            wrapped.__signature__ = signature
            wrapped.__annotations__ = {**getattr(fn, "__annotations__", {}), "verbose": Verbose,
                                       **({} if has_quiet else {"quiet": Quiet})}
            return register(wrapped)

        return deco


def _quiet() -> bool:
    return bool(_RUN.get({}).get("quiet", False))


def _progress(description: str):
    """A spinner with the time elapsed for a step that reports no counts (a line every 10 s off a terminal)."""
    from calibration.progress import progress

    return progress(description, None, _quiet())


def keep_log(folder: Path) -> None:
    """Keep what other libraries said during this command in `<folder>/calib.log` (nothing with --verbose)."""
    log = _RUN.get({}).get("log")
    if log is not None and folder.is_dir():
        log.save(folder / "calib.log")


app = App(help="Synthetic calibration data and an INT8 post-training-quantization study.")
zoo_app = App(help="The CIFAR-10 classifiers (19, the study's five by default): list, train, export, eval.")
gan_app = App(help="DiStyleGAN: parameter counts, teacher sets, distillation, sampling speed.")
sets_app = App(help="Calibration sets on disk: validate, export and import through Datumaro.")
study_app = App(help="Study grids: run (resumable), check, report tables, plot heatmaps.")
app.add_typer(zoo_app, name="zoo")
app.add_typer(gan_app, name="distylegan")
app.add_typer(sets_app, name="sets")
bench_app = App(help="Speed under one protocol: models (FP32 vs INT8), engines, sources, generators, inversion.")
app.add_typer(study_app, name="study")
app.add_typer(bench_app, name="benchmark")

DataDir = Annotated[Path | None, typer.Option(help="CIFAR-10 image-folder root <root>/{train,test}/<class>/*; "
                                                   "default $CALIB_CIFAR10_DIR, else torchvision's download.")]
WeightsPath = Annotated[Path | None, typer.Option("--weights", help="Weight file; default: the first folder of "
                                                                    "$CALIB_WEIGHTS_DIR (folders joined by os.pathsep, "
                                                                    "earlier wins) that holds one, then the official "
                                                                    "release (hash-checked).")]
RecordPath = Annotated[Path, typer.Option("--record", help="JSON-lines file that gets one row per run.",
                                          envvar="CALIB_RECORDS")]
DEFAULT_RECORD = Path("runs/records.jsonl")
Seed = Annotated[int, typer.Option(min=0, help="Seed of every random choice.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace what calib wrote in an existing --out "
                                                            "(only a folder calib made; other files stay).")]


class Format(str, Enum):
    text = "text"
    json = "json"
    csv = "csv"


OutputFormat = Annotated[Format, typer.Option("--format", help="text: a short summary for people; json or csv: "
                                                                "the result rows, as recorded.")]


def _stdout():
    return console.file


def print_json(obj) -> None:
    """One JSON document on stdout: coloured on a terminal, plain text in a pipe."""
    from calibration.runs import to_jsonable

    text = json.dumps(to_jsonable(obj), indent=1)
    if console.is_terminal:
        console.print_json(text)
    else:
        _stdout().write(text + "\n")


def _records(df) -> list[dict]:
    """A DataFrame's rows as plain dicts, missing values as None (JSON null)."""
    return df.astype(object).where(df.notna(), None).to_dict("records")


def _csv_value(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, dict | list) else ("" if v is None else v)


def emit(rows: dict | list[dict], fmt: Format, text: Callable[[], None]) -> None:
    """The command's result: `text()` for people, or the rows as JSON (one object, or a list) or CSV."""
    from calibration.runs import to_jsonable

    if fmt == Format.text:
        text()
        return
    data = to_jsonable(rows)
    if fmt == Format.json:
        _stdout().write(json.dumps(data, indent=1) + "\n")
        return
    data = [data] if isinstance(data, dict) else data
    columns = list(dict.fromkeys(k for r in data for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_value(r.get(k)) for k in columns} for r in data)
    _stdout().write(buf.getvalue())


def result_table(*headers: str, caption: str | None = None, title: str | None = None) -> Table:
    """A rich table whose cells never wrap or shorten (in a pipe the console is as wide as the table)."""
    from rich.table import Column

    return Table(*(Column(h, no_wrap=True) for h in headers), caption=caption, title=title)


def say(text: str) -> None:
    """One line of result text for people, printed as it is."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


# ---------------------------------------------------------------- zoo
@zoo_app.command("list")
def zoo_list(tiny: Annotated[bool, typer.Option(help="Include test-only tiny models.")] = False,
             format: OutputFormat = Format.text) -> None:
    """List registered models: parameters and MAdds (counted), published top-1, official weight file."""
    from calibration.zoo import list_models, model_complexity, model_info

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


ModelArg = Annotated[str | None, typer.Argument(metavar="MODEL", hidden=True, show_default=False,
                                                help="The same as --model.")]


def _one_model(positional: str | None, option: str | None) -> str:
    """The model named by --model or, as older scripts do, by position."""
    if positional and option and positional != option:
        raise OptionError(f"two models given: {positional} and --model {option}; give one, with --model")
    model = option or positional
    if not model:
        raise OptionError("no model given: pass --model NAME (a zoo name or, where a file is read, its path)")
    return model


@zoo_app.command("train")
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
    from calibration.data import load_split, train_splits
    from calibration.train import TrainConfig, train_model
    from calibration.zoo import model_info

    name = _one_model(name, model)
    model_info(name)
    cfg = TrainConfig(name, epochs, batch_size, lr, warmup_epochs=warmup_epochs, seed=seed, device=device,
                      max_steps=max_steps)
    train = train_splits(data_dir)["calibration_pool"] if hold_out_validation else load_split("train", data_dir)
    with _progress(f"zoo train {name}"):
        summary = train_model(cfg, train, out or Path("runs/zoo") / name, test=load_split("test", data_dir),
                              resume=resume)
    print_json(summary)


@zoo_app.command("export")
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
    from calibration.export import save_ir, to_onnx, to_openvino
    from calibration.weights import load_model

    name = _one_model(name, model)
    stem = out / f"{name}{'' if dynamic_batch else '_b1'}_fp32"
    targets = [stem.with_suffix(".xml"), *([stem.with_suffix(".onnx")] if onnx else [])]
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file; give a folder")
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise OptionError(f"{', '.join(existing)} already exists; choose another --out or pass --overwrite")
    net = load_model(name, weights, pretrained=pretrained, fuse=fuse)
    say(f"wrote {save_ir(to_openvino(net, dynamic_batch), targets[0])}")
    if onnx:
        say(f"wrote {to_onnx(net, targets[1], dynamic_batch)}")


@zoo_app.command("eval")
def zoo_eval(name: ModelArg = None,
             model: Annotated[str | None, typer.Option(help="Zoo model to evaluate.")] = None,
             weights: WeightsPath = None, data_dir: DataDir = None,
             fuse: Annotated[bool, typer.Option(help="Fuse RepVGG branches first.")] = True,
             record_path: RecordPath = DEFAULT_RECORD, format: OutputFormat = Format.text) -> None:
    """Top-1 accuracy of a zoo model in PyTorch on the CIFAR-10 test split, beside its weight card's."""
    from calibration.progress import progress
    from calibration.runs import record
    from calibration.weights import zoo_test_accuracy

    name = _one_model(name, model)
    with progress(f"zoo eval {name}", None, _quiet()):
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
    seed: Seed = 0,
    trust_teacher: Annotated[bool, typer.Option(help="Allow loading a StyleGAN2-ADA pickle.")] = False,
    device: str = "cpu",
) -> None:
    """Write (z, class, image) triplets from a teacher; resumes an interrupted build."""
    from distylegan.teacher_set import build_teacher_set
    from distylegan.teachers import build_teacher

    t = build_teacher(teacher, trust=trust_teacher)
    t.module.to(device)
    with _progress(f"teacher set, {count:,} images"):
        path = build_teacher_set(t, out, count, seed, device=device)
    say(f"wrote {path}")


@gan_app.command("parity")
def gan_parity(
    teacher: Annotated[Path, typer.Option(help="NVIDIA's network pickle (snapshot or release file).")],
    golden: Annotated[Path, typer.Option(help="NVIDIA's G_ema outputs for it (.npz: z, c, w_*, img_*).")],
    trust_teacher: Annotated[bool, typer.Option(help="Allow loading a StyleGAN2-ADA pickle.")] = False,
    record_path: RecordPath = DEFAULT_RECORD,
) -> None:
    """Max and mean |native - NVIDIA| on golden outputs of NVIDIA's own code (float32 CPU)."""
    from calibration.runs import record, sha256_file
    from distylegan.stylegan2 import golden_parity

    r = golden_parity(teacher, golden, trust_teacher)
    shown = result_table("array", "max |native-NVIDIA|", "mean |native-NVIDIA|", "max |NVIDIA|")
    for name, d in r.items():
        shown.add_row(name, f"{d['max_abs']:.3g}", f"{d['mean_abs']:.3g}", f"{d['ref_max_abs']:.3g}")
    console.print(shown)
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
    batch_size: Annotated[int, typer.Option("--batch", min=1, help="Images per training step.")] = 128,
    lr: Annotated[float, typer.Option(min=0.0)] = 2e-4,
    w_adv: Annotated[float, typer.Option(min=0.0)] = 1.0,
    w_fm: Annotated[float, typer.Option(min=0.0)] = 1.0,
    w_pixel: Annotated[float, typer.Option(min=0.0)] = 1.0,
    w_real: Annotated[float, typer.Option(min=0.0)] = 0.5,
    snapshot_every: Annotated[int, typer.Option(min=1)] = 1000,
    seed: Seed = 0,
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
    with _progress("distylegan train"):
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




@app.command("generate")
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
    from calibration.progress import progress
    from calibration.sources import default_set_folder, generate_set, source_info

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


@app.command("show")
def show_cmd(set_dir: Annotated[Path, typer.Argument(metavar="SET")],
             out: Annotated[Path | None, typer.Option(help="Image file (.png, .jpg); default runs/show/<set>.png.")]
             = None,
             per_class: Annotated[int, typer.Option(min=1, help="Images per class row.")] = 12,
             overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")]
             = False) -> None:
    """Save a labelled grid of a set, one row per class."""
    from calibration.sets import read_set
    from calibration.show import check_image_path, save_grid

    out = out or Path("runs/show") / f"{set_dir.resolve().name}.png"
    check_image_path(out)
    if out.exists() and not overwrite:
        raise OptionError(f"{out} already exists; choose another --out or pass --overwrite")
    say(f"wrote {save_grid(read_set(set_dir, allow_unbalanced=True), out, per_class)}")


@app.command("inspect")
def inspect_cmd(set_dir: Annotated[Path, typer.Argument(metavar="SET")],
                model: Annotated[str, typer.Option(help="Zoo classifier the metrics are measured under.")]
                = "resnet20",
                weights: WeightsPath = None, data_dir: DataDir = None,
                record_path: RecordPath = DEFAULT_RECORD, format: OutputFormat = Format.text) -> None:
    """Set-quality metrics under a zoo classifier; printed and recorded."""
    from calibration.data import train_splits
    from calibration.progress import progress
    from calibration.quality import set_metrics
    from calibration.runs import record
    from calibration.sets import read_set
    from calibration.weights import load_model, resolve_weights

    cset = read_set(set_dir)
    net = load_model(model, weights, fuse=False)
    with progress(f"inspect {set_dir.name}", None, _quiet()):
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


@sets_app.command("validate")
def sets_validate(set_dir: Annotated[Path, typer.Argument(metavar="SET")],
                  format: OutputFormat = Format.text) -> None:
    """Check a set against its manifest (files, hashes, sizes, balance)."""
    from calibration.data import CLASSES
    from calibration.sets import read_set

    cset = read_set(set_dir)
    row = {"set": str(set_dir), "ok": True, "images": len(cset), "source": cset.manifest["source"],
           "role": cset.role, "content_hash": cset.content_hash,
           "per_class": {c: int((cset.labels == i).sum()) for i, c in enumerate(CLASSES)}}
    emit(row, format, lambda: say(f"{set_dir}: ok, {len(cset)} images, source {row['source']}, role {cset.role}"))


class DatasetFormat(str, Enum):
    cifar = "cifar"
    imagenet = "imagenet"


@sets_app.command("export")
def sets_export(set_dir: Annotated[Path, typer.Argument(metavar="SET")],
                dataset_format: Annotated[DatasetFormat, typer.Option("--dataset-format", help="cifar: the "
                                                                      "CIFAR-10 pickle layout; imagenet: class "
                                                                      "folders.")],
                out: Annotated[Path, typer.Option(help="Empty or new folder.")], quiet: Quiet = False) -> None:
    """Convert a set with Datumaro (cifar: the CIFAR-10 pickle layout; imagenet: class folders)."""
    from calibration.progress import progress
    from calibration.sets import export_set

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OptionError(f"--out {out} exists and is not an empty folder")
    with progress(f"export {set_dir} ({dataset_format.value})", None, quiet):
        path = export_set(set_dir, dataset_format.value, out)
    say(f"wrote {path}")


@sets_app.command("import")
def sets_import(src: Annotated[Path, typer.Argument(metavar="SRC", help="Dataset folder Datumaro reads.")],
                out: Annotated[Path, typer.Option(help="New set folder.")],
                dataset_format: Annotated[str | None, typer.Option("--dataset-format", help="Datumaro format "
                                                                   "(default: detect).")] = None,
                quiet: Quiet = False) -> None:
    """Read any Datumaro-readable CIFAR-10-labelled dataset into the set format."""
    from calibration.progress import progress
    from calibration.sets import import_set

    with progress(f"import {src}", None, quiet):
        path = import_set(src, out, dataset_format)
    say(f"wrote {path}")


# ---------------------------------------------------------------- quantize, evaluate, benchmark
def _int8_engines_enum():
    from calibration.engines import get_engine, list_engines

    return Enum("QuantEngine", {n: n for n in list_engines() if get_engine(n).int8}, type=str)


QuantEngine = _int8_engines_enum()


def _model_engine(model: str, engine: str | None, default: str = "openvino") -> str:
    """The engine for `--model`: the one that reads the file (by suffix), else `--engine`, else `default`; a
    file that the given --engine does not read, or one that does not exist, is refused."""
    from calibration.engines import get_engine, list_engines

    owner = next((e for e in list_engines() if get_engine(e).owns(model)), None)
    if owner is None:
        return engine or default
    if engine and engine != owner:
        raise OptionError(f"--model {model} is a {get_engine(owner).suffix} file, which {owner} reads, not "
                          f"--engine {engine}; leave --engine out")
    if not Path(model).is_file():
        raise OptionError(f"--model {model}: no such file")
    return owner


def _refuse_int8(model: str) -> None:
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


def _accuracy_text(r: dict) -> str:
    if r.get("int8_accuracy") is None:
        return "accuracy not measured (--evaluate measures it)"
    return (f"test accuracy FP32 {r['fp32_accuracy']:.4f}, INT8 {r['int8_accuracy']:.4f} "
            f"({100 * (r['int8_accuracy'] - r['fp32_accuracy']):+.2f} points), "
            f"{100 * r['int8_agreement']:.1f} % same predictions")


@app.command("quantize")
def quantize_cmd(
    model: Annotated[str, typer.Option(help="Zoo name (trained weights) or an FP32 model file: .xml (openvino) or "
                                            ".onnx (onnxruntime); a file's engine follows from its suffix.")],
    calib: Annotated[Path | None, typer.Option(help="Calibration set folder (your own model: --source makes "
                                                    "one instead).")] = None,
    algo: Annotated[Algo, typer.Option(help="NNCF's default algorithm, or accuracy-aware (openvino).")]
    = Algo.default,
    engine: Annotated[QuantEngine | None, typer.Option(help="Engine for a zoo name (default openvino); a model "
                                                            "file's suffix decides for it.")] = None,
    subset_size: Annotated[int | None, typer.Option(min=1, help="Calibration images, drawn class-balanced "
                                                                "with --seed (default: all).")] = None,
    preset: Annotated[Preset | None, typer.Option(help="Activations symmetric (performance) or asymmetric (mixed); "
                                                       "default: the engine's own (openvino performance, "
                                                       "onnxruntime mixed).")] = None,
    fast_bias_correction: Annotated[bool | None, typer.Option(
        "--fast-bias-correction/--no-fast-bias-correction", help="openvino only (default: on).")] = None,
    max_drop: Annotated[float | None, typer.Option(min=0.0, help="--algo accuracy-aware only: largest accuracy "
                                                                 "drop allowed (default 0.01).")] = None,
    drop_type: Annotated[DropType | None, typer.Option(help="--algo accuracy-aware only (default: absolute).")]
    = None,
    calibrate_method: Annotated[CalibMethod | None, typer.Option(help="Activation ranges; onnxruntime: minmax "
                                                                      "(default), entropy, percentile; openvino: "
                                                                      "nncf (default) or minmax.")] = None,
    ranking_subset_size: Annotated[int | None, typer.Option(min=1, help="--algo accuracy-aware only: validation "
                                                                        "images NNCF ranks layers on (default: "
                                                                        "all).")] = None,
    overflow_fix: Annotated[OverflowFix | None, typer.Option(help="openvino: weights on half the INT8 range against "
                                                                  "8-bit saturation on CPUs without VNNI (default "
                                                                  "first_layer_only).")] = None,
    reduce_range: Annotated[bool | None, typer.Option("--reduce-range/--no-reduce-range", help="onnxruntime: 7-bit "
                                                      "weights everywhere (default: on where the CPU has no "
                                                      "VNNI).")] = None,
    calibration_batch: Annotated[int, typer.Option("--batch", min=1, help="Images per calibration item; "
                                                   "statistics stay per image, so the result equals batch 1 up "
                                                   "to float rounding, sooner.")] = 1,
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(help="Output folder; default runs/quantize/<model>-<engine>-<algo>-"
                                                  "<set>-<subset>-s<seed>-<digest of every option>.")] = None,
    overwrite: Overwrite = False,
    evaluate: Annotated[bool, typer.Option(help="Also measure FP32 and INT8 test accuracy.")] = False,
    weights: WeightsPath = None,
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
    format: OutputFormat = Format.text,
    source: Annotated[str | None, typer.Option(help="Your own model: make the calibration set at its input size "
                                                    "from noise, fractal, folder (--folder DIR) or distylegan "
                                                    "(32x32, resized).")] = None,
    images: Annotated[int, typer.Option(min=1, help="Your own model: calibration images --source makes.")] = 300,
    folder: Annotated[Path | None, typer.Option(help="--source folder: any folder of unlabeled images.")] = None,
    contract: Annotated[Path | None, typer.Option(help="Your own model: its input contract card (TOML); default "
                                                       "<model>.calib.toml beside it, else what the model file "
                                                       "carries.")] = None,
    mean: Annotated[str | None, typer.Option(help="Your own model: mean per channel in its channel order, e.g. "
                                                  "0.485,0.456,0.406.")] = None,
    std: Annotated[str | None, typer.Option(help="Your own model: std per channel, e.g. 0.229,0.224,0.225.")]
    = None,
    input_size: Annotated[str | None, typer.Option(help="Your own model: input size, 64 or 64x48 (H x W).")]
    = None,
    bgr: Annotated[bool, typer.Option("--bgr", help="Your own model takes BGR channels (default RGB).")] = False,
    raw_pixels: Annotated[bool, typer.Option("--raw-pixels", help="Your own model: mean/std are in 0..255 pixel "
                                                                  "units (pixel scale 1, not 1/255).")] = False,
    classes: Annotated[Path | None, typer.Option(help="Your own model: class names, one a line, in output "
                                                      "order.")] = None,
) -> None:
    """Quantize to INT8 with any engine that quantizes: NNCF (default or accuracy-aware), ONNX Runtime (static QDQ).
    Your own model (ONNX, IR or TorchScript) with its input contract: --source makes the set, --data-dir (with
    your class folders) evaluates."""
    from calibration.engines import get_engine
    from calibration.export import fixed_batch
    from calibration.foreign import TORCHSCRIPT_SUFFIXES
    from calibration.pipeline import QuantizeRequest, run_quantize
    from calibration.progress import progress

    stated = {"--mean": mean, "--std": std, "--input-size": input_size, "--contract": contract,
              "--classes": classes, "--bgr": bgr or None, "--raw-pixels": raw_pixels or None, "--source": source,
              "--folder": folder}
    if any(v is not None for v in stated.values()) or Path(model).suffix.lower() in TORCHSCRIPT_SUFFIXES:
        zoo_only = {"--calib": calib, "--algo": None if algo == Algo.default else algo.value,
                    "--subset-size": subset_size, "--preset": preset, "--fast-bias-correction": fast_bias_correction,
                    "--max-drop": max_drop, "--drop-type": drop_type, "--calibrate-method": calibrate_method,
                    "--ranking-subset-size": ranking_subset_size, "--overflow-fix": overflow_fix,
                    "--reduce-range": reduce_range, "--batch": None if calibration_batch == 1 else calibration_batch,
                    "--weights": weights, "--evaluate": evaluate or None}
        given = [k for k, v in zoo_only.items() if v is not None]
        if given:
            raise OptionError(f"{', '.join(given)} is not available with your own model's contract and --source; "
                              "leave it out")
        _quantize_own(model, source, images, folder, contract, mean, std, input_size, bgr, raw_pixels, classes,
                      engine.value if engine else None, seed, out, overwrite, data_dir, record_path, format)
        return
    if calib is None:
        raise OptionError("give --calib SET (or, for your own model, --source to make the set)")
    engine_name = _model_engine(model, engine.value if engine else None)
    _refuse_int8(model)
    if fixed_batch(model) not in (None, calibration_batch):
        raise OptionError(f"--model {model} takes batch {fixed_batch(model)} only; pass --batch "
                          f"{fixed_batch(model)}, or export it with a dynamic batch (calib zoo export does)")
    if algo == Algo.default:
        given = [f for f, v in (("--max-drop", max_drop), ("--drop-type", drop_type),
                                ("--ranking-subset-size", ranking_subset_size)) if v is not None]
        if given:
            raise OptionError(f"{', '.join(given)} applies to --algo accuracy-aware only; leave it out or add "
                              "--algo accuracy-aware")
    fields = dict(preset=preset.value if preset else None, fast_bias_correction=fast_bias_correction,
                  max_drop=max_drop, drop_type=drop_type.value if drop_type else None,
                  calibrate_method=calibrate_method.value if calibrate_method else None,
                  ranking_subset_size=ranking_subset_size, overflow_fix=overflow_fix.value if overflow_fix else None,
                  reduce_range=reduce_range)
    req = QuantizeRequest(model=model, calib=calib, algo=algo.value, engine=engine_name, subset_size=subset_size,
                          seed=seed, weights=weights, data_dir=data_dir, calibration_batch=calibration_batch,
                          **{k: v for k, v in fields.items() if v is not None})
    try:
        get_engine(engine_name).check_options(req.config())
    except OptionError:
        raise
    except CalibError as e:
        raise OptionError(str(e)) from None
    with progress(f"quantize {Path(model).name} ({engine_name}, {algo.value})", None, _quiet()):
        row = run_quantize(req, out, evaluate=evaluate, record_path=record_path, overwrite=overwrite)
    keep_log(Path(row["out"]))

    def text() -> None:
        say(f"{row['model']} INT8 ({row['engine']}, {algo.value}, {row['subset_size_images']} images of "
            f"{row['calib_source']} set {Path(row['calib_set']).name}, seed {seed}): {row['int8_path']}")
        say(f"  size {row['fp32_bytes'] / 1e6:.2f} MB FP32 -> {row['int8_bytes'] / 1e6:.2f} MB INT8; "
            f"{_accuracy_text(row)}")
        say(f"  everything: {Path(row['out']) / 'quantize.json'} (--format json prints it)")

    emit(row, format, text)


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise OptionError(f"{option} takes numbers separated by commas, not {text!r}") from None


def _quantize_own(model: str, source: str | None, images: int, folder: Path | None, card: Path | None,
                  mean: str | None, std: str | None, input_size: str | None, bgr: bool, raw_pixels: bool,
                  classes: Path | None, engine: str | None, seed: int, out: Path | None, overwrite: bool,
                  data_dir: Path | None, record_path: Path, format: Format) -> None:
    """`calib quantize` for your own model: every option checked, then `calibration.own.quantize_own`."""
    import shutil

    from calibration import contract as C
    from calibration import foreign
    from calibration.own import SOURCES, OwnRequest, quantize_own
    from calibration.progress import progress

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
    _refuse_int8(model)
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
        with progress(f"quantize {Path(model).name} ({engine_name}, {source})", None, _quiet()):
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
            f"{_accuracy_text(row) if row['int8_accuracy'] is not None else 'no test data (--data-dir ROOT)'}")

    emit(row, format, text)


def _own_contract(model: str, card: Path | None):
    """The contract of a model file that states one (--contract, a card beside it, or calib's metadata inside
    it); None for a zoo name or a file without one, which keep the CIFAR-10 path."""
    from calibration import contract as C

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


@app.command("evaluate")
def evaluate_cmd(name: ModelArg = None,
                 model: Annotated[str | None, typer.Option(help="Model file (.xml, .onnx, .pt2; its suffix picks "
                                                                "the engine) or zoo name.")] = None,
                 batch: Annotated[int, typer.Option(min=1, help="Images per inference request.")] = 50,
                 weights: WeightsPath = None,
                 engine: Annotated[Engine | None, typer.Option(help="For a zoo name: the engine it is exported to "
                                                                    "(default openvino).")] = None,
                 data_dir: DataDir = None, record_path: RecordPath = DEFAULT_RECORD,
                 format: OutputFormat = Format.text,
                 contract: Annotated[Path | None, typer.Option(help="Your own model: its input contract card "
                                                                    "(TOML); a card beside the file or a contract "
                                                                    "inside it is used without this.")] = None,
                 ) -> None:
    """Top-1 accuracy on the CIFAR-10 test split with the engine that reads the file (OpenVINO: all requests of
    an AsyncInferQueue kept busy); your own model's file, with its contract, on --data-dir ROOT/test."""
    from calibration.pipeline import run_evaluate
    from calibration.progress import progress

    model = _one_model(name, model)
    engine_name = _model_engine(model, engine.value if engine else None)
    own_contract = _own_contract(model, contract)
    if own_contract is not None:
        from calibration.own import evaluate_own

        if data_dir is None:
            raise OptionError("your own model is evaluated on --data-dir ROOT (ROOT/test/<class>/*)")
        with progress(f"evaluate {Path(model).name} ({engine_name})", None, _quiet()):
            row = evaluate_own(Path(model), own_contract, data_dir, batch, record_path)
        emit(row, format, lambda: say(f"{model}: accuracy {row['accuracy']:.4f} on {row['images']} test images "
                                      f"({row['eval_fps']:.0f} images/s, engine {row['engine']})"))
        return
    with progress(f"evaluate {Path(model).name} ({engine_name})", None, _quiet()):
        row = run_evaluate(model, batch=batch, weights=weights, data_dir=data_dir, record_path=record_path,
                           engine=engine_name)
    emit(row, format, lambda: say(f"{model}: accuracy {row['accuracy']:.4f} on {row['images']} test images "
                                  f"({row['eval_fps']:.0f} images/s, engine {row['engine']})"))


@app.command("diagnose")
def diagnose_cmd(
    model: Annotated[str, typer.Option(help="Zoo name (trained weights) or path to an FP32 .xml.")],
    calib: Annotated[list[Path], typer.Option(help="Calibration set folder; repeat the option to compare sets.")],
    reference: Annotated[str, typer.Option(help="Images the ranges are judged on: 'validation' (held out from "
                                                "train) or a set folder; never the test split.")] = "validation",
    subset_size: Annotated[int | None, typer.Option(min=1, help="Calibration images (default: all).")] = None,
    preset: Annotated[Preset, typer.Option()] = Preset.performance,
    fast_bias_correction: Annotated[bool, typer.Option("--fast-bias-correction/--no-fast-bias-correction")] = True,
    seed: Seed = 0,
    per_layer_accuracy: Annotated[int, typer.Option(min=0, help="Validation accuracy with each of the worst K "
                                                                "quantizers removed (that input kept FP32); 0: off.")]
    = 0,
    rank_by: Annotated[RankBy, typer.Option(help="What 'worst' means in the ranked table.")] = RankBy.local_sqnr,
    top: Annotated[int, typer.Option(min=1, help="Rows printed per set (files hold every layer).")] = 10,
    out: Annotated[Path | None, typer.Option(help="Output folder; default runs/diagnose/<model>-<digest of every "
                                                  "option and set>.")] = None,
    overwrite: Overwrite = False,
    weights: WeightsPath = None,
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
    quiet: Quiet = False,
) -> None:
    """Which layers a calibration set gets wrong (OpenVINO, NNCF's quantizers): each quantizer's range, the share of
    real values it clips, the share of its range they use, and the INT8 error against FP32, worst first."""
    import pandas as pd

    from calibration.diagnose import ranked_table, run_diagnose

    if _model_engine(model, "openvino") != "openvino":
        raise OptionError(f"--model {model}: diagnose reads NNCF's quantizers from OpenVINO IR; give a zoo name or "
                          "an FP32 .xml")
    _refuse_int8(model)
    with _progress(f"diagnose {Path(model).name}, {len(calib)} set{'s' if len(calib) > 1 else ''}"):
        r = run_diagnose(model, calib, out, reference, per_layer_accuracy, rank_by, quiet, record_path,
                         overwrite=overwrite, subset_size=subset_size, preset=preset.value,
                         fast_bias_correction=fast_bias_correction, seed=seed, weights=weights, data_dir=data_dir)
    out = Path(r["summary"]["out"])
    keep_log(out)
    df = pd.DataFrame(r["rows"])
    for name, part in df.groupby("set", sort=False):
        t = ranked_table(part.to_dict("records"), top)
        shown = Table(*t.columns, title=f"{model} calibrated with {name} ({part.source.iloc[0]}): worst "
                      f"{len(t)} of {len(part)} quantizers by {RankBy(rank_by).value}, on {r['summary']['reference']} "
                      f"({r['summary']['reference_images']} images)")
        for row in t.itertuples(index=False):
            shown.add_row(*("-" if pd.isna(v) else str(v) for v in row))
        console.print(shown)
    for p in r["written"]:
        say(f"wrote {p}")


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
    out: Annotated[Path, typer.Option(help="Folder for the model files timed.")] = Path("runs/benchmark"),
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
    format: OutputFormat = Format.text,
) -> None:
    """FP32 vs INT8 speed for zoo models under one protocol, plus the evaluate/benchmark_app ratio."""
    from calibration.benchmark import Protocol
    from calibration.engines import list_engines
    from calibration.pipeline import benchmark_models, evaluate_vs_benchmark_app
    from calibration.zoo import list_models, model_info

    names = list_models() if models == "all" else [m.strip() for m in models.split(",") if m.strip()]
    for name in names:
        model_info(name)  # an unknown name is refused before any timing
    engine_list = [e.strip() for e in engines.split(",") if e.strip()]
    unknown = [e for e in engine_list if e not in list_engines()]
    if unknown or not engine_list:
        raise OptionError(f"--engines {engines}: unknown engine {', '.join(unknown) or '(none given)'}; known: "
                          f"{', '.join(list_engines())}")
    protocol = Protocol(duration_s=duration, repeats=repeats, batch=batch, requests=requests)
    rows = benchmark_models(names, engine_list, protocol, out, pytorch=pytorch, trained=trained,
                            record_path=record_path, quiet=_quiet())
    app_row = None
    if app_check:
        with _progress(f"evaluate vs benchmark_app ({app_check})"):
            app_row = evaluate_vs_benchmark_app(app_check, out, data_dir=data_dir, record_path=record_path)

    def text() -> None:
        t = result_table("model", "engine", "FP32 tput", "INT8 tput", "INT8/FP32", "FP32 lat", "INT8 lat",
                         "FP32 MB", "INT8 MB", "PyTorch tput", "PyTorch lat", caption=f"img/s; {protocol.describe()}")
        for r in rows:
            t.add_row(r["model"], r["engine"], *(_num(r.get(k), d) for k, d in (
                ("fp32_fps", 0), ("int8_fps", 0), ("speedup", 2), ("fp32_latency_fps", 0), ("int8_latency_fps", 0))),
                _num(r.get("fp32_bytes"), 2, 1e6), _num(r.get("int8_bytes"), 2, 1e6), _num(r.get("pytorch_fps"), 0),
                _num(r.get("pytorch_latency_fps"), 0))
        console.print(t)
        if app_row:
            _print_app_ratio(app_row)

    emit([*rows, *([app_row] if app_row else [])], format, text)


def _num(value, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def _print_app_ratio(r: dict) -> None:
    say(f"{r['model']} INT8 IR, batch {r['batch']}, {r['NUM_STREAMS']} streams, {r['requests']} requests, "
        f"{r['INFERENCE_NUM_THREADS']} threads, precision {r['INFERENCE_PRECISION_HINT']}: calib evaluate "
        f"{r['eval_fps']:.0f} img/s, benchmark_app {r['benchmark_app_fps']:.0f} img/s, ratio {r['ratio']:.3f}")


@bench_app.command("evaluate-vs-app")
def benchmark_evaluate_vs_app_cmd(
    name: ModelArg = None,
    model: Annotated[str | None, typer.Option(help="Zoo name (its INT8 IR is made with random weights) or an "
                                                   "INT8 .xml; default resnet20.")] = None,
    batch: Annotated[int, typer.Option(min=1)] = 50,
    seconds: Annotated[int, typer.Option(min=1, help="benchmark_app seconds per round.")] = 5,
    repeats: Annotated[int, typer.Option(min=1, help="Rounds, evaluator and benchmark_app alternating.")] = 3,
    out: Annotated[Path, typer.Option(help="Folder for the model files timed.")] = Path("runs/benchmark"),
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
    format: OutputFormat = Format.text,
) -> None:
    """`calib evaluate` against benchmark_app on the same IR at the same batch, precision and device settings."""
    from calibration.pipeline import evaluate_vs_benchmark_app

    model = _one_model(name, model or (None if name else "resnet20"))
    with _progress(f"evaluate vs benchmark_app ({Path(model).name})"):
        r = evaluate_vs_benchmark_app(model, out, data_dir, seconds, batch, repeats, record_path=record_path)
    emit(r, format, lambda: _print_app_ratio(r))


@bench_app.command("engines")
def benchmark_engines_cmd(
    calib: Annotated[Path, typer.Option(help="Calibration set folder.")],
    model: Annotated[str, typer.Option(help="Zoo model.")] = "resnet20",
    subset_size: Annotated[int | None, typer.Option(min=1)] = None,
    duration: Annotated[float, typer.Option(min=0.5)] = 3.0,
    repeats: Annotated[int, typer.Option(min=3)] = 3,
    batch: Annotated[int, typer.Option(min=1, help="Images per throughput request.")] = 1,
    requests: Annotated[int | None, typer.Option(min=1, help="Throughput requests in flight (default: one per "
                                                             "core).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the model files timed.")] = Path("runs/engines"),
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
    format: OutputFormat = Format.text,
) -> None:
    """Every engine from the same set: FP32 and INT8 accuracy, throughput and latency under one protocol, size."""
    from calibration.benchmark import Protocol
    from calibration.pipeline import compare_engines

    protocol = Protocol(duration_s=duration, repeats=repeats, batch=batch, requests=requests)
    with _progress(f"benchmark engines ({model})"):
        rows = compare_engines(model, calib, protocol, out, subset_size, data_dir, record_path)

    def text() -> None:
        t = result_table("engine", "FP32 acc", "INT8 acc", "FP32 tput", "INT8 tput", "INT8/FP32", "FP32 lat",
                         "INT8 lat", "FP32 MB", "INT8 MB", caption=f"tput, lat: img/s; {protocol.describe()}")
        for r in rows:
            t.add_row(r["engine"], *(_num(r.get(k), d) for k, d in (
                ("fp32_accuracy", 4), ("int8_accuracy", 4), ("fp32_fps", 0), ("int8_fps", 0), ("speedup", 2),
                ("fp32_latency_fps", 0), ("int8_latency_fps", 0))),
                _num(r.get("fp32_bytes"), 2, 1e6), _num(r.get("int8_bytes"), 2, 1e6))
        console.print(t)

    emit(rows, format, text)


@bench_app.command("sources")
def benchmark_sources_cmd(
    fractal_images: Annotated[int, typer.Option(min=10)] = 500,
    inversion_images: Annotated[int, typer.Option(min=1)] = 20,
    inversion_iterations: Annotated[int, typer.Option(min=1)] = 400,
    model: Annotated[str, typer.Option(help="Zoo model inverted.")] = "resnet20",
    weights: WeightsPath = None,
    record_path: RecordPath = DEFAULT_RECORD,
    format: OutputFormat = Format.text,
) -> None:
    """Fractal images per second and inversion seconds per image, measured on this machine."""
    from calibration.pipeline import benchmark_sources

    with _progress("benchmark sources"):
        r = benchmark_sources(fractal_images, inversion_images, inversion_iterations, model, weights, record_path)

    def text() -> None:
        say(f"fractal: {r['fractal_images_per_s']:.0f} images/s ({fractal_images} images)")
        say(f"inversion ({model}, {inversion_iterations} iterations, batch {r['inversion_batch']}): "
            f"{r['inversion_s_per_image']:.2f} s/image")

    emit(r, format, text)


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
    format: OutputFormat = Format.text,
) -> None:
    """calib's inversion vs Sony MCT's data generation: images/s and INT8 accuracy (same NNCF settings, test
    split). MCT runs in its own venv (scripts/mct-venv.sh); rows already recorded are skipped."""
    from calibration.peers.inversion_bench import benchmark_inversion, markdown_table, split_methods, summary
    from calibration.runs import atomic_write_bytes, read_jsonl

    method_list = split_methods(methods)
    model_list = [m.strip() for m in models.split(",") if m.strip()]
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise OptionError(f"--seeds {seeds}: give whole numbers joined by commas, e.g. 0,1,2") from None
    if not seed_list or min(seed_list) < 0:
        raise OptionError(f"--seeds {seeds}: give seeds of 0 or more, joined by commas")
    benchmark_inversion(model_list, method_list, images, seed_list, out, weights, data_dir, record_path,
                        log=lambda msg: err_console.print(msg, highlight=False, markup=False))
    rows = [r for r in read_jsonl(record_path) if r.get("kind") == "benchmark_inversion"
            and r["model"] in model_list and r["method"] in method_list and r["images"] == images]
    text = markdown_table(summary(rows))
    if markdown is not None:
        atomic_write_bytes(markdown, text.encode())
    emit(rows, format, lambda: say(text))


@bench_app.command("inversion-speed")
def benchmark_inversion_speed_cmd(
    model: Annotated[str, typer.Option(help="Zoo model inverted.")] = "resnet20",
    images: Annotated[int, typer.Option(min=10, help="Images per setting (a multiple of 10).")] = 100,
    with_mct: Annotated[bool, typer.Option("--with-mct", help="Also time MCT's defaults (its venv).")] = False,
    weights: WeightsPath = None,
    record_path: RecordPath = DEFAULT_RECORD,
    format: OutputFormat = Format.text,
) -> None:
    """Seconds per image of inversion before and after the speed-up, in one run, and their ratio."""
    from calibration.peers.inversion_bench import SPEED_OLD_METHOD, inversion_speed

    variants = {"old": SPEED_OLD_METHOD, **({"mct": "mct"} if with_mct else {}), "new": "calib"}
    with _progress(f"inversion speed ({model})"):
        r = inversion_speed(model, images, weights, variants, record_path)

    def text() -> None:
        for name in variants:
            say(f"{name}: {r[f'{name}_s_per_image']:.3f} s/image ({r[f'{name}_method']}: "
                f"{json.dumps(r[f'{name}_settings'])})")
        if with_mct:
            say(f"ratio mct/new: {r['mct_s_per_image'] / r['new_s_per_image']:.2f}x")
        say(f"ratio old/new: {r['ratio']:.2f}x ({model}, {images} images, {r['torch_threads']} threads)")

    emit(r, format, text)


@bench_app.command("generators")
def benchmark_generators_cmd(
    images: Annotated[int, typer.Option(min=10)] = 200,
    batch: Annotated[int, typer.Option(min=1)] = 50,
    record_path: RecordPath = DEFAULT_RECORD,
    format: OutputFormat = Format.text,
) -> None:
    """Sampling speed on this CPU: DiStyleGAN vs the native StyleGAN2 generator (CIFAR-10 configuration)."""
    from distylegan.bench import benchmark_generators

    with _progress("benchmark generators"):
        r = benchmark_generators(images, batch, record_path)

    def text() -> None:
        say(f"DiStyleGAN: {r['distylegan_images_per_s']:.0f} images/s ({r['distylegan_params']:,} parameters)")
        say(f"StyleGAN2 (native, CIFAR-10 config): {r['stylegan2_images_per_s']:.1f} images/s "
            f"({r['stylegan2_params']:,} parameters)")
        say(f"ratio DiStyleGAN / StyleGAN2: {r['ratio']:.1f}x")

    emit(r, format, text)


# ---------------------------------------------------------------- study
class Executor(str, Enum):
    local = "local"
    ray = "ray"


@study_app.command("run")
def study_run(grid: Annotated[Path, typer.Argument(help="Grid TOML file.")],
              out: Annotated[Path | None, typer.Option(help="Run folder; default runs/study/<grid name>. A rerun "
                                                            "into it runs only the cells without an ok row.")]
              = None,
              executor: Annotated[Executor, typer.Option()] = Executor.local,
              address: Annotated[str | None, typer.Option(help="Ray cluster address (ray executor).")] = None,
              models: Annotated[str | None, typer.Option(help="Only these models (comma-separated).")] = None,
              sources: Annotated[str | None, typer.Option(help="Only these sources (comma-separated).")] = None,
              data_dir: DataDir = None,
              jobs: Annotated[int, typer.Option(min=1, help="Local worker processes for cells that time nothing; "
                                                            "timed cells always run alone.")] = 1,
              quiet: Quiet = False) -> None:
    """Run a grid; a rerun runs every cell without an ok row (so a killed run resumes, skipped cells retry).

    One progress bar (cells done of all, ok / skipped / errors, time left), one line per error, a summary."""
    from calibration.progress import duration, fd_stdout, progress
    from experiments.grid import load_grid, select
    from experiments.runner import run_study

    if not grid.is_file():
        raise OptionError(f"grid file {grid} does not exist")
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    try:  # the grid's fields and --models/--sources are options too: refused before any work, exit code 2
        g = load_grid(grid)
        total = len(select(g, split(models), split(sources)))
    except OptionError:
        raise
    except CalibError as e:
        raise OptionError(str(e)) from None
    out = out or Path("runs/study") / g.name
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file; give a folder for the run")
    counts = {"ok": 0, "skipped": 0, "error": 0}
    log = _RUN.get({}).get("log")
    with progress(f"study {g.name}", total, quiet) as advance:

        def on_row(row: dict) -> None:  # every cell's row: those done before first, then each as it is written
            status = row.get("status", "error")
            counts[status] = counts.get(status, 0) + 1
            advance(description=f"study {g.name}: {counts['ok']} ok, {counts['skipped']} skipped, "
                                f"{counts['error']} errors")
            if status == "error":
                what = " ".join(str(row.get(k)) for k in ("kind", "model", "engine", "source", "algo")
                                if row.get(k) not in (None, ""))
                advance.note(f"error: cell {row.get('cell')} ({what}): {row.get('reason', '')}")

        with fd_stdout(log.stream if log is not None else sys.stderr):
            s = run_study(grid, out, executor.value, address, data_dir, split(models), split(sources), jobs=jobs,
                          progress=False, on_row=on_row)
    if log is not None:
        log.save(out / "calib.log")
    say(f"{out}: {s['cells']} cells ({s['ran']} run now, {s['skipped_done']} already done); "
        f"{s['ok']} ok, {s['skipped']} skipped, {s['errors']} errors")
    say(f"wall time {duration(s['wall_seconds'])}; peak resident memory {s['peak_rss_mib'] / 1024:.2f} GiB, all "
        "processes together")
    if s["errors"]:
        say(f"the errors, one row each: {out / 'rows.jsonl'} (status error, with the reason)")


@study_app.command("check")
def study_check(run: Annotated[Path, typer.Argument(metavar="RUN", help="Study run folder.")],
                cells: Annotated[int, typer.Option(min=0, help="How many OpenVINO cells to recheck, drawn at "
                                                               "random; 0: all.")] = 5,
                seed: Annotated[int, typer.Option(min=0, help="Seed of the draw.")] = 0,
                tolerance: Annotated[float, typer.Option(min=0.0, help="Largest accepted |difference| in "
                                                                       "accuracy.")] = 0.003,
                out: Annotated[Path | None, typer.Option(help="CSV of the comparison; default <run>/check.csv.")]
                = None,
                models: Annotated[str | None, typer.Option(help="Only cells of these models (comma-separated).")]
                = None,
                sources: Annotated[str | None, typer.Option(help="Only cells of these sources (comma-separated).")]
                = None,
                batch_1: Annotated[bool, typer.Option("--batch-1/--as-run", help="Calibrate with batch-1 items, "
                                                      "or with the cell's calibration batch.")] = False,
                format: OutputFormat = Format.text) -> None:
    """Redo cells with NNCF and OpenVINO called directly (same set, subset, seed, options) and compare."""
    from experiments.check import check_run

    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    with _progress(f"study check {run.name}"):
        table = check_run(run, cells, seed, tolerance, out, split(models), split(sources), batch_1)
    bad = int((~table.within_tolerance).sum())

    def text() -> None:
        say(table.drop(columns=["cell", "calib_hash"]).to_string(index=False))
        say(f"{len(table) - bad} of {len(table)} cells within {tolerance}; largest |difference| "
            f"{table.abs_difference.max():.4f}; written to {out or run / 'check.csv'}")

    emit(_records(table), format, text)
    if bad:
        err_console.print(f"[red]error:[/red] {bad} cells differ by more than {tolerance}", highlight=False)
        raise typer.Exit(1)


def _run_folder(run: Path) -> None:
    if not run.is_dir():
        raise OptionError(f"run folder {run} does not exist")
    if not (run / "rows.jsonl").is_file():
        raise OptionError(f"{run} is not a study run folder (no rows.jsonl)")


def _out_folder(out: Path | None) -> None:
    if out is not None and out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file; give a folder")


@study_app.command("report")
def study_report(run: Annotated[Path, typer.Argument(metavar="RUN", help="Study run folder.")],
                 out: Annotated[Path | None, typer.Option(help="Default <run>/report.")] = None,
                 html: Annotated[bool, typer.Option("--html", help="Also write report.html: one self-contained "
                                                              "page with every table, plot and grid.")] = False,
                 grids: Annotated[Path | None, typer.Option(help="--html: folder of <source>.png sample grids, "
                                                                 "for runs without their sets/ folder.")] = None,
                 quality: Annotated[Path | None, typer.Option(help="--html: `calib inspect` rows (JSON lines); "
                                                                   "default <run>/inspect.jsonl.")] = None,
                 diagnose: Annotated[Path | None, typer.Option(help="--html: folder of `calib diagnose` outputs; "
                                                                    "default <run>/diagnose.")] = None,
                 screenshot: Annotated[bool, typer.Option(help="--html: also report.png, the page's top as "
                                                               "headless Chromium renders it at 1280 px.")] = False,
                 quiet: Quiet = False, format: OutputFormat = Format.text) -> None:
    """Write the tables (CSV and Markdown) of a run folder; with --html, one HTML page of it all. The result rows
    (--format json|csv) are the run's conditions, one per engine, model, source and algorithm (long_*.csv)."""
    import pandas as pd

    from experiments.report import write_report

    _run_folder(run)
    _out_folder(out)
    for option, path in (("--grids", grids), ("--diagnose", diagnose)):
        if path is not None and not path.is_dir():
            raise OptionError(f"{option} {path} is not a folder")
    if quality is not None and not quality.is_file():
        raise OptionError(f"--quality {quality} does not exist")
    with _progress(f"report {run.name}"):
        written = write_report(run, out)
    folder = written[0].parent if written else (out or run / "report")
    lines = [f"wrote {len(written)} table files (CSV and Markdown) to {folder}"]
    if html:
        from experiments.html import screenshot as shoot
        from experiments.html import write_html

        page = write_html(run, out, grids, quality, diagnose, quiet)
        lines.append(f"wrote {page}")
        if screenshot:
            lines.append(f"wrote {shoot(page, page.with_suffix('.png'))}")
    longs = [pd.read_csv(p) for p in written if p.name.startswith("long_") and p.suffix == ".csv"]
    rows = _records(pd.concat(longs)) if longs else []
    emit(rows, format, lambda: [say(line) for line in lines])


@study_app.command("plot")
def study_plot(run: Annotated[Path, typer.Argument(metavar="RUN", help="Study run folder.")],
               out: Annotated[Path | None, typer.Option(help="Default <run>/plots.")] = None) -> None:
    """Write seaborn heatmaps from a run folder."""
    from experiments.plot import write_plots

    _run_folder(run)
    _out_folder(out)
    with _progress(f"plots {run.name}"):
        written = write_plots(run, out)
    for p in written:
        say(f"wrote {p}")


def main() -> None:
    app(prog_name="calib")


if __name__ == "__main__":
    sys.exit(main())
