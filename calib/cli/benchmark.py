"""`calib benchmark`: speed under one protocol (models, engines, sources, generators, inversion)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from calib.cli.app import App, Format, OutputFormat, console, emit, err_console, is_quiet, result_table, say, spinner
from calib.cli.options import DEFAULT_RECORD, DataDir, ModelArg, RecordPath, WeightsPath, one_model
from calib.core.errors import OptionError

app = App(help="Speed under one protocol: models (FP32 vs INT8), engines, sources, generators, inversion.")


@app.command("models")
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
    from calib.core.benchmark import benchmark_models, evaluate_vs_benchmark_app
    from calib.core.engines import Protocol, list_engines
    from calib.core.zoo import list_models, model_info

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
                            record_path=record_path, quiet=is_quiet())
    app_row = None
    if app_check:
        with spinner(f"evaluate vs benchmark_app ({app_check})"):
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


@app.command("files")
def benchmark_files_cmd(
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Model files (.xml, .onnx, ...), e.g. "
                                                                       "an FP32 and its INT8; the first is the "
                                                                       "reference of the ratio.")],
    duration: Annotated[float, typer.Option(min=0.5, help="Seconds per timed run.")] = 3.0,
    repeats: Annotated[int, typer.Option(min=3)] = 3,
    batch: Annotated[int, typer.Option(min=1, help="Images per throughput request.")] = 1,
    requests: Annotated[int | None, typer.Option(min=1, help="Throughput requests in flight (default: one per "
                                                             "core).")] = None,
    record_path: RecordPath = DEFAULT_RECORD,
    format: OutputFormat = Format.text,
) -> None:
    """Speed of model files of any model (your own too), each at the input size it declares, under one protocol."""
    from calib.core.benchmark import benchmark_files
    from calib.core.engines import Protocol

    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise OptionError(f"no such model file: {', '.join(missing)}")
    protocol = Protocol(duration_s=duration, repeats=repeats, batch=batch, requests=requests)
    rows = benchmark_files(files, protocol, record_path, quiet=is_quiet())

    def text() -> None:
        t = result_table("file", "engine", "tput", "spread", "latency", "MB", "vs first",
                         caption=f"img/s; {protocol.describe()}")
        for r in rows:
            t.add_row(r["file"], r["engine"], _num(r["model_fps"], 0), _num(r["model_fps_spread"], 3),
                      _num(r["model_latency_fps"], 0), _num(r["bytes"], 2, 1e6), _num(r["vs_first"], 2))
        console.print(t)

    emit(rows, format, text)


def _num(value, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def _print_app_ratio(r: dict) -> None:
    say(f"{r['model']} INT8 IR, batch {r['batch']}, {r['NUM_STREAMS']} streams, {r['requests']} requests, "
        f"{r['INFERENCE_NUM_THREADS']} threads, precision {r['INFERENCE_PRECISION_HINT']}: calib evaluate "
        f"{r['eval_fps']:.0f} img/s, benchmark_app {r['benchmark_app_fps']:.0f} img/s, ratio {r['ratio']:.3f}")


@app.command("evaluate-vs-app")
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
    from calib.core.benchmark import evaluate_vs_benchmark_app

    model = one_model(name, model or (None if name else "resnet20"))
    with spinner(f"evaluate vs benchmark_app ({Path(model).name})"):
        r = evaluate_vs_benchmark_app(model, out, data_dir, seconds, batch, repeats, record_path=record_path)
    emit(r, format, lambda: _print_app_ratio(r))


@app.command("engines")
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
    from calib.core.benchmark import compare_engines
    from calib.core.engines import Protocol

    protocol = Protocol(duration_s=duration, repeats=repeats, batch=batch, requests=requests)
    with spinner(f"benchmark engines ({model})"):
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


@app.command("sources")
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
    from calib.core.benchmark import benchmark_sources

    with spinner("benchmark sources"):
        r = benchmark_sources(fractal_images, inversion_images, inversion_iterations, model, weights, record_path)

    def text() -> None:
        say(f"fractal: {r['fractal_images_per_s']:.0f} images/s ({fractal_images} images)")
        say(f"inversion ({model}, {inversion_iterations} iterations, batch {r['inversion_batch']}): "
            f"{r['inversion_s_per_image']:.2f} s/image")

    emit(r, format, text)


@app.command("inversion")
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
    from calib.core.peers.inversion_bench import benchmark_inversion, markdown_table, split_methods, summary
    from calib.core.runs import atomic_write_bytes, read_jsonl

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


@app.command("inversion-speed")
def benchmark_inversion_speed_cmd(
    model: Annotated[str, typer.Option(help="Zoo model inverted.")] = "resnet20",
    images: Annotated[int, typer.Option(min=10, help="Images per setting (a multiple of 10).")] = 100,
    with_mct: Annotated[bool, typer.Option("--with-mct", help="Also time MCT's defaults (its venv).")] = False,
    weights: WeightsPath = None,
    record_path: RecordPath = DEFAULT_RECORD,
    format: OutputFormat = Format.text,
) -> None:
    """Seconds per image of inversion before and after the speed-up, in one run, and their ratio."""
    from calib.core.peers.inversion_bench import SPEED_OLD_METHOD, inversion_speed

    variants = {"old": SPEED_OLD_METHOD, **({"mct": "mct"} if with_mct else {}), "new": "calib"}
    with spinner(f"inversion speed ({model})"):
        r = inversion_speed(model, images, weights, variants, record_path)

    def text() -> None:
        for name in variants:
            say(f"{name}: {r[f'{name}_s_per_image']:.3f} s/image ({r[f'{name}_method']}: "
                f"{json.dumps(r[f'{name}_settings'])})")
        if with_mct:
            say(f"ratio mct/new: {r['mct_s_per_image'] / r['new_s_per_image']:.2f}x")
        say(f"ratio old/new: {r['ratio']:.2f}x ({model}, {images} images, {r['torch_threads']} threads)")

    emit(r, format, text)


@app.command("generators")
def benchmark_generators_cmd(
    images: Annotated[int, typer.Option(min=10)] = 200,
    batch: Annotated[int, typer.Option(min=1)] = 50,
    record_path: RecordPath = DEFAULT_RECORD,
    format: OutputFormat = Format.text,
) -> None:
    """Sampling speed on this CPU: DiStyleGAN vs the native StyleGAN2 generator (CIFAR-10 configuration)."""
    from calib.distylegan.bench import benchmark_generators

    with spinner("benchmark generators"):
        r = benchmark_generators(images, batch, record_path)

    def text() -> None:
        say(f"DiStyleGAN: {r['distylegan_images_per_s']:.0f} images/s ({r['distylegan_params']:,} parameters)")
        say(f"StyleGAN2 (native, CIFAR-10 config): {r['stylegan2_images_per_s']:.1f} images/s "
            f"({r['stylegan2_params']:,} parameters)")
        say(f"ratio DiStyleGAN / StyleGAN2: {r['ratio']:.1f}x")

    emit(r, format, text)
