"""One quantization as asked for, validated once: the CLI and a grid's TOML both build a `QuantizeSpec`.

Nothing heavy is imported here, so the CLI can offer these choices without loading an engine. Validation runs
at construction: values of the right kind and range, and only the options the chosen engine has
(`calib.core.engines.Engine.options`), each refused in one line named as the user typed it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path

from calib.core.errors import OptionError


class CalibMethod(StrEnum):
    """Activation range estimation. ONNX Runtime: minmax (its default), entropy, percentile (its histogram
    calibrator, bins stated in `calib.core.engines.onnxruntime.HISTOGRAM`). OpenVINO: NNCF's own estimators
    (default; mean over images of per-image min/max for per-tensor activations) or minmax."""

    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"
    nncf = "nncf"


class Algo(StrEnum):
    default = "default"
    accuracy_aware = "accuracy-aware"


class Preset(StrEnum):
    """Weights symmetric in both; activations symmetric (performance) or asymmetric (mixed)."""

    performance = "performance"
    mixed = "mixed"


class OverflowFix(StrEnum):
    """NNCF: weights on half the INT8 range, against the saturation of 8-bit dot products on CPUs without VNNI.
    ONNX Runtime's counterpart is `reduce_range` (7-bit weights everywhere)."""

    disable = "disable"
    first_layer = "first_layer_only"
    enable = "enable"


class DropType(StrEnum):
    absolute = "absolute"
    relative = "relative"


# the options an engine may have or lack (`Engine.options`); the other fields say what to quantize and where
QUANTIZATION_OPTIONS = ("algo", "subset_size", "preset", "fast_bias_correction", "max_drop", "drop_type", "seed",
                        "calibrate_method", "ranking_subset_size", "overflow_fix", "reduce_range",
                        "calibration_batch")
_CHOICES = {"algo": Algo, "preset": Preset, "drop_type": DropType, "calibrate_method": CalibMethod,
            "overflow_fix": OverflowFix}
ACCURACY_AWARE_ONLY = ("max_drop", "drop_type", "ranking_subset_size")
_AT_LEAST = {"subset_size": 1, "ranking_subset_size": 1, "calibration_batch": 1, "seed": 0, "max_drop": 0}


@dataclass(frozen=True)
class QuantizeSpec:
    """A quantization: which model, which calibration set, which engine, and how. None means "not given": the
    engine's own default applies, and an engine refuses every option given that it does not have."""

    model: str  # a zoo name or a model file
    calib: Path  # calibration set folder
    algo: Algo = Algo.default
    engine: str = "openvino"
    subset_size: int | None = None  # images; None = the whole set
    preset: Preset | None = None  # None: performance for NNCF, mixed (asymmetric activations) for ONNX Runtime
    fast_bias_correction: bool | None = None  # NNCF; None: its default, True
    max_drop: float | None = None  # NNCF accuracy-aware; None: its default, 0.01
    drop_type: DropType | None = None  # NNCF accuracy-aware; None: its default, absolute
    calibrate_method: CalibMethod | None = None
    seed: int = 0
    weights: Path | None = None
    data_dir: Path | None = None
    fuse: bool = True
    pretrained: bool = True  # False: random weights, for speed runs that need no trained model
    ranking_subset_size: int | None = None  # NNCF accuracy-aware: validation images ranked; None = all of them
    overflow_fix: OverflowFix | None = None  # NNCF; None: its default, first_layer_only
    reduce_range: bool | None = None  # ONNX Runtime; None: on where the CPU has no VNNI (its own guidance)
    # images per calibration item; above 1, statistics stay per image (NNCF: batchwise_statistics), so the
    # result equals batch 1 up to float rounding (NNCF's bias correction sums in another order) in less time
    calibration_batch: int = 1

    def __post_init__(self) -> None:
        for name, choice in _CHOICES.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, choice):
                try:
                    object.__setattr__(self, name, choice(value))
                except ValueError:
                    raise OptionError(f"--{name.replace('_', '-')} must be one of "
                                      f"{', '.join(c.value for c in choice)}, not {value}") from None
        for name, low in _AT_LEAST.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise OptionError(f"--{name.replace('_', '-')} must be at least {low}, not {value}")
        for name in ("calib", "weights", "data_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        from calib.core.engines.registry import get_engine

        get_engine(self.engine).check_options(self)  # first: an option the engine lacks says so
        if self.algo == Algo.default:
            given = [f"--{n.replace('_', '-')}" for n in ACCURACY_AWARE_ONLY if getattr(self, n) is not None]
            if given:
                raise OptionError(f"{', '.join(given)} applies to --algo accuracy-aware only; leave it out or add "
                                  "--algo accuracy-aware")

    def given(self) -> dict[str, object]:
        """The quantization options set to something other than "not given" (their defaults), by field name."""
        defaults = {f.name: f.default for f in fields(self)}
        return {n: getattr(self, n) for n in QUANTIZATION_OPTIONS if getattr(self, n) != defaults[n]}


def option_value(option: object) -> str:
    """An option's value as typed (an Enum's value, else the value itself), never a Python repr."""
    return str(getattr(option, "value", option))


def option_text(name: str, value: object) -> str:
    """An option as a user types it on the command line: `--no-fast-bias-correction`, `--algo accuracy-aware`."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {option_value(value)}"
