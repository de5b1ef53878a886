"""Are two study runs the same, cell by cell? Rows are paired by their resolved condition (`condition`), or by
the part of it that decides accuracy (`accuracy_condition`: the condition without the speed protocol), so a
smaller grid that times less pairs with the whole grid's rows. Every field both rows hold is compared except
those that say when, how long, where on disk, from which commit, or how fast.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from calib.core.errors import CalibError
from calib.core.runs import read_jsonl

# when, how long, which commit and code, which grid, where on disk: these differ between any two runs of a cell
VOLATILE = {"git_sha", "dirty", "code_fingerprint", "code_free_condition", "started_at", "finished_at",
            "work_finished_at", "wall_seconds", "cpu_seconds", "quantize_seconds", "nncf_log", "model_file",
            "generate_seconds", "peak_rss_mb", "out", "grid", "timed", "condition", "step_seconds", "speed_timed_by",
            "speed_started_at"}
VOLATILE_PARTS = ("_fps", "latency", "speed", "_rss", "seconds", "model_fingerprint")
# OpenVINO names the nodes it generates from a process-wide counter: an IR's bytes and the names of the layers
# accuracy-aware kept in FP32 carry them, so equal models differ there (the kept layers' count is compared)
NODE_NAMES = {"fp32_bytes", "int8_bytes", "aa_kept_fp32"}
KEYS = ("condition", "accuracy_condition")


def volatile(key: str) -> bool:
    return key in VOLATILE or key in NODE_NAMES or any(p in key for p in VOLATILE_PARTS)


@dataclass
class Comparison:
    paired: int
    statuses: dict[str, int]
    only_before: int
    only_after: int
    differ: Counter = field(default_factory=Counter)  # field -> rows where it differs
    examples: list[str] = field(default_factory=list)
    fields_only_in_one: set[str] = field(default_factory=set)  # fields one run's rows hold and the other's not

    @property
    def identical(self) -> bool:
        return self.paired > 0 and not self.differ


def _rows(run: Path, key: str, models: list[str] | None) -> dict[str, dict]:
    path = run / "rows.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise CalibError(f"{run} holds no rows.jsonl")
    rows = {}
    for r in read_jsonl(path):
        value = r.get(key)
        if value is None and key == "accuracy_condition" and "speed" not in r.get("condition_fields", ()):
            value = r.get("condition") if not r.get("timed") else None  # rows from before the field: an untimed
            # cell's condition was all accuracy then
        if value is not None and (not models or r.get("model") in models):
            rows[value] = r  # the newest row of a condition counts
    return rows


def compare(before: Path, after: Path, key: str = "condition", models: list[str] | None = None,
            ok_only: bool = True) -> Comparison:
    """Pair the rows of two runs by `key` and count the fields that differ."""
    if key not in KEYS:
        raise CalibError(f"unknown key {key!r}; pair rows by one of {', '.join(KEYS)}")
    a, b = _rows(before, key, models), _rows(after, key, models)
    if ok_only:
        a = {c: r for c, r in a.items() if r.get("status") == "ok"}
        b = {c: r for c, r in b.items() if r.get("status") == "ok"}
    paired = sorted(set(a) & set(b))
    out = Comparison(len(paired), dict(Counter(a[c]["status"] for c in paired)), len(set(a) - set(b)),
                     len(set(b) - set(a)))
    for c in paired:
        both = a[c].keys() & b[c].keys()
        out.fields_only_in_one |= {k for k in a[c].keys() ^ b[c].keys() if not volatile(k)}
        for k in sorted(k for k in both if not volatile(k)):
            if a[c][k] != b[c][k]:
                out.differ[k] += 1
                if out.differ[k] <= 3:
                    out.examples.append(f"{a[c].get('cell')} {a[c].get('model')} {a[c].get('source')} "
                                        f"{a[c].get('algo')} {k}: {str(a[c][k])[:60]} -> {str(b[c][k])[:60]}")
    return out
