"""`calib benchmark` for the data side: how fast the sources, inversion and the generators make images (the
model side is `calib.cli.benchmark`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from calib.cli.app import Format, OutputFormat, emit, err_console, say, spinner
from calib.cli.benchmark import app
from calib.cli.options import DEFAULT_RECORD, DataDir, RecordPath, WeightsPath
from calib.core.errors import OptionError


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
