"""The generators as calibration sources: DiStyleGAN (the shipped checkpoint unless one is given) and StyleGAN2-ADA
from NVIDIA's pickle (read safely into the native generator, only with explicit trust).

Registered through the `calib.sources` entry-point group (pyproject.toml), so the core never imports this package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calib.core.errors import CalibError
from calib.core.runs import file_sha256
from calib.core.sources import Generated, balanced_labels, image_seed, register_source


@register_source("distylegan", pinned=True)
def distylegan(per_class: int, seed: int, checkpoint: Path | None = None) -> Generated:
    """Class-conditional samples of a DiStyleGAN generator, z ~ N(0, I) from each image's seed."""
    from calib.distylegan.networks import load_generator
    from calib.distylegan.sample import DEFAULT_CHECKPOINT, sample_images

    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    g = load_generator(path)
    labels = balanced_labels(per_class)
    seeds = np.array([image_seed(seed, i) for i in range(len(labels))])
    return Generated(sample_images(g, g.cfg.z_dim, seeds, labels), labels, [f"{s:010d}" for s in seeds],
                     extra={"generator_checkpoint": str(path), "generator_sha256": file_sha256(path)})


@register_source("stylegan2-ada", pinned=True)
def stylegan2_ada(per_class: int, seed: int, teacher: Path | None = None, trust_teacher: bool = False,
                  truncation: float = 1.0) -> Generated:
    """Conditional StyleGAN2-ADA samples (pickle or native checkpoint), truncation psi as an option."""
    from calib.distylegan.sample import sample_images
    from calib.distylegan.teachers import build_teacher

    if teacher is None:
        raise CalibError("source stylegan2-ada needs --teacher PATH (NVIDIA's cifar10.pkl or a native checkpoint)")
    path = Path(teacher)
    spec = f"module:{path}" if path.suffix == ".pt" else f"stylegan2-ada:{path}"
    t = build_teacher(spec, trust=trust_teacher, truncation_psi=truncation)
    labels = balanced_labels(per_class)
    if t.num_classes != len(np.unique(labels)):
        raise CalibError(f"teacher {path} has {t.num_classes} classes; CIFAR-10 sets need 10")
    seeds = np.array([image_seed(seed, i) for i in range(len(labels))])
    return Generated(sample_images(t, t.z_dim, seeds, labels, batch=100), labels, [f"{s:010d}" for s in seeds],
                     extra={"teacher": str(path), "teacher_sha256": file_sha256(path), "truncation_psi": truncation})
