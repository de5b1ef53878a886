"""Gaussian noise in the models' normalized input space: the floor every real source must beat."""

from __future__ import annotations

import numpy as np

from calib.core.data import MEAN, STD
from calib.core.sources import Generated, balanced_labels, image_seed, register_source


@register_source("noise")
def noise(per_class: int, seed: int, sigma: float = 1.0) -> Generated:
    """N(0, sigma^2) per pixel in normalized space, de-normalized and rounded to uint8."""
    labels = balanced_labels(per_class)
    seeds = [image_seed(seed, i) for i in range(len(labels))]
    x = np.stack([np.random.default_rng(s).standard_normal((32, 32, 3)) for s in seeds]) * sigma
    pixels = (x * np.asarray(STD) + np.asarray(MEAN)) * 255.0
    return Generated(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), labels, [f"{s:010d}" for s in seeds])
