"""Repeat-to-repeat speed spread on this machine: calib's timed repeats (`calib benchmark models`, rows in
results/benchmark/quiet-spread.jsonl) beside OpenVINO's own benchmark_app (scripts/machine_spread.sh, in
results/benchmark/machine-spread.txt), each repeat over its series' median, with the 5 % band. The series are
read by `calib.study.blocks.spread_series`, the same reading as the `speed-spread` block of docs/results.md.

    python scripts/spread_figure.py   # writes results/benchmark/spread.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calib.core.figures import save_figure
from calib.study.blocks import spread_series

HERE = Path("results/benchmark")


def main(argv: list[str] | None = None) -> Path:
    """Draw the figure from the rows in `--rows` into `--out`; returns the file written."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=Path, default=HERE, help="folder of quiet-spread.jsonl and machine-spread.txt")
    ap.add_argument("--out", type=Path, default=HERE / "spread.png")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = spread_series(args.rows)
    spread = df.groupby("series").fps.agg(lambda v: (v.max() - v.min()) / v.median()).sort_values()
    machine = (args.rows / "machine-spread.txt").read_text().splitlines()[0].lstrip("# ").rsplit(",", 1)[0]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(spread) + 1.6))
    for y, name in enumerate(spread.index):
        part = df[df.series == name]
        ax.scatter(100 * (part.vs_median - 1), [y] * len(part), s=18,
                   color="tab:red" if name.startswith("benchmark_app") else "tab:blue")
    ax.axvspan(-2.5, 2.5, color="tab:green", alpha=0.15, label="a 5 % spread (max - min) around the median")
    ax.set_yticks(range(len(spread)), [f"{n}: {100 * s:.0f} %" for n, s in spread.items()], fontsize=7)
    ax.set_xlabel("repeat's throughput against its series' median (%)")
    ax.set_title(f"Repeat-to-repeat speed spread on {machine}: calib (blue) and OpenVINO's benchmark_app (red)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    path = save_figure(fig, args.out)
    print(path)
    return path


if __name__ == "__main__":
    main()
