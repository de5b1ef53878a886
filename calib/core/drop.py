"""How much top-1 did INT8 lose, without labels: the FP32 and INT8 files run side by side on probe images that
no calibration saw, and what they disagree on mapped to an expected drop with an interval.

- Probe images come from a data-free source (`PROBE_SOURCES`: DiStyleGAN, whose images look like the classes a
  model knows; fractals told far less in trials) with their own seed (`probe_seed`): a user without data can
  make them, and a calibration set never holds one of them, even one made by the same generator.
- Signals (`signals`): how often the two files pick different classes, the mean KL divergence of their softmax
  outputs, and the SQNR of the INT8 outputs against the FP32 ones. None needs a label.
- The estimate (`estimate`): a linear fit of the true test drop on the signals, with an interval from the fit's
  residual quantiles, made from committed study cells whose drops are known (`calib study fit-drop`, which
  writes `drop_fit.json` beside this module). Rows keep the signals, so any fit can be judged against them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PROBE_SOURCES = ("distylegan",)
PROBE_PER_CLASS = 50  # 500 images
PROBE_SEED = 7919  # a seed calibration sets rarely take; `probe_seed` moves off it when one does
FIT_FILE = Path(__file__).with_name("drop_fit.json")


def probe_seed(calibration_source: str | None, calibration_seed: int | None) -> int:
    """The probe's seed: `PROBE_SEED`, or the next one where the calibration set came from a probe source with
    that very seed (its images would be the probe's)."""
    clash = calibration_source in PROBE_SOURCES and calibration_seed == PROBE_SEED
    return PROBE_SEED + 1 if clash else PROBE_SEED


def probe_facts(seed: int, per_class: int = PROBE_PER_CLASS) -> dict:
    """What a row records of its probe."""
    return {"probe_sources": "+".join(PROBE_SOURCES), "probe_per_class": per_class, "probe_seed": seed}


def probe_images(seed: int, make=None, per_class: int = PROBE_PER_CLASS) -> np.ndarray:
    """The probe's uint8 NHWC images, every source's in turn. `make(source, per_class, seed)` returns a source's
    images (default: the source registry at the zoo's 32x32; your own model passes one at its input size)."""
    if make is None:
        from calib.core.sources import generate

        def make(source: str, per_class: int, seed: int) -> np.ndarray:
            return generate(source, per_class, seed).images

    return np.concatenate([make(source, per_class, seed) for source in PROBE_SOURCES])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def compare_outputs(fp32: np.ndarray, int8: np.ndarray) -> dict:
    """Label-free signals of two models' outputs (N, classes) on the same images."""
    fp32, int8 = np.asarray(fp32, np.float64), np.asarray(int8, np.float64)
    p, q = _softmax(fp32), _softmax(int8)
    kl = (p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None)))).sum(1)
    noise = float(((fp32 - int8) ** 2).sum())
    sqnr = 10 * np.log10(float((fp32**2).sum()) / noise) if noise > 0 else 99.0
    return {"probe_flip": float((fp32.argmax(1) != int8.argmax(1)).mean()), "probe_kl": float(kl.mean()),
            "probe_sqnr_db": round(float(sqnr), 3), "probe_images": len(fp32)}


def signals(fp32_file: Path | str, int8_file: Path | str, x: np.ndarray, batch: int = 50) -> dict:
    """`compare_outputs` of the FP32 and INT8 files (each run by the engine that reads it) on model inputs `x`;
    a process that quantizes one FP32 file many times runs it on the probe once."""
    from calib.core.engines import engine_for_file
    from calib.core.export import fixed_batch

    batch = fixed_batch(str(int8_file)) or fixed_batch(str(fp32_file)) or batch
    key = (str(Path(fp32_file).resolve()), Path(fp32_file).stat().st_mtime_ns, hashlib.blake2b(x.tobytes()).hexdigest())
    if key not in _FP32_SCORES:
        _FP32_SCORES[key] = engine_for_file(fp32_file).scores(fp32_file, x, batch)[0]
    out8 = engine_for_file(int8_file).scores(int8_file, x, batch)[0]
    return compare_outputs(_FP32_SCORES[key], out8)


_FP32_SCORES: dict[tuple, np.ndarray] = {}  # (file, its mtime, the inputs' hash) -> outputs: 20 kB each


FEATURES = ("probe_flip", "probe_kl")  # what the fit reads of the signals


@dataclass(frozen=True)
class DropFit:
    """drop = intercept + coef . features, in accuracy (0.01 is one point), and a `level` interval from the
    residual quantiles of the cells it was fitted on."""

    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    residual_low: float
    residual_high: float
    level: float
    fitted_on: str  # which cells (grid folders, hardware) made it
    cells: int

    @classmethod
    def fit(cls, x: np.ndarray, drops: np.ndarray, fitted_on: str, level: float = 0.9,
            features: tuple[str, ...] = FEATURES) -> DropFit:
        """Least squares on `x` (cells, features) against true drops; the interval is the residuals' central
        `level` quantiles (split-conformal style: honest on cells like these, not on others)."""
        a = np.column_stack([np.ones(len(x)), x])
        beta = np.linalg.lstsq(a, drops, rcond=None)[0]
        residuals = drops - a @ beta
        tail = (1 - level) / 2
        return cls(tuple(features), tuple(float(b) for b in beta[1:]), float(beta[0]),
                   float(np.quantile(residuals, tail)), float(np.quantile(residuals, 1 - tail)), level, fitted_on,
                   len(drops))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.intercept + np.asarray(x, np.float64) @ np.asarray(self.coef)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @property
    def id(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]


def load_fit(path: Path = FIT_FILE) -> DropFit | None:
    """The shipped fit, or None where none was made yet."""
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    return DropFit(**{**d, "features": tuple(d["features"]), "coef": tuple(d["coef"])})


def estimate(found: dict, fit: DropFit | None = None) -> dict:
    """The expected top-1 drop of a cell from its signals, with the fit's interval (None without a fit)."""
    fit = fit if fit is not None else load_fit()
    if fit is None or any(found.get(f) is None for f in fit.features):
        return {"estimated_drop": None, "estimated_drop_low": None, "estimated_drop_high": None, "drop_fit": None}
    drop = float(fit.predict(np.array([[found[f] for f in fit.features]]))[0])
    return {"estimated_drop": round(drop, 5), "estimated_drop_low": round(drop + fit.residual_low, 5),
            "estimated_drop_high": round(drop + fit.residual_high, 5), "drop_fit": fit.id,
            "drop_fit_level": fit.level}


def measure(fp32_file: Path | str, int8_file: Path | str, x: np.ndarray, seed: int,
            per_class: int = PROBE_PER_CLASS) -> dict:
    """Everything a row records: the probe, its signals and the estimate."""
    found = signals(fp32_file, int8_file, x)
    return {**probe_facts(seed, per_class), **found, **estimate(found)}


def drop_text(row: dict) -> str:
    """One line for people: the estimate and its interval, or why there is none."""
    if row.get("estimated_drop") is None:
        if row.get("probe_flip") is None:
            return "no label-free estimate"
        return (f"INT8 and FP32 disagree on {100 * row['probe_flip']:.1f} % of {row['probe_images']} probe images "
                "(no fit shipped to turn it into a drop)")
    level = round(100 * row.get("drop_fit_level", 0.9))
    return (f"estimated top-1 drop without labels {100 * row['estimated_drop']:+.2f} points ({level} % interval "
            f"{100 * row['estimated_drop_low']:+.2f} to {100 * row['estimated_drop_high']:+.2f}; INT8 and FP32 "
            f"disagree on {100 * row['probe_flip']:.1f} % of {row['probe_images']} probe images)")
