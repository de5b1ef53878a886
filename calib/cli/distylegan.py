"""`calib distylegan`: parameter counts, teacher sets, parity with NVIDIA's code, distillation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from calib.cli.app import App, console, result_table, say, spinner
from calib.cli.options import DEFAULT_RECORD, DataDir, RecordPath, Seed

app = App(help="DiStyleGAN: parameter counts, teacher sets, distillation, sampling speed.")


@app.command("params")
def gan_params() -> None:
    """Parameter counts of the full-size generator and discriminator against the published figures."""
    from calib.distylegan.networks import CONFIGS, Discriminator, Generator, count_parameters

    g_cfg, d_cfg = CONFIGS["cifar10"]
    for label, n, ref in (("generator", count_parameters(Generator(g_cfg)), 2.05e6),
                          ("discriminator", count_parameters(Discriminator(d_cfg)), 3.4e6)):
        console.print(f"{label}: {n:,} parameters; reference about {ref / 1e6:.2f}M; "
                      f"difference {100 * (n - ref) / ref:+.2f}%")


@app.command("teacher-set")
def gan_teacher_set(
    teacher: Annotated[str, typer.Option(help="tiny[:SEED] | module:PATH.pt | stylegan2-ada:PATH.pkl")],
    out: Annotated[Path, typer.Option()],
    count: Annotated[int, typer.Option(min=10)] = 50_000,
    seed: Seed = 0,
    trust_teacher: Annotated[bool, typer.Option(help="Allow loading a StyleGAN2-ADA pickle.")] = False,
    device: str = "cpu",
) -> None:
    """Write (z, class, image) triplets from a teacher; resumes an interrupted build."""
    from calib.distylegan.teacher_set import build_teacher_set
    from calib.distylegan.teachers import build_teacher

    t = build_teacher(teacher, trust=trust_teacher)
    t.module.to(device)
    with spinner(f"teacher set, {count:,} images"):
        path = build_teacher_set(t, out, count, seed, device=device)
    say(f"wrote {path}")


@app.command("parity")
def gan_parity(
    teacher: Annotated[Path, typer.Option(help="NVIDIA's network pickle (snapshot or release file).")],
    golden: Annotated[Path, typer.Option(help="NVIDIA's G_ema outputs for it (.npz: z, c, w_*, img_*).")],
    trust_teacher: Annotated[bool, typer.Option(help="Allow loading a StyleGAN2-ADA pickle.")] = False,
    record_path: RecordPath = DEFAULT_RECORD,
) -> None:
    """Max and mean |native - NVIDIA| on golden outputs of NVIDIA's own code (float32 CPU)."""
    from calib.core.runs import file_sha256, record
    from calib.distylegan.stylegan2 import golden_parity

    r = golden_parity(teacher, golden, trust_teacher)
    shown = result_table("array", "max |native-NVIDIA|", "mean |native-NVIDIA|", "max |NVIDIA|")
    for name, d in r.items():
        shown.add_row(name, f"{d['max_abs']:.3g}", f"{d['mean_abs']:.3g}", f"{d['ref_max_abs']:.3g}")
    console.print(shown)
    record(record_path, "stylegan2_parity", {f"{n}_{k}": v for n, d in r.items() for k, v in d.items()},
           inputs={"teacher": file_sha256(teacher), "golden": file_sha256(golden)})


@app.command("train")
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
    from calib.core.data import train_splits
    from calib.distylegan.networks import save_generator
    from calib.distylegan.teacher_set import load_teacher_set
    from calib.distylegan.train import DistillConfig, distill

    cfg = DistillConfig(network, projection, steps, batch_size, lr, w_adv=w_adv, w_fm=w_fm, w_pixel=w_pixel,
                        w_real=w_real, snapshot_every=snapshot_every, seed=seed, device=device)
    ts = load_teacher_set(teacher_set) if teacher_set else None
    pool = train_splits(data_dir)["calibration_pool"] if real else None
    with spinner("distylegan train"):
        trainer = distill(cfg, out, ts, pool, resume=resume)
    save_generator(trainer.G, out / "generator-fp16.pt", half=True, extra={"step": trainer.step})
    console.print(f"done: {trainer.step} steps in {trainer.elapsed:.0f} s; generator in {out / 'generator.pt'}")
