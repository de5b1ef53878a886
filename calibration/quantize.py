"""INT8 post-training quantization with NNCF: default (min-max + bias correction) or accuracy-aware.

Calibration images come from a calibration set (never validation or test); accuracy-aware quantization
validates on the validation split cut from train, through a `validation_fn` that returns per-sample
correctness so NNCF ranks layers without re-running item by item.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from calibration.data import LabeledImages, require_role, to_model_input
from calibration.errors import CalibError
from calibration.sets import CalibrationSet, check_calibration_set


class Engine(str, Enum):
    openvino = "openvino"
    onnxruntime = "onnxruntime"


class CalibMethod(str, Enum):
    """ONNX Runtime's calibration methods (the OpenVINO path uses NNCF's own statistics)."""

    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class Algo(str, Enum):
    default = "default"
    accuracy_aware = "accuracy-aware"


class Preset(str, Enum):
    performance = "performance"
    mixed = "mixed"


class DropType(str, Enum):
    absolute = "absolute"
    relative = "relative"


@dataclass(frozen=True)
class QuantizeConfig:
    algo: Algo = Algo.default
    subset_size: int | None = None  # images; None = the whole set
    preset: Preset = Preset.performance
    fast_bias_correction: bool = True
    max_drop: float = 0.01
    drop_type: DropType = DropType.absolute
    seed: int = 0


def select_calibration(calib: CalibrationSet, subset_size: int | None, seed: int) -> np.ndarray:
    """The seeded subset of a set's images that calibration sees (identical for every engine)."""
    check_calibration_set(calib)
    subset = subset_size or len(calib)
    if subset > len(calib):
        raise CalibError(f"--subset-size {subset} exceeds the {len(calib)} images of {calib.path}")
    return calib.images[np.random.default_rng(seed).permutation(len(calib))[:subset]]


def calibration_items(images: np.ndarray) -> list[np.ndarray]:
    """One item per image (batch 1), so NNCF's `subset_size` counts images."""
    x = to_model_input(images)
    return [x[i : i + 1] for i in range(len(x))]


def _validation_fn(compiled_model, items) -> tuple[float, list[float]]:
    out = compiled_model.output(0)
    correct = [float(np.argmax(compiled_model(x)[out], axis=1)[0] == y) for x, y in items]
    return float(np.mean(correct)), correct


def quantize_model(ov_model, calib: CalibrationSet, cfg: QuantizeConfig = QuantizeConfig(),
                   validation: LabeledImages | None = None):
    """Return (INT8 ov.Model, record of the parameters actually used)."""
    import nncf

    images = select_calibration(calib, cfg.subset_size, cfg.seed)
    subset = len(images)
    dataset = nncf.Dataset(calibration_items(images))
    preset = nncf.QuantizationPreset.PERFORMANCE if cfg.preset == Preset.performance else nncf.QuantizationPreset.MIXED
    common = dict(preset=preset, target_device=nncf.TargetDevice.CPU, subset_size=subset,
                  fast_bias_correction=cfg.fast_bias_correction)
    record = {"algo": cfg.algo.value, "subset_size_images": subset, "preset": cfg.preset.value,
              "fast_bias_correction": cfg.fast_bias_correction, "target_device": "CPU", "seed": cfg.seed,
              "calib_set": str(calib.path), "calib_hash": calib.content_hash, "calib_source": calib.manifest["source"],
              "calib_images": len(calib), "nncf": nncf.__version__}
    t0 = time.perf_counter()
    if cfg.algo == Algo.default:
        q = nncf.quantize(ov_model, dataset, **common)
    else:
        if validation is None:
            raise CalibError("accuracy-aware quantization needs the validation split")
        require_role(validation, ("validation",), "accuracy-aware validation data")
        x = to_model_input(validation.images)
        val_items = [(x[i : i + 1], int(validation.labels[i])) for i in range(len(x))]
        drop = nncf.DropType.ABSOLUTE if cfg.drop_type == DropType.absolute else nncf.DropType.RELATIVE
        q = nncf.quantize_with_accuracy_control(ov_model, dataset, nncf.Dataset(val_items), _validation_fn,
                                                max_drop=cfg.max_drop, drop_type=drop, **common)
        record |= {"max_drop": cfg.max_drop, "drop_type": cfg.drop_type.value, "validation_images": len(x),
                   "validation_role": validation.role}
    record["quantize_seconds"] = round(time.perf_counter() - t0, 2)
    return q, record


def load_ir_or_zoo(model: str, weights: Path | None = None, fuse: bool = True, pretrained: bool = True):
    """`model` is a zoo name (trained weights unless `pretrained=False`, converted now) or an OpenVINO `.xml`."""
    import openvino as ov

    if model.endswith(".xml"):
        if not Path(model).is_file():
            raise CalibError(f"IR {model} does not exist")
        return ov.Core().read_model(model), {"model": model}
    from calibration.export import to_openvino
    from calibration.weights import load_model, resolve_weights

    if not pretrained:
        return to_openvino(load_model(model, pretrained=False, fuse=fuse)), {"model": model, "weights": "random"}
    path = resolve_weights(model, weights)
    return to_openvino(load_model(model, path, fuse=fuse)), {"model": model, "weights": str(path)}
