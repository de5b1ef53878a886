"""A run's rows: one flat row per cell in `rows.jsonl`, appended atomically; the fields that say which condition
and machine a row is of, the fields of an error row, and reading the newest row of each cell.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from calib.core.runs import append_jsonl, atomic_write_bytes
from calib.study.condition import Context, accuracy_part, code_free, condition_id

if TYPE_CHECKING:
    from calib.study.resolve import Resolved

ROWS = "rows.jsonl"


def repair_rows(path: Path) -> None:
    """Drop a torn last line left by a kill mid-write, so the next append starts on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        atomic_write_bytes(path, data[: data.rfind(b"\n") + 1])


def append_row(rows_path: Path, row: dict, on_row: Callable[[dict], None] | None) -> None:
    """Write a row, then tell `on_row` (the CLI's progress) about it."""
    append_jsonl(rows_path, row)
    if on_row is not None:
        on_row(row)


def newest_rows(rows: list[dict]) -> dict[str, dict]:
    """The newest row of each cell (rows are appended in time order, so a retried cell's last row counts)."""
    return {r["cell"]: r for r in rows if "cell" in r}


def identity_fields(cond: dict, ctx: Context) -> dict:
    """The flat row fields that say which condition a row is: its id, weights, data, versions, git state and the
    fingerprint of calib's code."""
    return {"condition": condition_id(cond), "accuracy_condition": condition_id(accuracy_part(cond)),
            "code_free_condition": condition_id(code_free(cond)), "code_fingerprint": cond.get("code"),
            "weights_sha256": cond["weights_sha256"],
            "data_train_sha256": ctx.data.get("data_train_sha256"),
            "data_test_sha256": ctx.data.get("data_test_sha256"),
            "git_sha": ctx.git["git_sha"], "dirty": ctx.git["dirty"],
            **{f"version_{k}": v for k, v in ctx.versions.items()}}


def hardware_fields(hw: dict) -> dict:
    """A process's hardware fields for a row; the ISA oneDNN runs is `isa_effective` (the cell's `isa` axis
    is what was asked for)."""
    return {"cpu": hw["cpu"], "cpu_count": hw["cpu_count"], "cpu_flags": hw["cpu_flags"],
            "isa_native": hw["isa_native"], "isa_effective": hw["isa"], "onednn_max_cpu_isa": hw["onednn_max_cpu_isa"],
            "cpu_caps": hw.get("cpu_caps", {}), "hardware_key": hw["hardware_key"]}


def failure_fields(e: Exception) -> dict:
    """The fields that make a row an error row: the exception in one line, and where it came from."""
    return {"status": "error", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=3)}


def error_row(rc: Resolved, reason: str) -> dict:
    """The row of a cell that never ran (its set could not be made, its worker died)."""
    return {**rc.row, "status": "error", "reason": reason, "wall_seconds": 0.0}
