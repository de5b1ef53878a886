"""Quantization options shared by every engine, and the calibration subset every engine receives.

The subset is drawn from a calibration set (never validation or test), class-balanced and seeded; each
engine (`calibration.engines`) gets the same tensors (batch 1, or `calibration_batch` images each with
per-image statistics) and refuses the options it does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path

import numpy as np

from calibration.data import CLASSES, to_model_input
from calibration.errors import CalibError
from calibration.sets import CalibrationSet, check_calibration_set


class CalibMethod(str, Enum):
    """Activation range estimation. ONNX Runtime: minmax (its default), entropy, percentile (its histogram
    calibrator, bins stated in `calibration.engines.onnxruntime.HISTOGRAM`). OpenVINO: NNCF's own estimators
    (default; mean over images of per-image min/max for per-tensor activations) or minmax."""

    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"
    nncf = "nncf"


class Algo(str, Enum):
    default = "default"
    accuracy_aware = "accuracy-aware"


class Preset(str, Enum):
    """Weights symmetric in both; activations symmetric (performance) or asymmetric (mixed)."""

    performance = "performance"
    mixed = "mixed"


class OverflowFix(str, Enum):
    """NNCF: weights on half the INT8 range, against the saturation of 8-bit dot products on CPUs without VNNI.
    ONNX Runtime's counterpart is `QuantizeConfig.reduce_range` (7-bit weights everywhere)."""

    disable = "disable"
    first_layer = "first_layer_only"
    enable = "enable"


class DropType(str, Enum):
    absolute = "absolute"
    relative = "relative"


@dataclass(frozen=True)
class QuantizeConfig:
    """Engine-neutral options. None means "not given": the engine's own default applies, and an engine refuses
    every given option it does not have (`Engine.options`, `Engine.check_options`)."""

    algo: Algo = Algo.default
    subset_size: int | None = None  # images; None = the whole set
    preset: Preset | None = None  # None: performance for NNCF, mixed (asymmetric activations) for ONNX Runtime
    fast_bias_correction: bool | None = None  # NNCF; None: its default, True
    max_drop: float | None = None  # NNCF accuracy-aware; None: its default, 0.01
    drop_type: DropType | None = None  # NNCF accuracy-aware; None: its default, absolute
    seed: int = 0
    calibrate_method: CalibMethod | None = None
    ranking_subset_size: int | None = None  # NNCF accuracy-aware: validation images ranked; None = all of them
    overflow_fix: OverflowFix | None = None  # NNCF; None: its default, first_layer_only
    reduce_range: bool | None = None  # ONNX Runtime; None: on where the CPU has no VNNI (its own guidance)
    # images per calibration item; above 1, statistics stay per image (NNCF: batchwise_statistics), so the
    # result equals batch 1 up to float rounding (NNCF's bias correction sums in another order) in less time
    calibration_batch: int = 1

    def given(self) -> dict[str, object]:
        """The options set to something other than "not given" (their defaults), by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


def option_value(option: object) -> str:
    """An option's value as typed (an Enum's value, else the value itself), never a Python repr."""
    return str(getattr(option, "value", option))


def option_text(name: str, value: object) -> str:
    """An option as a user types it on the command line: `--no-fast-bias-correction`, `--algo accuracy-aware`."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {option_value(value)}"


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
