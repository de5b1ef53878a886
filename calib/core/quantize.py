"""The calibration subset every engine receives.

The subset is drawn from a calibration set (never validation or test), class-balanced and seeded; each
engine (`calib.core.engines`) gets the same tensors (batch 1, or `calibration_batch` images each with
per-image statistics) and refuses the options it does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calib.core.data import CLASSES, to_model_input
from calib.core.errors import CalibError
from calib.core.sets import CalibrationSet, check_calibration_set


@dataclass(frozen=True)
class CalibrationSubset:
    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray  # into the set, ascending
    per_class: dict[str, int] = field(default_factory=dict)


def balanced_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` indices drawn class by class in turn (a seeded order of images in each class, a seeded order of
    classes), so per-class counts differ by at most one while every class has images left."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    class_rank = dict(zip(rng.permutation(classes).tolist(), range(len(classes))))
    keys = np.empty((len(labels), 2), np.int64)
    for c in classes:
        idx = np.flatnonzero(labels == c)
        keys[idx, 0] = rng.permutation(len(idx))  # the round in which this image is drawn
        keys[idx, 1] = class_rank[int(c)]  # its class's turn within the round
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    return np.sort(order[:size])


def select_calibration(calib: CalibrationSet, subset_size: int | None, seed: int,
                       data_dir: Path | None = None) -> CalibrationSubset:
    """The seeded, class-balanced subset of a set that calibration sees (identical for every engine); the set is
    first checked against the test and validation splits of the tree `data_dir` names (`check_calibration_set`)."""
    check_calibration_set(calib, data_dir)
    subset = subset_size or len(calib)
    if subset > len(calib):
        raise CalibError(f"--subset-size {subset} exceeds the {len(calib)} images of {calib.path}")
    idx = balanced_indices(calib.labels, subset, seed)
    labels = calib.labels[idx]
    counts = np.bincount(labels, minlength=len(CLASSES))
    return CalibrationSubset(calib.images[idx], labels, idx, dict(zip(CLASSES, counts.tolist())))


def calibration_items(images: np.ndarray, batch: int = 1) -> list[np.ndarray]:
    """Model inputs of `batch` images each (the last may be smaller), in subset order."""
    if batch < 1:
        raise CalibError(f"calibration batch must be at least 1, not {batch}")
    x = to_model_input(images)
    return [x[i : i + batch] for i in range(0, len(x), batch)]
