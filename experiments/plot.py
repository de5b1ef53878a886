"""Seaborn heatmaps of a study run: accuracy drop per algorithm, INT8/FP32 speed-up, accuracy vs set size."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from experiments.report import load_rows, tables  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def write_plots(run: Path, out: Path | None = None) -> list[Path]:
    out = out or run / "plots"
    written = []
    for name, long in tables(load_rows(run)).items():
        if not name.startswith("long_") or long.empty:
            continue
        engine = name.removeprefix("long_")
        fused = long[long.fuse.astype(bool)]
        for algo in sorted(fused.algo.unique()):
            pivot = fused[fused.algo == algo].groupby(["model", "source"])["delta_to_fp32"].mean().unstack()
            pivot = pivot.dropna(how="all").dropna(axis=1, how="all")  # models without trained weights
            if pivot.size:
                fig, ax = plt.subplots(figsize=(1.6 + 1.3 * pivot.shape[1], 1 + 0.6 * pivot.shape[0]))
                sns.heatmap(pivot * 100, annot=True, fmt=".2f", cmap="RdYlGn", center=0, ax=ax,
                            cbar_kws={"label": "INT8 - FP32 top-1 (points)"})
                ax.set_title(f"accuracy change after {algo} INT8 ({engine})")
                written.append(_save(fig, out / f"accuracy_drop_{algo}_{engine}.png"))
        if "speedup" in long and long.speedup.notna().any():
            sp = long[long.algo == "default"].groupby(["model", "source"])["speedup"].median().unstack()
            fig, ax = plt.subplots(figsize=(1.6 + 1.3 * sp.shape[1], 1 + 0.6 * sp.shape[0]))
            sns.heatmap(sp, annot=True, fmt=".2f", cmap="viridis", ax=ax, cbar_kws={"label": "INT8 / FP32 throughput"})
            ax.set_title(f"INT8 speed-up over the FP32 IR ({engine})")
            written.append(_save(fig, out / f"speedup_{engine}.png"))
        sizes = long.dropna(subset=["subset_size_images"])
        if sizes.subset_size_images.nunique() > 1:
            g = sns.relplot(data=sizes, x="subset_size_images", y="int8_accuracy", hue="source", col="model",
                            kind="line", marker="o", col_wrap=min(3, sizes.model.nunique()), height=3)
            g.set(xscale="log")
            written.append(_save(g.figure, out / f"accuracy_vs_set_size_{engine}.png"))
    return written
