"""Tables from a study run: Table 1 (model x source, accuracy and speed) and Table 2 (accuracy-aware).

Every number is mean ± std over the seeds of the run, with FP32 baselines measured in the same run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from calibration.errors import CalibError
from calibration.runs import atomic_write_bytes, read_jsonl


def load_rows(run: Path) -> pd.DataFrame:
    rows = read_jsonl(run / "rows.jsonl")
    if not rows:
        raise CalibError(f"{run} has no study rows (rows.jsonl missing or empty)")
    return pd.DataFrame(rows)


def _fmt(mean: float, std: float, n: int, digits: int) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def _agg(df: pd.DataFrame, keys: list[str], col: str) -> pd.DataFrame:
    if col not in df:
        df = df.assign(**{col: np.nan})
    return df.groupby(keys, dropna=False)[col].agg(["mean", "std", "count"]).reset_index()


def tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Table 1 (default INT8), Table 2 (accuracy-aware) and a long table with deltas to FP32."""
    base = df[(df.kind == "baseline") & (df.status == "ok")]
    quant = df[(df.kind == "quantize") & (df.status == "ok")].copy()
    out = {}
    for engine in sorted(df.engine.dropna().unique()):
        b = base[base.engine == engine].set_index("model")
        q = quant[quant.engine == engine]
        long = q.groupby(["model", "source", "algo", "fuse", "subset_size_images", "fast_bias_correction"],
                         dropna=False).agg(int8_accuracy=("int8_accuracy", "mean"),
                                           int8_accuracy_std=("int8_accuracy", "std"),
                                           seeds=("seed", "nunique"),
                                           **({"int8_fps": ("int8_fps", "median")} if "int8_fps" in q else {}))
        long = long.reset_index()
        long["fp32_accuracy"] = long.model.map(b["fp32_accuracy"]) if "fp32_accuracy" in b else np.nan
        long["delta_to_fp32"] = long.int8_accuracy - long.fp32_accuracy
        if "int8_fps" in long and "fp32_fps" in b:
            long["speedup"] = long.int8_fps / long.model.map(b["fp32_fps"])
        out[f"long_{engine}"] = long
        t1 = pd.DataFrame(index=sorted(set(b.index)))
        t1.index.name = "model"
        for col, label, digits in (("pytorch_accuracy", "PyTorch acc", 4), ("pytorch_fps", "PyTorch FPS", 0),
                                   ("fp32_accuracy", "IR FP32 acc", 4), ("fp32_fps", "IR FP32 FPS", 0)):
            values = b[col].reindex(t1.index) if col in b else pd.Series(np.nan, index=t1.index)
            t1[label] = [f"{v:.{digits}f}" if not pd.isna(v) else "-" for v in values]
        default = q[(q.algo == "default") & (q.fuse)]
        for source in sorted(default.source.unique()):
            s = default[default.source == source]
            acc = _agg(s, ["model"], "int8_accuracy").set_index("model")
            t1[f"INT8 {source} acc"] = [_fmt(*acc.loc[m], 4) if m in acc.index else "-" for m in t1.index]
            if "int8_fps" in s:
                fps = s.groupby("model")["int8_fps"].median()
                t1[f"INT8 {source} FPS"] = [f"{fps[m]:.0f}" if m in fps and not pd.isna(fps[m]) else "-"
                                            for m in t1.index]
        out[f"table1_{engine}"] = t1.reset_index()
        aa = q[q.algo == "accuracy-aware"]
        if len(aa):
            acc = _agg(aa, ["model", "source"], "int8_accuracy")
            acc["cell"] = [_fmt(m, s, n, 4) for m, s, n in zip(acc["mean"], acc["std"], acc["count"])]
            out[f"table2_{engine}"] = acc.pivot(index="model", columns="source", values="cell").reset_index()
    longs = [t.assign(engine=name.removeprefix("long_")) for name, t in out.items() if name.startswith("long_")]
    if len(longs) > 1:  # the engines side by side: same model, source and set, INT8 accuracy and speed-up
        both = pd.concat(longs)
        both = both[both.algo == "default"]
        cols = ["int8_accuracy", "speedup"] if "speedup" in both else ["int8_accuracy"]
        side = both.pivot_table(index=["model", "source", "subset_size_images"], columns="engine", values=cols)
        side.columns = [f"{v} {e}" for v, e in side.columns]
        out["engines_side_by_side"] = side.reset_index()
    cols = ["kind", "model", "source", "algo", "engine", "status", "reason"]
    skipped = df[df.status != "ok"].reindex(columns=cols)
    out["not_ok"] = skipped.drop_duplicates(subset=["status", "reason", "model", "source"])
    return out


def write_report(run: Path, out: Path | None = None) -> list[Path]:
    out = out or run / "report"
    written = []
    for name, table in tables(load_rows(run)).items():
        for suffix, text in ((".csv", table.to_csv(index=False)), (".md", table.to_markdown(index=False) + "\n")):
            path = out / f"{name}{suffix}"
            atomic_write_bytes(path, text.encode())
            written.append(path)
    return written
