"""The five-family table of a families run: for each model (RepVGG fused and unfused) and source, default INT8
minus FP32 in points with its paired 95 % interval over the test images (seeds pooled as the report pools
them), the seeds run, and the report's verdict; FP32 beside the weight card's test accuracy.

    python scripts/families_table.py results/study/families > results/study/families/families.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

SOURCES = ("cifar10", "distylegan", "fractal", "noise", "inversion")
SHORT = {"INT8 lower": "lower", "no measurable change": "same", "INT8 higher": "higher"}


def card_accuracy(weights_id: str) -> str:
    for folder in ("results/training", "../shared/weights"):
        for card in Path(folder).rglob(f"*-{weights_id}.json"):
            return f"{json.loads(card.read_text())['test_accuracy']:.4f}"
    return "-"


def main(run: Path) -> None:
    df = pd.read_csv(run / "report" / "long_openvino.csv")
    df = df[df.algo == "default"]
    lines = ["| model | FP32 (final test) | card (10,000) | " + " | ".join(SOURCES) + " |",
             "|---|---|---|" + "---|" * len(SOURCES)]
    for (model, fuse), part in df.groupby(["model", "fuse"], sort=True):
        name = model + ("" if "repvgg" not in model else " fused" if fuse else " unfused")
        cells = []
        for source in SOURCES:
            row = part[part.source == source]
            if row.empty:
                cells.append("not run")
                continue
            r = row.iloc[0]
            cells.append(f"{100 * r.delta_to_fp32:+.2f} [{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}] "
                         f"({int(r.seeds)} seed{'s' if r.seeds > 1 else ''}, {SHORT.get(r.verdict, r.verdict)})")
        first = part.iloc[0]
        lines.append(f"| {name} | {first.fp32_accuracy:.4f} | {card_accuracy(first.weights_id)} | "
                     + " | ".join(cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
