"""Real images: a class-balanced random subset of the calibration pool (never validation, never test).

The pool is the one cut of train (`calib.core.data.SPLIT`) that accuracy-aware validation also uses, so a
set drawn here can never hold a validation image; it has no option to change that cut.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from calib.core.data import CLASSES, SPLIT, heldout_hashes, image_hashes, train_splits
from calib.core.errors import CalibError
from calib.core.sources import Generated, register_source


@register_source("cifar10")
def cifar10(per_class: int, seed: int, data_dir: Path | None = None) -> Generated:
    """Real CIFAR-10 images drawn from the calibration pool of the train split."""
    pool = train_splits(data_dir)["calibration_pool"]
    held = heldout_hashes(data_dir)
    # a pool image whose pixels repeat a test or validation image would be refused at quantization: skip it
    clean = ~np.isin(image_hashes(pool.images), np.concatenate([held.test, held.validation]))
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero((pool.labels == c) & clean)
        if len(idx) < per_class:
            raise CalibError(f"the calibration pool has {len(idx)} images of class {CLASSES[c]}; asked for "
                             f"{per_class} per class")
        picks.append(np.sort(rng.choice(idx, per_class, replace=False)))
    sel = np.concatenate(picks)
    train_index = pool.indices[sel]
    return Generated(pool.images[sel], pool.labels[sel], [f"train{i:05d}" for i in train_index],
                     role="calibration_pool", extra={"split": "train", "train_indices": train_index.tolist(),
                                                     "data": pool.source, "train_split": asdict(SPLIT),
                                                     "data_provenance": pool.provenance,
                                                     "pool_skipped_duplicates": int((~clean).sum())})
