"""Gaussian noise in the model's normalized input space: the floor every real source must beat."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from calib.core.data import MEAN, STD
from calib.core.sources import Generated, balanced_labels, image_seed, register_source

if TYPE_CHECKING:
    from calib.core.contract import InputContract


@register_source("noise")
def noise(per_class: int, seed: int, sigma: float = 1.0, contract: InputContract | None = None) -> Generated:
    """N(0, sigma^2) per pixel in normalized space, de-normalized and rounded to uint8; in the normalized space of
    `contract` (your own model's: its size, mean, std, channel order and pixel scale), else CIFAR-10's."""
    labels = balanced_labels(per_class)
    seeds = [image_seed(seed, i) for i in range(len(labels))]
    h, w = contract.input_size if contract is not None else (32, 32)
    x = np.stack([np.random.default_rng(s).standard_normal((h, w, 3)) for s in seeds]) * sigma
    mean, std, top = np.asarray(MEAN), np.asarray(STD), 255.0
    if contract is not None:
        mean, std = np.asarray(contract.mean), np.asarray(contract.std)
        if contract.bgr:  # stated in the model's channel order; the images are RGB
            mean, std = mean[::-1], std[::-1]
        top = 255.0 if contract.scale != 1.0 else 1.0
    pixels = (x * std + mean) * top
    return Generated(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), labels, [f"{s:010d}" for s in seeds])
