"""`calib benchmark`: speed under one protocol (models, engines, sources, generators, inversion)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from calib.cli.app import App, Format, OutputFormat, console, emit, is_quiet, result_table, say, spinner
from calib.cli.choices import Engine
from calib.cli.options import (
    DEFAULT_RECORD,
    Bgr,
    Classes,
    ContractCard,
    DataDir,
    InputSize,
    Mean,
    ModelArg,
    RawPixels,
    RecordPath,
    Std,
    one_model,
    with_contract_order,
)
from calib.core.errors import OptionError
from calib.core.kinds import readers_text

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
        t = result_table("model", "engine", "FP32 tput", "INT8 tput", "INT8/FP32 [95 %]", "FP32 lat", "INT8 lat",
                         "FP32 MB", "INT8 MB", "PyTorch tput", "PyTorch lat",
                         caption=f"img/s; {protocol.describe()}; INT8/FP32 from interleaved repeats")
        for r in rows:
            t.add_row(r["model"], r["engine"], _num(r.get("fp32_fps"), 0), _num(r.get("int8_fps"), 0),
                      _interval(r, "speedup"), *(_num(r.get(k), d) for k, d in (
                          ("fp32_latency_fps", 0), ("int8_latency_fps", 0))),
                _num(r.get("fp32_bytes"), 2, 1e6), _num(r.get("int8_bytes"), 2, 1e6), _num(r.get("pytorch_fps"), 0),
                _num(r.get("pytorch_latency_fps"), 0))
        console.print(t)
        if app_row:
            _print_app_ratio(app_row)

    emit([*rows, *([app_row] if app_row else [])], format, text)


@app.command("files")
def benchmark_files_cmd(
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="Model files, e.g. an FP32 and its INT8; "
                                                                       "the first is the reference of the ratio. "
                                                                       "Engines by kind: "
                                                                       f"{readers_text('run')}.")],
    duration: Annotated[float, typer.Option(min=0.5, help="Seconds per timed run.")] = 3.0,
    repeats: Annotated[int, typer.Option(min=3)] = 3,
    batch: Annotated[int, typer.Option(min=1, help="Images per throughput request.")] = 1,
    requests: Annotated[int | None, typer.Option(min=1, help="Throughput requests in flight (default: one per "
                                                             "core).")] = None,
    engine: Annotated[Engine | None, typer.Option(help="A kind's other engine for every file (see FILE...).")]
    = None,
    record_path: RecordPath = DEFAULT_RECORD,
    format: OutputFormat = Format.text,
    contract: ContractCard = None,
    mean: Mean = None,
    std: Std = None,
    input_size: InputSize = None,
    bgr: Bgr = False,
    raw_pixels: RawPixels = False,
    classes: Classes = None,
) -> None:
    """Speed of model files of any model (your own too) under one protocol, each at its input size: the one the
    file declares, else its contract's. Every file is checked before the first is timed."""
    from calib.cli.own import contract_options, say_overrides
    from calib.core.engines import Protocol
    from calib.core.own import benchmark_own_files

    protocol = Protocol(duration_s=duration, repeats=repeats, batch=batch, requests=requests)
    options = contract_options(mean, std, input_size, bgr, raw_pixels, classes)
    rows = benchmark_own_files(files, protocol, options, contract, engine.value if engine else None, record_path,
                               quiet=is_quiet())
    say_overrides(dict.fromkeys(line for r in rows for line in r.get("contract_overrides", [])))

    def text() -> None:
        t = result_table("file", "engine", "input", "tput", "spread", "latency", "MB", "vs first",
                         caption=f"img/s; {protocol.describe()}")
        for r in rows:
            t.add_row(r["file"], r["engine"], "x".join(map(str, r["input_shape"][1:])), _num(r["model_fps"], 0),
                      _num(r["model_fps_spread"], 3), _num(r["model_latency_fps"], 0), _num(r["bytes"], 2, 1e6),
                      _num(r["vs_first"], 2))
        console.print(t)

    emit(rows, format, text)


with_contract_order(benchmark_files_cmd)


def _num(value, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def _interval(r: dict, key: str) -> str:
    """`1.93 [1.85, 2.01]`: a ratio with its interval, or the ratio alone where there is none."""
    if r.get(key) is None:
        return "-"
    if r.get(f"{key}_low") is None:
        return f"{r[key]:.2f}"
    return f"{r[key]:.2f} [{r[f'{key}_low']:.2f}, {r[f'{key}_high']:.2f}]"


def _print_app_ratio(r: dict) -> None:
    say(f"{r['model']} INT8 IR, batch {r['batch']}, {r['NUM_STREAMS']} streams, {r['requests']} requests, "
        f"{r['INFERENCE_NUM_THREADS']} threads, precision {r['INFERENCE_PRECISION_HINT']}: calib evaluate "
        f"{r['eval_fps']:.0f} img/s, benchmark_app {r['benchmark_app_fps']:.0f} img/s, ratio "
        f"{_interval({'r': r['ratio'], 'r_low': r.get('ratio_low'), 'r_high': r.get('ratio_high')}, 'r')} "
        "(interleaved repeats, 95 % bootstrap interval)")


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
