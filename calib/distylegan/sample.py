"""Seeded sampling from any conditional generator: one seed per image, fixed [-1, 1] -> uint8 mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from calib.distylegan.teacher_set import latents_for_seeds, to_uint8

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "distylegan_cifar10.pt"


@torch.no_grad()
def sample_images(generator, z_dim: int, seeds: np.ndarray, labels: np.ndarray, batch: int = 500) -> np.ndarray:
    """uint8 NHWC images; image i comes from z(seeds[i]) and class labels[i], whatever the batch size."""
    out = []
    for s in range(0, len(seeds), batch):
        z = latents_for_seeds(seeds[s : s + batch], z_dim)
        out.append(to_uint8(generator(z, torch.from_numpy(labels[s : s + batch]))))
    return np.concatenate(out)
