"""Are two study runs the same, cell by cell? Rows are paired by their resolved condition id; every field is
compared except those that say when, how long, or from which commit a row was made.

    python scripts/compare_runs.py results/study/official runs/study/official-after [--models resnet20 ...]

Exit 0 when every paired row is identical (and, without --models, both runs hold the same conditions).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

# when, how long, which commit, where on disk: these differ between any two runs of the same cell
VOLATILE = {"git_sha", "dirty", "started_at", "finished_at", "work_finished_at", "wall_seconds", "cpu_seconds",
            "quantize_seconds", "nncf_log", "model_file", "generate_seconds", "peak_rss_mb", "out"}
VOLATILE_PARTS = ("_fps", "latency", "speed", "_rss", "seconds")


def _rows(run: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines() if line.strip()]
    return {r["condition"]: r for r in rows}


def _volatile(key: str) -> bool:
    return key in VOLATILE or any(p in key for p in VOLATILE_PARTS)


def compare(before: Path, after: Path, models: list[str] | None = None) -> int:
    a, b = _rows(before), _rows(after)
    if models:
        a = {c: r for c, r in a.items() if r["model"] in models}
        b = {c: r for c, r in b.items() if r["model"] in models}
    paired = sorted(set(a) & set(b))
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    diffs: Counter[str] = Counter()
    for c in paired:
        keys = {k for k in a[c].keys() | b[c].keys() if not _volatile(k)}
        for k in keys:
            if a[c].get(k) != b[c].get(k):
                diffs[k] += 1
                if diffs[k] <= 3:
                    print(f"{a[c]['cell']} {a[c]['model']} {a[c].get('source')} {a[c].get('algo')} {k}: "
                          f"{str(a[c].get(k))[:60]} -> {str(b[c].get(k))[:60]}")
    statuses = Counter(a[c]["status"] for c in paired)
    print(f"paired {len(paired)} conditions ({dict(statuses)}); only in {before}: {len(only_a)}; "
          f"only in {after}: {len(only_b)}")
    print("identical in every compared field" if not diffs else f"fields that differ: {dict(diffs)}")
    return 0 if not diffs and not only_b and (models or not only_a) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--models", nargs="*")
    args = parser.parse_args()
    sys.exit(compare(args.before, args.after, args.models))


if __name__ == "__main__":
    main()
