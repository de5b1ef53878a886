"""Real images: a class-balanced random subset of the calibration pool (never validation, never test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from calibration.data import SplitConfig, train_splits
from calibration.errors import CalibError
from calibration.sources import Generated, register_source


@register_source("cifar10")
def cifar10(per_class: int, seed: int, data_dir: Path | None = None, validation_per_class: int = 100) -> Generated:
    """Real CIFAR-10 images drawn from the calibration pool of the train split."""
    pool = train_splits(data_dir, SplitConfig(validation_per_class))["calibration_pool"]
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(10):
        idx = np.flatnonzero(pool.labels == c)
        if len(idx) < per_class:
            raise CalibError(f"the calibration pool has {len(idx)} images of class {c}; asked for {per_class}")
        picks.append(np.sort(rng.choice(idx, per_class, replace=False)))
    sel = np.concatenate(picks)
    train_index = pool.indices[sel]
    return Generated(pool.images[sel], pool.labels[sel], [f"train{i:05d}" for i in train_index],
                     role="calibration_pool", extra={"split": "train", "train_indices": train_index.tolist(),
                                                     "data": pool.source})
