"""Tables from a study run: per condition, mean ± std over seeds, paired INT8 − FP32 intervals, the reference.

A condition is every grid axis of a cell except the seed (model, engine, source, algorithm, images per class,
calibration subset, bias correction, fusing, max drop); tables group by the whole condition and average over
seeds only, and any axis that varies in a run is a column of the table. The newest row of a cell counts.

The test split is small (1,000 images in the lossless copy), so an INT8 − FP32 difference is paired on the same
images: from the per-image predictions of the FP32 baseline and of each INT8 model, the report counts the
flipped predictions (right → wrong, wrong → right), gives McNemar's exact p per cell, and a 95 % bootstrap
interval over test images of the difference (for several seeds, of the per-image difference averaged over
seeds). A difference whose interval contains 0 reads "no measurable change".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from calibration.errors import CalibError
from calibration.runs import atomic_write_bytes, read_jsonl
from experiments.grid import Cell

CONDITION = [f for f in Cell.__dataclass_fields__ if f not in ("kind", "seed")]
FACETS = [f for f in CONDITION if f not in ("model", "engine", "source", "algo")]  # axes besides the main four
REFERENCE = Path(__file__).with_name("reference_study.csv")
NO_CHANGE = "no measurable change"
RESAMPLES = 10_000


def load_rows(run: Path) -> pd.DataFrame:
    """The run's rows, the newest per cell; the test labels (if the run kept them) ride in `attrs`."""
    rows = read_jsonl(run / "rows.jsonl")
    if not rows:
        raise CalibError(f"{run} has no study rows (rows.jsonl missing or empty)")
    df = pd.DataFrame(rows)
    if "cell" in df:
        df = df.drop_duplicates("cell", keep="last").reset_index(drop=True)
    labels = load_test_labels(run)
    if labels is not None:
        df.attrs["test_labels"] = labels
    return df


def load_test_labels(run: Path) -> np.ndarray | None:
    path = run / "test_labels.json"
    return digits(json.loads(path.read_text())["labels"]) if path.is_file() else None


def digits(text) -> np.ndarray | None:
    """A string of class digits (one per test image) as an int array; None for a missing value."""
    if not isinstance(text, str) or not text:
        return None
    return np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64) - 48


def load_reference(path: Path = REFERENCE) -> pd.DataFrame:
    """The reference study's Tables 1-2 (model, source, algorithm, accuracy, fps); FP32 rows have no source."""
    ref = pd.read_csv(path, comment="#", keep_default_na=False, na_values={"accuracy": [""], "fps": [""]})
    return ref.astype({"accuracy": float, "fps": float})


def paired_difference(fp32_correct: np.ndarray, int8_correct: np.ndarray, seed: int = 0,
                      resamples: int = RESAMPLES) -> dict:
    """INT8 − FP32 accuracy on the same images, with a 95 % paired bootstrap interval over images.

    `int8_correct` is (images,) or (seeds, images); with seeds, each image's difference is averaged over
    them first. Resampling images with replacement only changes how often each per-image value occurs, so
    the bootstrap draws those counts from a multinomial: exact, and fast for any number of resamples.
    """
    from scipy.stats import binomtest

    fp32 = np.asarray(fp32_correct, bool)
    int8 = np.atleast_2d(np.asarray(int8_correct, bool))
    seeds, n = int8.shape
    d = int8.sum(0).astype(np.int64) - seeds * fp32  # per image, in units of 1/seeds: integers, so 0 is exact
    values, counts = np.unique(d, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)
    lo, hi = np.quantile(draws @ values, [0.025, 0.975]) / (n * seeds)
    to_wrong = (fp32 & ~int8).sum(1)
    to_right = (~fp32 & int8).sum(1)
    pvalues = [binomtest(int(b), int(b + c), 0.5).pvalue if b + c else 1.0 for b, c in zip(to_wrong, to_right)]
    return {"delta": float(d.sum() / (n * seeds)), "ci_low": float(lo), "ci_high": float(hi),
            "flips_to_wrong": float(to_wrong.mean()), "flips_to_right": float(to_right.mean()),
            "mcnemar_p": float(max(pvalues)), "verdict": verdict(lo, hi)}


def verdict(lo: float, hi: float) -> str:
    if pd.isna(lo) or pd.isna(hi):
        return ""
    if lo <= 0 <= hi:
        return NO_CHANGE
    return "INT8 lower" if hi < 0 else "INT8 higher"


def _normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Every condition column present and without NaN, so groupby and pivot keep every condition."""
    df = df.copy()
    defaults = {"engine": "openvino", "source": "", "algo": "default", "per_class": 0, "subset_size": 0,
                "fast_bias_correction": True, "fuse": True, "max_drop": 0.01, "seed": 0}
    for col, value in defaults.items():
        if col not in df:
            df[col] = value
        df[col] = df[col].astype(object).where(df[col].notna(), value)
    for col in ("subset_size", "per_class", "seed"):  # subset_size 0: the whole set, as in grid files
        df[col] = df[col].astype(int)
    for col in ("status", "kind"):
        if col not in df:
            df[col] = "ok" if col == "status" else "quantize"
    return df


def _correct(predictions, labels: np.ndarray | None) -> np.ndarray | None:
    pred = digits(predictions)
    if pred is None or labels is None or len(pred) != len(labels):
        return None
    return pred == labels


def cell_table(df: pd.DataFrame, labels: np.ndarray | None = None) -> pd.DataFrame:
    """One row per finished quantize cell (one seed) with its FP32 baseline and the paired difference."""
    df = _normalize(df)
    base = df[(df.kind == "baseline") & (df.status == "ok")].drop_duplicates(["model", "engine"], keep="last")
    base = base.set_index(["model", "engine"])
    q = df[(df.kind == "quantize") & (df.status == "ok")].copy()
    for col in ("int8_accuracy", "int8_fps", "subset_size_images"):
        if col not in q:
            q[col] = np.nan
    keys = list(zip(q.model, q.engine))
    for col in ("fp32_accuracy", "fp32_fps"):
        q[col] = [base[col].get(k, np.nan) if col in base else np.nan for k in keys]
    for col in ("pytorch_accuracy", "pytorch_fps"):  # engine-independent: measured in one baseline per model
        per_model = base[col].dropna().groupby(level="model").first() if col in base else pd.Series(dtype=float)
        q[col] = [per_model.get(m, np.nan) for m in q.model]
    q["fp32_predictions"] = [base["fp32_predictions"].get(k) if "fp32_predictions" in base else None for k in keys]
    if "int8_predictions" not in q:
        q["int8_predictions"] = None
    stats = []
    for fp, ip in zip(q.fp32_predictions, q.int8_predictions):
        f, i = _correct(fp, labels), _correct(ip, labels)
        stats.append(paired_difference(f, i) if f is not None and i is not None else {})
    paired = pd.DataFrame(stats, index=q.index).reindex(columns=["ci_low", "ci_high", "flips_to_wrong",
                                                                 "flips_to_right", "mcnemar_p", "verdict"])
    q["delta_to_fp32"] = q.int8_accuracy.astype(float) - q.fp32_accuracy.astype(float)
    q = pd.concat([q, paired], axis=1)
    q["verdict"] = q["verdict"].fillna("")
    q["speedup"] = q.int8_fps.astype(float) / q.fp32_fps.astype(float)
    cols = [*CONDITION, "seed", "subset_size_images", "fp32_accuracy", "int8_accuracy", "delta_to_fp32",
            "ci_low", "ci_high", "flips_to_wrong", "flips_to_right", "mcnemar_p", "verdict", "int8_fps",
            "fp32_fps", "speedup", "pytorch_accuracy", "pytorch_fps", "fp32_predictions", "int8_predictions"]
    return q[cols].reset_index(drop=True)


def long_table(cells: pd.DataFrame, labels: np.ndarray | None = None) -> pd.DataFrame:
    """One row per condition: mean ± std over its seeds, FP32, and the paired difference pooled over seeds."""
    out = []
    for key, g in cells.groupby(CONDITION, dropna=False, sort=True):
        row = dict(zip(CONDITION, key))
        acc = g.int8_accuracy.astype(float)
        row |= {"seeds": int(g.seed.nunique()), "subset_size_images": g.subset_size_images.iloc[0],
                "fp32_accuracy": g.fp32_accuracy.iloc[0], "int8_accuracy": acc.mean(),
                "int8_accuracy_std": acc.std(ddof=1) if acc.count() > 1 else np.nan,
                "delta_to_fp32": (acc - g.fp32_accuracy.astype(float)).mean()}
        fp32 = _correct(g.fp32_predictions.iloc[0], labels)
        int8 = [_correct(ip, labels) for ip in g.int8_predictions]
        if fp32 is not None and all(c is not None for c in int8):
            p = paired_difference(fp32, np.stack(int8))
            row |= {"ci_low": p["ci_low"], "ci_high": p["ci_high"], "flips_to_wrong": p["flips_to_wrong"],
                    "flips_to_right": p["flips_to_right"], "mcnemar_p_max": p["mcnemar_p"], "verdict": p["verdict"]}
        else:
            row |= {"ci_low": np.nan, "ci_high": np.nan, "flips_to_wrong": np.nan, "flips_to_right": np.nan,
                    "mcnemar_p_max": np.nan, "verdict": ""}
        fps = g.int8_fps.astype(float).dropna()
        row |= {"int8_fps": fps.median() if len(fps) else np.nan, "fp32_fps": g.fp32_fps.iloc[0],
                "pytorch_accuracy": g.pytorch_accuracy.iloc[0], "pytorch_fps": g.pytorch_fps.iloc[0]}
        row["speedup"] = row["int8_fps"] / row["fp32_fps"] if row["fp32_fps"] else np.nan
        out.append(row)
    cols = [*CONDITION, "seeds", "subset_size_images", "fp32_accuracy", "int8_accuracy", "int8_accuracy_std",
            "delta_to_fp32", "ci_low", "ci_high", "flips_to_wrong", "flips_to_right", "mcnemar_p_max", "verdict",
            "int8_fps", "fp32_fps", "speedup", "pytorch_accuracy", "pytorch_fps"]
    return pd.DataFrame(out, columns=cols)


def varying(df: pd.DataFrame, axes: list[str] = FACETS) -> list[str]:
    """The axes that take more than one value in `df` (the ones a table or plot must show)."""
    return [a for a in axes if a in df and df[a].astype(str).nunique() > 1]


def _fmt(mean: float, std: float, n: int, digits: int = 4) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 and not pd.isna(std) else "")


def _wide(long: pd.DataFrame, algo: str, base: pd.DataFrame | None) -> pd.DataFrame:
    """Model (and every varying axis) × source: INT8 accuracy mean ± std over seeds, INT8 FPS; FP32 first."""
    part = long[long.algo == algo]
    index = ["model", *varying(part)]
    t = part.assign(cell=[_fmt(m, s, n) for m, s, n in zip(part.int8_accuracy, part.int8_accuracy_std, part.seeds)])
    wide = t.pivot(index=index, columns="source", values="cell").add_prefix("INT8 ").add_suffix(" acc")
    if t.int8_fps.notna().any():
        fps = t.pivot(index=index, columns="source", values="int8_fps").add_prefix("INT8 ").add_suffix(" FPS")
        fps = fps.map(lambda v: "-" if pd.isna(v) else f"{v:.0f}")
        wide = wide.join(fps)[[c for s in sorted(part.source.unique()) for c in (f"INT8 {s} acc", f"INT8 {s} FPS")]]
        wide = wide.drop(columns=[c for c in fps if (wide[c].fillna("-") == "-").all()])  # sources not timed
    wide = wide.fillna("-").reset_index()
    if base is not None and algo == "default":  # Table 1 also lists FP32 and models with speed only
        wide = base.merge(wide, on="model", how="outer")
    return wide.sort_values(index).reset_index(drop=True)


def _baseline_columns(df: pd.DataFrame, engine: str) -> pd.DataFrame:
    ok = df[(df.kind == "baseline") & (df.status == "ok")]
    b = ok[ok.engine == engine].drop_duplicates("model", keep="last")
    out = pd.DataFrame({"model": b.model.values})
    for col, label, digits_ in (("pytorch_accuracy", "PyTorch acc", 4), ("pytorch_fps", "PyTorch FPS", 0),
                                ("fp32_accuracy", "IR FP32 acc", 4), ("fp32_fps", "IR FP32 FPS", 0)):
        values = b[col].values if col in b else [np.nan] * len(b)
        if col.startswith("pytorch") and col in ok:  # measured in one baseline per model, whatever its engine
            per_model = ok.dropna(subset=[col]).drop_duplicates("model", keep="last").set_index("model")[col]
            values = [per_model.get(m, np.nan) for m in b.model]
        out[label] = [f"{v:.{digits_}f}" if not pd.isna(v) else "-" for v in values]
    return out


def reference_side_by_side(long: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our OpenVINO conditions next to the reference study's numbers, joined on exact (model, source, algo).

    Only exact model names join (the reference's shufflenetv2_x2_0 is not our shufflenetv2_x0_5); rows
    without a reference counterpart keep empty reference columns. The differences compare INT8 − FP32 drops,
    since the two test sets differ (10,000 images there, the run's test split here).
    """
    ref = load_reference() if reference is None else reference
    ours = long[long.engine == "openvino"]
    q = ref[ref.source != ""].rename(columns={"algorithm": "algo", "accuracy": "ref_int8_accuracy",
                                               "fps": "ref_int8_fps"})
    fp32 = ref[ref.algorithm == "fp32"].set_index("model")
    side = ours.merge(q, on=["model", "source", "algo"], how="left")
    side["ref_fp32_accuracy"] = side.model.map(fp32.accuracy)
    side["ref_delta_to_fp32"] = side.ref_int8_accuracy - side.ref_fp32_accuracy
    side["delta_minus_ref_delta"] = side.delta_to_fp32 - side.ref_delta_to_fp32
    side["ref_speedup"] = side.ref_int8_fps / side.model.map(fp32.fps)
    side["max_drop"] = side.max_drop.where(side.algo == "accuracy-aware")  # an accuracy-aware option only
    cols = ["model", "source", "algo", *varying(ours), "seeds", "fp32_accuracy", "int8_accuracy",
            "int8_accuracy_std", "delta_to_fp32", "ci_low", "ci_high", "flips_to_wrong", "flips_to_right",
            "verdict", "ref_fp32_accuracy", "ref_int8_accuracy", "ref_delta_to_fp32", "delta_minus_ref_delta",
            "speedup", "ref_speedup"]
    return side[cols].sort_values(["model", "algo", "source"]).reset_index(drop=True)


def tables(df: pd.DataFrame, labels: np.ndarray | None = None) -> dict[str, pd.DataFrame]:
    """Named tables: per engine `table1_` (default INT8), `table2_` (accuracy-aware), `long_` (per condition),
    `cells_` (per seed); `engines_side_by_side`, `reference_side_by_side` and `not_ok`."""
    labels = labels if labels is not None else df.attrs.get("test_labels")
    df = _normalize(df)
    cells = cell_table(df, labels)
    out: dict[str, pd.DataFrame] = {}
    longs = []
    for engine in sorted(df.engine.dropna().unique()):
        c = cells[cells.engine == engine]
        long = long_table(c, labels)
        longs.append(long)
        out[f"table1_{engine}"] = _wide(long, "default", _baseline_columns(df, engine))
        if (long.algo == "accuracy-aware").any():
            out[f"table2_{engine}"] = _wide(long, "accuracy-aware", None)
        out[f"long_{engine}"] = long
        out[f"cells_{engine}"] = c.drop(columns=["fp32_predictions", "int8_predictions"]).reset_index(drop=True)
    both = pd.concat(longs) if longs else pd.DataFrame(columns=[*CONDITION, "int8_accuracy"])
    if both.engine.nunique() > 1:  # the engines side by side, condition by condition
        index = [k for k in CONDITION if k != "engine"]
        side = both.pivot(index=index, columns="engine", values=["int8_accuracy", "delta_to_fp32", "speedup"])
        side.columns = [f"{v} {e}" for v, e in side.columns]
        side = side.reset_index()
        side["max_drop"] = side.max_drop.where(side.algo == "accuracy-aware")  # an accuracy-aware option only
        out["engines_side_by_side"] = side[["model", "source", "algo", *varying(side)]
                                           + [c for c in side.columns if " " in c]]
    if (both.engine == "openvino").any():
        out["reference_side_by_side"] = reference_side_by_side(both)
    cols = ["kind", "model", "source", "algo", "engine", "status", "reason"]
    out["not_ok"] = df[df.status != "ok"].reindex(columns=cols).drop_duplicates(
        subset=["status", "reason", "model", "source"])
    return out


def _markdown(table: pd.DataFrame) -> str:
    """Accuracies with 4 decimals, speeds as whole numbers, speed-ups with 2, p-values with 3 significant."""
    def fmt(col: str) -> str:
        if "fps" in col.lower() or col.endswith("_images") or col in ("seeds", "per_class", "subset_size"):
            return ".0f"
        if col == "max_drop":
            return ".2f"
        if "speedup" in col:
            return ".2f"
        if col.startswith("mcnemar") or col.startswith("flips"):
            return ".3g"
        return ".4f"

    shown = table.astype(object).where(table.notna(), None)  # tabulate writes missingval for None, not NaN
    return shown.to_markdown(index=False, floatfmt=tuple(fmt(c) for c in table.columns), missingval="-") + "\n"


def write_report(run: Path, out: Path | None = None) -> list[Path]:
    out = out or run / "report"
    written = []
    for name, table in tables(load_rows(run)).items():
        for suffix, text in ((".csv", table.to_csv(index=False)), (".md", _markdown(table))):
            path = out / f"{name}{suffix}"
            atomic_write_bytes(path, text.encode())
            written.append(path)
    return written
