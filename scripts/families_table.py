"""The five-family tables of a families run, one per algorithm: for each model (RepVGG fused and unfused) and
source, INT8 minus FP32 in points with its paired 95 % interval over the test images (seeds pooled as the report
pools them), the seeds run, and the report's verdict; FP32 beside the weight card's test accuracy. Accuracy-aware
cells also say how many layers NNCF kept in FP32, seed by seed.

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


def table(long: pd.DataFrame, kept: pd.DataFrame, algo: str) -> list[str]:
    df = long[long.algo == algo]
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
            layers = ""
            if algo == "accuracy-aware" and not kept.empty:
                k = kept[(kept.model == model) & (kept.fuse == fuse) & (kept.source == source)].sort_values("seed")
                layers = "; FP32 layers " + "/".join(str(int(n)) for n in k.aa_kept_fp32_count) if len(k) else ""
            cells.append(f"{100 * r.delta_to_fp32:+.2f} [{100 * r.ci_low:+.2f}, {100 * r.ci_high:+.2f}] "
                         f"({int(r.seeds)} seed{'s' if r.seeds > 1 else ''}, {SHORT.get(r.verdict, r.verdict)}"
                         f"{layers})")
        first = part.iloc[0]
        lines.append(f"| {name} | {first.fp32_accuracy:.4f} | {card_accuracy(first.weights_id)} | "
                     + " | ".join(cells) + " |")
    return lines


def main(run: Path) -> None:
    long = pd.read_csv(run / "report" / "long_openvino.csv")
    aa_path = run / "report" / "accuracy_aware_openvino.csv"
    kept = pd.read_csv(aa_path) if aa_path.is_file() else pd.DataFrame()
    for algo, title in (("default", "Default INT8"), ("accuracy-aware", "Accuracy-aware INT8 (max drop 0.02)")):
        print(f"**{title}**, INT8 − FP32 in points [paired 95 % interval]\n")
        print("\n".join(table(long, kept, algo)) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
