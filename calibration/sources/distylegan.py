"""DiStyleGAN samples (the shipped generator unless a checkpoint is given)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calibration.runs import sha256_file
from calibration.sources import Generated, balanced_labels, image_seed, register_source


@register_source("distylegan")
def distylegan(per_class: int, seed: int, checkpoint: Path | None = None) -> Generated:
    """Class-conditional samples of a DiStyleGAN generator, z ~ N(0, I) from each image's seed."""
    from distylegan.networks import load_generator
    from distylegan.sample import DEFAULT_CHECKPOINT, sample_images

    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    g = load_generator(path)
    labels = balanced_labels(per_class)
    seeds = np.array([image_seed(seed, i) for i in range(len(labels))])
    return Generated(sample_images(g, g.cfg.z_dim, seeds, labels), labels, [f"{s:010d}" for s in seeds],
                     extra={"generator_checkpoint": str(path), "generator_sha256": sha256_file(path)})
