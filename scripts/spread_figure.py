"""Repeat-to-repeat speed spread on this machine: calib's timed repeats (`calib benchmark models`, rows in
results/benchmark/quiet-spread.jsonl) beside OpenVINO's own benchmark_app (scripts/machine_spread.sh, in
results/benchmark/machine-spread.txt), each repeat over its series' median, with the 5 % band.

    python scripts/spread_figure.py   # writes results/benchmark/spread.png
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from calib.core.figures import save_figure

HERE = Path("results/benchmark")


def series() -> pd.DataFrame:
    rows = []
    for i, line in enumerate((HERE / "quiet-spread.jsonl").read_text().splitlines()):
        r = json.loads(line)
        for key in ("fp32_runs", "int8_runs", "fp32_latency_runs", "int8_latency_runs"):
            rows += [{"series": f"calib {r['model']} {key.removesuffix('_runs').replace('_', ' ')} (run {i + 1})",
                      "repeat": k + 1, "fps": v} for k, v in enumerate(r[key])]
    for line in (HERE / "machine-spread.txt").read_text().splitlines():
        m = re.match(r"t=(\d+)s fps=\[([^\]]*)\]", line)
        if m:
            rows += [{"series": f"benchmark_app resnet20 int8, {m[1]} s runs", "repeat": k + 1, "fps": float(v)}
                     for k, v in enumerate(m[2].split(","))]
    df = pd.DataFrame(rows)
    df["vs_median"] = df.fps / df.groupby("series").fps.transform("median")
    return df


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = series()
    spread = df.groupby("series").fps.agg(lambda v: (v.max() - v.min()) / v.median()).sort_values()
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(spread) + 1.6))
    for y, name in enumerate(spread.index):
        part = df[df.series == name]
        ax.scatter(100 * (part.vs_median - 1), [y] * len(part), s=18,
                   color="tab:red" if name.startswith("benchmark_app") else "tab:blue")
    ax.axvspan(-2.5, 2.5, color="tab:green", alpha=0.15, label="a 5 % spread (max - min) around the median")
    ax.set_yticks(range(len(spread)), [f"{n}: {100 * s:.0f} %" for n, s in spread.items()], fontsize=7)
    ax.set_xlabel("repeat's throughput against its series' median (%)")
    ax.set_title("Repeat-to-repeat speed spread on this 2-core AMD EPYC VM: calib (blue) and OpenVINO's "
                 "benchmark_app (red)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    print(save_figure(fig, HERE / "spread.png"))


if __name__ == "__main__":
    main()
