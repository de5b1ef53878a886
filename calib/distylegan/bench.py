"""Sampling speed of DiStyleGAN against the native StyleGAN2 teacher architecture, in one run on one CPU."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from calib.core.runs import record


@torch.no_grad()
def images_per_second(generator, z_dim: int, images: int, batch: int) -> float:
    z = torch.randn(batch, z_dim, generator=torch.Generator().manual_seed(0))
    c = torch.arange(batch) % 10
    generator(z, c)  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < images:
        generator(z, c)
        done += batch
    return done / (time.perf_counter() - t0)


def benchmark_generators(images: int = 200, batch: int = 50, record_path: Path = Path("runs/records.jsonl")) -> dict:
    from calib.distylegan.networks import count_parameters, load_generator
    from calib.distylegan.sample import DEFAULT_CHECKPOINT
    from calib.distylegan.stylegan2 import StyleGAN2Generator

    torch.manual_seed(0)
    student = load_generator(DEFAULT_CHECKPOINT)
    teacher = StyleGAN2Generator().eval()  # speed does not depend on the weights' values
    s = images_per_second(student, student.cfg.z_dim, images, batch)
    t = images_per_second(teacher, teacher.cfg.z_dim, max(batch, images // 10), batch)
    return record(record_path, "benchmark_generators", {
        "distylegan_images_per_s": s, "stylegan2_images_per_s": t, "ratio": s / t, "batch": batch,
        "threads": torch.get_num_threads(), "distylegan_params": count_parameters(student),
        "stylegan2_params": int(np.sum([p.numel() for p in teacher.parameters()]))})
