"""The label-free estimate (`calib.core.drop`) against the truth of committed study cells: fitted on one run's
cells, judged on another's, and used to choose a calibration source without data.

- `drop_cells`: every finished quantize cell of a run that recorded probe signals, with its measured test drop
  (FP32 minus INT8 top-1 on the same images, from `calib.study.report.cell_table`) and per-image correctness.
- `fit_on` / `judge`: least squares of the measured drop on the signals; rank correlation, mean absolute error,
  how often the measured drop fell in the estimate's interval, and the cells it got most wrong.
- `choices`: for every group of cells that differ only by data-free source, the source the estimate picks, the
  best by true test accuracy, and whether the pick is within the paired 95 % interval of the best; against
  always taking inversion or always taking fractals.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from calib.core.drop import DropFit
from calib.core.errors import CalibError
from calib.core.own import DATA_FREE  # the sources a user without data can run (`--source auto` tries them)

GROUP = ["model", "engine", "algo", "isa", "fuse", "seed", "hardware_key", "weights_id"]  # cells that differ by source
ALWAYS = ("inversion", "fractal")  # the fixed rules the estimate's pick is set against
# What the fit reads: the KL divergence of INT8's softmax from FP32's on the probe. Chosen before the committed
# grids recorded any signal (on a trial run of the main grid's cells it tracked the drop best; flip rates of a few
# hundred images are coarse); one feature, so nothing is tuned to the cells it is judged on.
FIT_FEATURES = ("probe_kl",)  # of the signals `calib.core.drop.FEATURES` names


def family(model: str) -> str:
    """A model's family from its name: resnet20 -> resnet, shufflenetv2_x0_5 -> shufflenetv2."""
    m = re.match(r"([a-z]+?(?:v\d)?)\d*(?:_|$)", model)
    return m.group(1) if m else model


def drop_cells(run: Path) -> pd.DataFrame:
    """A run's quantize cells with probe signals: condition, `drop` (FP32 − INT8 test top-1), its paired interval,
    the signals and `correct` (per test image, for pairing cells with each other)."""
    from calib.study.report import cell_table, load_rows, row_correct

    df = load_rows(run)
    if not any(f in df for f in FIT_FEATURES):
        raise CalibError(f"{run}: no row records the label-free signals ({', '.join(FIT_FEATURES)}); rerun the grid")
    table = cell_table(df, probe=True)
    table["correct"] = [row_correct(df, p, sha) for p, sha in zip(table.int8_predictions, table.test_indices_sha256)]
    table["drop"] = -table.delta_to_fp32.astype(float)
    table["family"] = table.model.map(family)
    table["run"] = run.name
    keep = table[table[list(FIT_FEATURES)].notna().all(axis=1) & table["drop"].notna()]
    return keep.drop(columns=["fp32_predictions", "int8_predictions"]).reset_index(drop=True)


def fitted_on(name: str, cells: pd.DataFrame) -> str:
    """How a fit names the cells it was made from: the run, how many, on which machines."""
    return f"{name}: {len(cells)} cells ({'; '.join(sorted(set(cells.hardware_key)))})"


def fit_on(cells: pd.DataFrame, name: str) -> DropFit:
    if cells.empty:
        raise CalibError(f"no cells with signals and a measured drop to fit on ({name})")
    return DropFit.fit(cells[list(FIT_FEATURES)].to_numpy(float), cells["drop"].to_numpy(float), name,
                       features=FIT_FEATURES)


def with_estimates(cells: pd.DataFrame, fit: DropFit) -> pd.DataFrame:
    est = fit.predict(cells[list(fit.features)].to_numpy(float))
    return cells.assign(estimate=est, low=est + fit.residual_low, high=est + fit.residual_high)


def judge(cells: pd.DataFrame, fit: DropFit) -> dict:
    """How the fit does on `cells`: Spearman's rank correlation, mean absolute error (points), interval coverage."""
    from scipy.stats import spearmanr

    e = with_estimates(cells, fit)
    return {"cells": len(e), "spearman": float(spearmanr(e.estimate, e["drop"]).statistic),
            "mae_points": float(100 * (e.estimate - e["drop"]).abs().mean()),
            "coverage": float(((e["drop"] >= e.low) & (e["drop"] <= e.high)).mean())}


def worst(cells: pd.DataFrame, fit: DropFit, n: int = 5) -> pd.DataFrame:
    """The cells whose estimate missed their measured drop by most."""
    e = with_estimates(cells, fit)
    return e.assign(miss=(e.estimate - e["drop"]).abs()).nlargest(n, "miss")


def _within(best: np.ndarray | None, other: np.ndarray | None) -> bool:
    """Whether `other`'s accuracy is within the paired 95 % interval of `best`'s (the interval holds 0)."""
    from calib.study.report import paired_difference

    if best is None or other is None:
        return False
    d = paired_difference(best, other)
    return d["ci_low"] <= 0 <= d["ci_high"]


def choices(cells: pd.DataFrame, fit: DropFit) -> pd.DataFrame:
    """One row per group of cells that differ only by data-free source (at least two of them): the estimate's
    pick, the best by test accuracy, and whether the pick and each fixed rule are within its interval."""
    e = with_estimates(cells[cells.source.isin(DATA_FREE)], fit)
    out = []
    for key, g in e.groupby(GROUP, dropna=False):
        if g.source.nunique() < 2:
            continue
        best = g.loc[g.int8_accuracy.astype(float).idxmax()]
        pick = g.loc[g.estimate.idxmin()]
        row = dict(zip(GROUP, key)) | {"family": family(key[0]), "sources": g.source.nunique(),
                                       "pick": pick.source, "best": best.source,
                                       "pick_within": pick.source == best.source or _within(best.correct, pick.correct)}
        for rule in ALWAYS:
            fixed = g[g.source == rule]
            row[f"{rule}_within"] = None if fixed.empty else bool(
                fixed.iloc[0].source == best.source or _within(best.correct, fixed.iloc[0].correct))
        out.append(row)
    return pd.DataFrame(out)


def scatter(cells: pd.DataFrame, fit: DropFit, path: Path) -> Path:
    """Estimate against measured drop, one panel per model family, the fit's interval as a band around y = x."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    from calib.core.figures import save_figure

    e = with_estimates(cells, fit).assign(
        measured=lambda d: 100 * d["drop"], estimated=lambda d: 100 * d.estimate)
    g = sns.relplot(data=e, x="estimated", y="measured", hue="source", style="algo", col="family", col_wrap=3,
                    height=2.6, aspect=1.1, s=22, facet_kws={"sharex": False, "sharey": False})
    for ax in g.axes.flat:
        lo, hi = ax.get_xlim()
        xs = np.linspace(lo, hi, 2)
        ax.plot(xs, xs, color="grey", lw=0.8)
        ax.fill_between(xs, xs + 100 * fit.residual_low, xs + 100 * fit.residual_high, color="grey", alpha=0.15)
    g.set_axis_labels("estimated drop (points)", "measured test drop (points)")
    return save_figure(g.figure, path, dpi=110)


def validation(fit_run: Path, judge_run: Path) -> dict:
    """The whole validation: the fit made on `fit_run`'s cells and judged on `judge_run`'s, with the choice of
    source on each (everything a page or the command shows)."""
    fit_cells, judge_cells = drop_cells(fit_run), drop_cells(judge_run)
    fit = fit_on(fit_cells, fitted_on(fit_run.name, fit_cells))
    return {"fit": fit, "cells": {fit_run.name: fit_cells, judge_run.name: judge_cells},
            "judged": {fit_run.name: judge(fit_cells, fit), judge_run.name: judge(judge_cells, fit)},
            "choices": {fit_run.name: choices(fit_cells, fit), judge_run.name: choices(judge_cells, fit)},
            "fit_run": fit_run.name, "judge_run": judge_run.name}


def write_validation(result: dict, fit_out: Path | None, plots: Path | None) -> list[Path]:
    """The fit as `fit_out` (the file `calib.core.drop` ships) and a scatter per run under `plots`."""
    from calib.core.runs import atomic_write_bytes

    written = []
    if fit_out is not None:
        atomic_write_bytes(fit_out, result["fit"].to_json().encode())
        written.append(fit_out)
    if plots is not None:
        for name, cells in result["cells"].items():
            written.append(scatter(cells, result["fit"], plots / f"estimate-vs-measured-{name}.png"))
    return written
