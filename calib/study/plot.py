"""Seaborn figures of a study run: accuracy change and speed-up heatmaps, speed with its spread, accuracy
against set size.

Every panel shows one condition per cell (every grid axis but the seed is fixed within a panel or is a
heatmap/line axis), averaged over seeds only: axes that vary in the run beyond model and source become
separate panels, titled with their values. Figures are made per machine, like the tables, and say which.
Speed-ups carry the larger relative spread ((max - min) / median) of their two timings; the speed figure shows
each timed model's median with its min and max.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from calib.core.figures import save_figure  # noqa: E402
from calib.study.report import FACETS, load_rows, tables, varying  # noqa: E402

FIGURE = {"dpi": 120, "palette": False}  # heatmaps keep their full colours


ROW_WORDS = {"fuse": {"True": "fused", "False": "unfused"}}  # how a folded axis reads in a row label


def heatmap_panels(long: pd.DataFrame, value: str, algo: str) -> list[tuple[str, pd.DataFrame]]:
    """(title, model × source table of `value`) for each combination of the other varying axes of `algo`. An
    axis only some models vary along (RepVGG's fuse) labels those models' rows instead: a panel of its own would
    hold one model."""
    part = long[(long.algo == algo) & long[value].notna()]
    if part.empty:
        return []
    facets = varying(part, FACETS)
    per_model = {f: part.groupby("model")[f].transform(lambda v: v.astype(str).nunique() > 1) for f in facets}
    folded = [f for f in facets if per_model[f].any() and not per_model[f].all()]
    for f in folded:
        words = part[f].astype(str).map(lambda v, f=f: ROW_WORDS.get(f, {}).get(v, f"{f}={v}"))
        part = part.assign(model=part.model.where(~per_model[f], part.model + " " + words))
    facets = [f for f in facets if f not in folded]
    groups = part.groupby(facets, sort=True) if facets else [((), part)]
    panels = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        pivot = g.pivot(index="model", columns="source", values=value)  # unique: the condition is complete
        title = ", ".join(f"{k}={v}" for k, v in zip(facets, key))
        panels.append((title, pivot))
    return panels


def _heatmap_figure(panels: list[tuple[str, pd.DataFrame]], title: str, scale: float, label: str, fmt: str,
                    cmap: str, center: float | None, notes: list[tuple[str, pd.DataFrame]] | None = None):
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    rows = max(p.shape[0] for _, p in panels)
    cols = max(p.shape[1] for _, p in panels)
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * (1.6 + 1.3 * cols), nrow * (1 + 0.6 * rows)),
                             squeeze=False)
    notes_by_title = dict(notes or [])
    values = np.concatenate([(p * scale).to_numpy(float).ravel() for _, p in panels])
    vmin, vmax = np.nanmin(values), np.nanmax(values)  # one colour scale: the panels compare by eye
    for ax, (sub, pivot) in zip(axes.flat, panels):
        annot = True
        if sub in notes_by_title:  # the value and, below it, its spread
            spread = notes_by_title[sub].reindex(index=pivot.index, columns=pivot.columns)
            annot = (pivot * scale).map(lambda v: "" if pd.isna(v) else format(v, fmt)) + spread.map(
                lambda v: "" if pd.isna(v) else f"\n({100 * v:.0f} %)")
            annot = annot.values
        sns.heatmap(pivot * scale, annot=annot, fmt=fmt if annot is True else "", cmap=cmap, center=center, ax=ax,
                    vmin=vmin, vmax=vmax, cbar_kws={"label": label})
        ax.set_title(sub, fontsize=9)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def speed_figure(speed: pd.DataFrame, title: str):
    """Each timed model's throughput: median, with a whisker from the slowest to the fastest repeat."""
    t = speed.dropna(subset=["fps"]).reset_index(drop=True)
    labels = [" ".join(str(x) for x in (r.model, r.precision, r.algo, r.source, "" if r.isa == "native" else r.isa)
                       if x).replace("  ", " ") for r in t.itertuples()]
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.32 * len(t)))
    med = t.fps.astype(float).values
    lo = med - t.fps_min.astype(float).fillna(t.fps).values
    hi = t.fps_max.astype(float).fillna(t.fps).values - med
    ax.barh(np.arange(len(t)), med, xerr=[lo, hi], color=["#4c72b0" if p == "FP32" else "#dd8452" for p in t.precision],
            capsize=3)
    for i, (m, sp) in enumerate(zip(med, t.fps_spread.astype(float))):
        ax.text(m, i, f"  {m:.0f}" + ("" if pd.isna(sp) else f" ({100 * sp:.1f} %)"), va="center", fontsize=7)
    ax.set_yticks(np.arange(len(t)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("throughput, images/s (median; whiskers: min and max repeat)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _machine(table: pd.DataFrame) -> str:
    machine = table.attrs.get("machine")
    return f"\n{machine}" if machine else ""


def write_plots(run: Path, out: Path | None = None) -> list[Path]:

    out = out or run / "plots"
    written = []
    all_tables = tables(load_rows(run))
    for name, long in all_tables.items():
        if not name.startswith("long_") or long.empty:
            continue
        engine = name.removeprefix("long_")  # with `__<machine>` where a run holds several machines
        where = _machine(long)
        for algo in sorted(long.algo.unique()):
            panels = heatmap_panels(long, "delta_to_fp32", algo)
            if panels:
                fig = _heatmap_figure(panels, f"INT8 - FP32 accuracy after {algo} INT8 ({engine.split('__')[0]}), "
                                      f"mean over seeds{where}", 100, "points", ".2f", "RdYlGn", 0)
                written.append(save_figure(fig, out / f"accuracy_drop_{algo}_{engine}.png", **FIGURE))
        long = long.assign(speedup_spread=long[["int8_fps_spread", "fp32_fps_spread"]].astype(float).max(axis=1))
        panels = heatmap_panels(long, "speedup", "default")
        if panels:
            notes = heatmap_panels(long[long.speedup.notna()], "speedup_spread", "default")
            fig = _heatmap_figure(panels, f"INT8 speed-up over FP32 ({engine.split('__')[0]}); in parentheses the "
                                  f"larger relative spread of the two timings{where}", 1, "INT8 / FP32 throughput",
                                  ".2f", "viridis", None, notes)
            written.append(save_figure(fig, out / f"speedup_{engine}.png", **FIGURE))
        speed = all_tables.get(f"speed_{engine}")
        if speed is not None and not speed.empty:
            fig = speed_figure(speed, f"Speed of every timed model ({engine.split('__')[0]}){where}")
            written.append(save_figure(fig, out / f"speed_{engine}.png", **FIGURE))
        cells = all_tables[f"cells_{engine}"].dropna(subset=["int8_accuracy", "subset_size_images"])
        if cells.subset_size_images.nunique() > 1:
            other = varying(cells, ["algo", *[f for f in FACETS if f != "subset_size"]])
            data = cells.assign(condition=[", ".join(f"{k}={r[k]}" for k in other) or "all"
                                           for _, r in cells.iterrows()])
            g = sns.relplot(data=data, x="subset_size_images", y="int8_accuracy", hue="source", col="model",
                            row="condition" if other else None, kind="line", marker="o", errorbar="sd",
                            height=3, facet_kws={"sharey": False})
            g.set(xscale="log")
            g.figure.suptitle(f"INT8 accuracy against calibration images ({engine.split('__')[0]}), mean ± std over "
                              f"seeds{where}", y=1.02)
            written.append(save_figure(g.figure, out / f"accuracy_vs_set_size_{engine}.png", **FIGURE))
    return written
