"""Tables from a study run: per condition, mean ± std over seeds, paired INT8 − FP32 intervals, the reference.

A condition is every grid axis of a cell except the seed (model, engine, source, algorithm, images per class,
calibration subset, bias correction, fusing, max drop, ISA) and the weights (`weights_id`, the first 8 hex of
their sha256; "random" for speed-only rows); tables group by the whole condition and average over seeds only, and
any axis that varies in a run is a column of the table. Tables are made per machine (`hardware_key`: CPU model
and the ISA its kernels ran); rows are never pooled or paired across machines or weights, an INT8 row is paired
with the FP32 baseline of the same model, engine, fusing, ISA, weights and machine, and each table says which
machine made it (`DataFrame.attrs["machine"]`, and a line above it in the Markdown files). With more than one
machine in a run, table names end in `__<machine>`. The newest ok row of a cell per machine and weights counts,
and a skipped or failed row only while it is the newest of its cell on that machine.
Rows without accuracy (random weights: speed only) are never counted as seeds; rows from a dirty tree are
marked (`dirty`, and † in Tables 1-2).

The test split is small (1,000 images in the lossless copy), so an INT8 − FP32 difference is paired on the same
images: from the per-image predictions of the FP32 baseline and of each INT8 model, the report counts the
flipped predictions (right → wrong, wrong → right), gives McNemar's exact p per cell, and a 95 % bootstrap
interval over test images of the difference (for several seeds, of the per-image difference averaged over
seeds). A difference whose interval contains 0 reads "no measurable change".

The INT8/FP32 speed-up of a timed cell is the one its row carries from interleaved repeats (INT8 and its
baseline's FP32 file timed in turns, A B A B), with a 95 % bootstrap interval over the repeat pairs
(`int8_speedup`, `int8_speedup_low`, `int8_speedup_high`); older rows have only the ratio of the two separate
medians, shown without an interval and marked "not interleaved".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from calib.core.errors import CalibError
from calib.core.hardware import row_hardware_key
from calib.core.runs import atomic_write_bytes, predictions_from_str, read_jsonl
from calib.study.grid import Cell

CONDITION = [*(f for f in Cell.__dataclass_fields__ if f not in ("kind", "seed")), "weights_id"]
FACETS = [f for f in CONDITION if f not in ("model", "engine", "source", "algo")]  # axes besides the main four
BASELINE_KEY = ["model", "engine", "fuse", "isa", "weights_id"]  # within one machine: what INT8 is paired with
# what accuracy-aware cells record about their validation (see calib.core.data.Evaluation and the engines)
AA_FIELDS = ["validation_source", "validation_images", "aa_fp32_validation_accuracy", "aa_int8_validation_accuracy",
             "aa_kept_fp32_count"]
DIRTY = " †"  # after a value from a dirty tree
UNRECORDED = "unrecorded"
REFERENCE = Path(__file__).with_name("reference_study.csv")
NO_CHANGE = "no measurable change"
RESAMPLES = 10_000
PROBE = ["probe_flip", "probe_kl", "probe_sqnr_db", "probe_images"]  # the label-free signals (`calib.core.drop`)
SPEEDUP = ["speedup", "speedup_low", "speedup_high", "speedup_repeats", "speedup_interleaved"]
NOT_INTERLEAVED = " ‡"  # after a speed-up from separate medians
NOT_INTERLEAVED_NOTE = ("‡ not interleaved: the ratio of INT8's and FP32's separate median throughputs (rows timed "
                        "before interleaved repeats), without an interval.")


def load_rows(run: Path) -> pd.DataFrame:
    """The run's rows, the newest per cell; the test labels (if the run kept them) ride in `attrs`."""
    rows = read_jsonl(run / "rows.jsonl")
    if not rows:
        raise CalibError(f"{run} has no study rows (rows.jsonl missing or empty)")
    df = identify(pd.DataFrame(rows), _manifest_cpu(run))
    if "cell" in df:
        status = df["status"] if "status" in df else pd.Series("ok", index=df.index)
        ok = df[status == "ok"].drop_duplicates(["cell", "hardware_key", "weights_id"], keep="last")
        newest = df.drop_duplicates(["cell", "hardware_key"], keep="last")
        df = pd.concat([ok, newest[status[newest.index] != "ok"]]).sort_index().reset_index(drop=True)
    labels = load_test_labels(run)
    if labels is not None:
        df.attrs["test_labels"] = labels
    subsets = {p.stem: np.asarray(json.loads(p.read_text())["indices"], np.int64)
               for p in sorted((run / "test_indices").glob("*.json"))}
    if subsets:
        df.attrs["test_subsets"] = subsets
    return df


def _manifest_cpu(run: Path) -> str | None:
    """The CPU every manifest of the run names, if they agree (rows older than the hardware fields)."""
    cpus = {json.loads(p.read_text()).get("cpu") for p in run.glob("manifest-*.json")}
    return cpus.pop() if len(cpus) == 1 and None not in cpus else None


_SHA8 = re.compile(r"-([0-9a-f]{8})\.pt$")


def _weights_id(row: dict) -> str:
    sha = row.get("weights_sha256")
    if isinstance(sha, str) and sha:
        return sha[:8]
    if row.get("trained_weights") is False:
        return "random"
    m = _SHA8.search(str(row.get("weights") or ""))  # the release's file names carry their sha256 prefix
    return m.group(1) if m else UNRECORDED


def identify(df: pd.DataFrame, cpu: str | None = None) -> pd.DataFrame:
    """`hardware_key` and `weights_id` on every row: the two things rows are never pooled or paired across.
    The key is made from the row's CPU and ISA fields (`row_hardware_key`), so a capped row written before the
    key named the cap is not pooled with a machine whose own ISA that is. Rows older than these fields get the
    run's CPU with an unrecorded ISA, and the weights' sha256 prefix from the file name."""
    df = df.copy()
    recorded = df["hardware_key"] if "hardware_key" in df else pd.Series(None, index=df.index, dtype=object)
    fallback = f"{cpu} | ISA {UNRECORDED}" if cpu else UNRECORDED
    if "cpu" in df:
        fallback = df["cpu"].map(lambda c: f"{c} | ISA {UNRECORDED}" if isinstance(c, str) else None).fillna(fallback)
    derived = pd.Series([row_hardware_key(r) for r in df.to_dict("records")], index=df.index, dtype=object)
    recorded = derived.where(derived.notna(), recorded)  # from the fields: an older row's key names its cap too
    df["hardware_key"] = recorded.where(recorded.notna(), fallback)
    df["weights_id"] = [_weights_id(r) for r in df.to_dict("records")]
    return df


def load_test_labels(run: Path) -> np.ndarray | None:
    path = run / "test_labels.json"
    return digits(json.loads(path.read_text())["labels"]) if path.is_file() else None


def digits(text) -> np.ndarray | None:
    """A string of class digits (one per test image) as an int array (`calib.core.runs.predictions_from_str`);
    None for a missing value (None, NaN or an empty string in a row)."""
    if not isinstance(text, str) or not text:
        return None
    return predictions_from_str(text)


def load_reference(path: Path = REFERENCE) -> pd.DataFrame:
    """The reference study's Tables 1-2 (model, source, algorithm, accuracy, fps); FP32 rows have no source."""
    ref = pd.read_csv(path, comment="#", keep_default_na=False, na_values={"accuracy": [""], "fps": [""]})
    return ref.astype({"accuracy": float, "fps": float})


def paired_difference(fp32_correct: np.ndarray, int8_correct: np.ndarray, seed: int = 0,
                      resamples: int = RESAMPLES) -> dict:
    """INT8 − FP32 accuracy on the same images, with a 95 % paired bootstrap interval over images.

    `int8_correct` is (images,) or (seeds, images); with seeds, each image's difference is averaged over
    them first. `fp32_correct` is (images,), one reference for every seed, or (seeds, images), a reference per
    seed (e.g. one ISA against another, each seed its own pair). Resampling images with replacement only
    changes how often each per-image value occurs, so the bootstrap draws those counts from a multinomial:
    exact, and fast for any number of resamples.
    """
    from scipy.stats import binomtest

    int8 = np.atleast_2d(np.asarray(int8_correct, bool))
    seeds, n = int8.shape
    fp32 = np.broadcast_to(np.asarray(fp32_correct, bool), int8.shape)
    d = int8.sum(0, dtype=np.int64) - fp32.sum(0, dtype=np.int64)  # per image, in 1/seeds: integers, 0 is exact
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
    if "hardware_key" not in df or "weights_id" not in df:
        df = identify(df)
    defaults = {"engine": "openvino", "source": "", "algo": "default", "per_class": 0, "subset_size": 0,
                "fast_bias_correction": True, "fuse": True, "max_drop": 0.01, "seed": 0, "isa": "native",
                "dirty": False}
    for col, value in defaults.items():
        if col not in df:
            df[col] = value
        df[col] = df[col].astype(object).where(df[col].notna(), value)
    for col in [c for c in df.columns if c.endswith("_fps_spread")]:  # older rows held the runs themselves
        df[col] = [_relative_spread(v) if isinstance(v, list) else v for v in df[col]]
    for col in ("subset_size", "per_class", "seed"):  # subset_size 0: the whole set, as in grid files
        df[col] = df[col].astype(int)
    for col in ("status", "kind"):
        if col not in df:
            df[col] = "ok" if col == "status" else "quantize"
    return df


def _relative_spread(runs: list) -> float:
    v = np.asarray(runs, float)
    return float((v.max() - v.min()) / np.median(v)) if len(v) and np.median(v) else np.nan


def _correct(predictions, labels: np.ndarray | None, subset: np.ndarray | None = None) -> np.ndarray | None:
    """Per test image, whether the prediction is right; `subset`: the indices the predictions are of."""
    pred = digits(predictions)
    if pred is None or labels is None:
        return None
    if subset is not None:
        if subset.max(initial=-1) >= len(labels):
            return None
        labels = labels[subset]
    if len(pred) != len(labels):
        return None
    return pred == labels


def _subset(sha, subsets: dict | None) -> np.ndarray | None:
    return (subsets or {}).get(sha) if isinstance(sha, str) else None


def row_correct(df: pd.DataFrame, predictions, test_indices_sha256) -> np.ndarray | None:
    """Per test image of one of `df`'s rows (`load_rows`), whether its prediction is right: the run's labels, on
    the test images the row was scored on."""
    subset = _subset(test_indices_sha256, df.attrs.get("test_subsets"))
    return _correct(predictions, df.attrs.get("test_labels"), subset)


def _pick(row: dict | None, col: str):
    return np.nan if row is None else row.get(col, np.nan)


def cell_table(df: pd.DataFrame, labels: np.ndarray | None = None, subsets: dict | None = None,
               probe: bool = False) -> pd.DataFrame:
    """One row per finished quantize cell (one seed) with its FP32 baseline and the paired difference. The
    baseline is the one of the same model, engine, fusing, ISA, weights and machine, on the same test images;
    a cell without one has no FP32 columns. Labels and test subsets default to those riding in `df.attrs`.
    `probe`: also the cell's id and its label-free signals (`PROBE`)."""
    labels = labels if labels is not None else df.attrs.get("test_labels")
    subsets = subsets if subsets is not None else df.attrs.get("test_subsets")
    df = _normalize(df)
    ok = df[df.status == "ok"]
    key = [*BASELINE_KEY, "hardware_key"]
    base = {tuple(r[k] for k in key): r for r in ok[ok.kind == "baseline"].to_dict("records")}  # the newest wins
    torch_key = ["model", "isa", "weights_id", "hardware_key"]  # PyTorch: one baseline per model and ISA has it
    torch = {tuple(r[k] for k in torch_key): r for r in ok[ok.kind == "baseline"].to_dict("records")
             if not pd.isna(r.get("pytorch_accuracy", np.nan)) or not pd.isna(r.get("pytorch_fps", np.nan))}
    q = ok[ok.kind == "quantize"].copy()
    for col in ("int8_accuracy", "int8_fps", "int8_fps_spread", "subset_size_images", "test_indices_sha256",
                "git_sha", "int8_predictions"):
        if col not in q:
            q[col] = np.nan if col != "int8_predictions" else None
    records = q.to_dict("records")
    bases = [base.get(tuple(r[k] for k in key)) for r in records]
    for i, (b, r) in enumerate(zip(bases, records)):  # the same test images, or no pairing
        if b is not None and isinstance(b.get("test_indices_sha256"), str) and isinstance(
                r.get("test_indices_sha256"), str) and b["test_indices_sha256"] != r["test_indices_sha256"]:
            bases[i] = None
    for col in ("fp32_accuracy", "fp32_fps", "fp32_fps_spread"):
        q[col] = [_pick(b, col) for b in bases]
    q["fp32_predictions"] = [None if b is None else b.get("fp32_predictions") for b in bases]
    torches = [torch.get(tuple(r[k] for k in torch_key)) for r in records]
    for col in ("pytorch_accuracy", "pytorch_fps"):
        q[col] = [_pick(t, col) for t in torches]
    stats = []
    for fp, ip, sha in zip(q.fp32_predictions, q.int8_predictions, q.test_indices_sha256):
        sub = _subset(sha, subsets)
        f, i = _correct(fp, labels, sub), _correct(ip, labels, sub)
        stats.append(paired_difference(f, i) if f is not None and i is not None else {})
    paired = pd.DataFrame(stats, index=q.index).reindex(columns=["ci_low", "ci_high", "flips_to_wrong",
                                                                 "flips_to_right", "mcnemar_p", "verdict"])
    q["delta_to_fp32"] = q.int8_accuracy.astype(float) - q.fp32_accuracy.astype(float)
    q = pd.concat([q, paired], axis=1)
    q["verdict"] = q["verdict"].fillna("")
    q = pd.concat([q, cell_speedups(q)], axis=1)
    cols = [*CONDITION, "seed", "subset_size_images", "fp32_accuracy", "int8_accuracy", "delta_to_fp32",
            "ci_low", "ci_high", "flips_to_wrong", "flips_to_right", "mcnemar_p", "verdict", "int8_fps",
            "int8_fps_spread", "fp32_fps", "fp32_fps_spread", *SPEEDUP, "pytorch_accuracy", "pytorch_fps",
            "dirty", "git_sha", "hardware_key", "test_indices_sha256", *AA_FIELDS,
            *([*PROBE, "cell"] if probe else []), "fp32_predictions", "int8_predictions"]
    return q.reindex(columns=cols).reset_index(drop=True)


def cell_speedups(q: pd.DataFrame) -> pd.DataFrame:
    """Each quantize cell's INT8/FP32 speed-up (`SPEEDUP` columns): from its interleaved repeats where its row
    has them (`int8_speedup` and its interval), else the ratio of the separate medians (no interval)."""
    cols = {c: q[c].astype(float) if c in q else pd.Series(np.nan, index=q.index)
            for c in ("int8_speedup", "int8_speedup_low", "int8_speedup_high", "int8_speedup_repeats")}
    interleaved = cols["int8_speedup"].notna()
    separate = q.int8_fps.astype(float) / q.fp32_fps.astype(float)
    return pd.DataFrame({"speedup": cols["int8_speedup"].where(interleaved, separate),
                         "speedup_low": cols["int8_speedup_low"].where(interleaved),
                         "speedup_high": cols["int8_speedup_high"].where(interleaved),
                         "speedup_repeats": cols["int8_speedup_repeats"].where(interleaved),
                         "speedup_interleaved": interleaved.where(interleaved | separate.notna())},
                        index=q.index)


def condition_speedup(timed: pd.DataFrame) -> dict:
    """A condition's speed-up from its timed cells: the median, and the widest interval of them (each cell's
    interval is over its own repeats); interleaved only when every timed cell was."""
    timed = timed[timed.speedup.notna()]
    if timed.empty:
        return dict.fromkeys(SPEEDUP, np.nan)
    interleaved = bool(timed.speedup_interleaved.astype(bool).all())
    return {"speedup": float(timed.speedup.astype(float).median()),
            "speedup_low": float(timed.speedup_low.astype(float).min()) if interleaved else np.nan,
            "speedup_high": float(timed.speedup_high.astype(float).max()) if interleaved else np.nan,
            "speedup_repeats": float(timed.speedup_repeats.astype(float).min()) if interleaved else np.nan,
            "speedup_interleaved": interleaved}


def speedup_text(speedup: float, low: float, high: float, interleaved) -> str | None:
    """`2.31 [2.20, 2.45]` (interleaved, 95 % interval) or `2.31 ‡` (separate medians); None without one."""
    if speedup is None or pd.isna(speedup):
        return None
    if interleaved is True or (not pd.isna(interleaved) and bool(interleaved)):
        if pd.isna(low) or pd.isna(high):
            return f"{speedup:.2f}"
        return f"{speedup:.2f} [{low:.2f}, {high:.2f}]"
    return f"{speedup:.2f}{NOT_INTERLEAVED}"


def speedup_view(table: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """The table as shown: each speed-up column (`speedup`, `speedup openvino`, ...) as text with its interval
    or the not-interleaved mark, its helper columns dropped. Returns the table and whether any speed-up was not
    interleaved (the footnote `NOT_INTERLEAVED_NOTE` goes under it)."""
    out, marked = table.copy(), False
    for col in [c for c in table.columns if str(c).startswith("speedup") and not str(c).startswith(tuple(
            f"speedup_{h}" for h in ("low", "high", "repeats", "interleaved")))]:
        suffix = str(col).removeprefix("speedup")
        helpers = [f"speedup_{h}{suffix}" for h in ("low", "high", "repeats", "interleaved")]
        if f"speedup_interleaved{suffix}" not in table:
            continue
        low, high, _, inter = (table[h] if h in table else pd.Series(np.nan, index=table.index) for h in helpers)
        out[col] = [speedup_text(v, lo, hi, i) for v, lo, hi, i in zip(table[col], low, high, inter)]
        marked |= any(isinstance(t, str) and t.endswith(NOT_INTERLEAVED) for t in out[col])
        out = out.drop(columns=[h for h in helpers if h in out])
    return out, marked


def accuracy_aware_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Whether each accuracy-aware cell kept its promise on the test images: NNCF's validation accuracies (on
    images the model never saw), the layers it kept in FP32, and the test drop against `max_drop`. A drop above
    `max_drop` by less than 1.96 standard errors of the validation accuracy (sqrt(p(1-p)/n) over the validation
    images) is within the sampling error of the validation images; above that, the promise is broken."""
    aa = cells[(cells.algo == "accuracy-aware") & cells.aa_fp32_validation_accuracy.notna()].copy()
    if aa.empty:
        return pd.DataFrame()
    p = aa.aa_fp32_validation_accuracy.astype(float)
    aa["validation_se"] = np.sqrt(p * (1 - p) / aa.validation_images.astype(float))
    aa["test_drop"] = aa.fp32_accuracy.astype(float) - aa.int8_accuracy.astype(float)
    limit = aa.max_drop.astype(float)
    aa["max_drop_kept"] = np.where(aa.test_drop <= limit + 1e-9, "yes",  # a drop equal to max_drop keeps it
                                   np.where(aa.test_drop <= limit + 1.96 * aa.validation_se,
                                            "within validation sampling error", "no"))
    cols = ["model", "fuse", "source", "isa", "seed", "max_drop", "validation_source", "validation_images",
            "aa_fp32_validation_accuracy", "aa_int8_validation_accuracy", "aa_kept_fp32_count", "validation_se",
            "fp32_accuracy", "int8_accuracy", "test_drop", "max_drop_kept"]
    return aa.reindex(columns=cols).sort_values(["model", "fuse", "source", "isa", "seed"]).reset_index(drop=True)


def long_table(cells: pd.DataFrame, labels: np.ndarray | None = None, subsets: dict | None = None) -> pd.DataFrame:
    """One row per condition: mean ± std over its seeds, FP32, and the paired difference pooled over seeds. Only
    rows with an accuracy are seeds (speed-only rows are not); speed is the median of the condition's timed cells
    and the largest relative spread among them."""
    out = []
    for key, g in cells.groupby(CONDITION, dropna=False, sort=True):
        row = dict(zip(CONDITION, key))
        a = g[g.int8_accuracy.notna()]
        acc = a.int8_accuracy.astype(float)
        first = a if len(a) else g
        row |= {"seeds": int(a.seed.nunique()), "subset_size_images": first.subset_size_images.iloc[0],
                "fp32_accuracy": first.fp32_accuracy.iloc[0], "int8_accuracy": acc.mean() if len(a) else np.nan,
                "int8_accuracy_std": acc.std(ddof=1) if acc.count() > 1 else np.nan,
                "delta_to_fp32": (acc - a.fp32_accuracy.astype(float)).mean() if len(a) else np.nan}
        sub = _subset(first.test_indices_sha256.iloc[0], subsets)
        fp32 = _correct(first.fp32_predictions.iloc[0], labels, sub) if len(a) else None
        int8 = [_correct(ip, labels, _subset(sha, subsets)) for ip, sha in zip(a.int8_predictions,
                                                                              a.test_indices_sha256)]
        if fp32 is not None and int8 and all(c is not None and len(c) == len(fp32) for c in int8):
            p = paired_difference(fp32, np.stack(int8))
            row |= {"ci_low": p["ci_low"], "ci_high": p["ci_high"], "flips_to_wrong": p["flips_to_wrong"],
                    "flips_to_right": p["flips_to_right"], "mcnemar_p_max": p["mcnemar_p"], "verdict": p["verdict"]}
        else:
            row |= {"ci_low": np.nan, "ci_high": np.nan, "flips_to_wrong": np.nan, "flips_to_right": np.nan,
                    "mcnemar_p_max": np.nan, "verdict": ""}
        timed = g[g.int8_fps.notna()]
        row |= {"int8_fps": timed.int8_fps.astype(float).median() if len(timed) else np.nan,
                "int8_fps_spread": timed.int8_fps_spread.astype(float).max() if len(timed) else np.nan,
                "fp32_fps": g.fp32_fps.iloc[0], "fp32_fps_spread": g.fp32_fps_spread.iloc[0],
                "pytorch_accuracy": g.pytorch_accuracy.iloc[0], "pytorch_fps": g.pytorch_fps.iloc[0],
                "dirty": bool(g.dirty.astype(bool).any())}
        row |= condition_speedup(g.reindex(columns=SPEEDUP))
        out.append(row)
    cols = [*CONDITION, "seeds", "subset_size_images", "fp32_accuracy", "int8_accuracy", "int8_accuracy_std",
            "delta_to_fp32", "ci_low", "ci_high", "flips_to_wrong", "flips_to_right", "mcnemar_p_max", "verdict",
            "int8_fps", "int8_fps_spread", "fp32_fps", "fp32_fps_spread", *SPEEDUP, "pytorch_accuracy",
            "pytorch_fps", "dirty"]
    return pd.DataFrame(out, columns=cols)


def varying(df: pd.DataFrame, axes: list[str] = FACETS) -> list[str]:
    """The axes that take more than one value in `df` (the ones a table or plot must show); the weights count
    as varying only when one model has several."""
    def varies(a: str) -> bool:
        if a == "weights_id" and "model" in df:
            return bool(len(df)) and df.groupby("model")[a].agg(lambda v: v.astype(str).nunique()).max() > 1
        return df[a].astype(str).nunique() > 1

    return [a for a in axes if a in df and varies(a)]


def _fmt(mean: float, std: float, n: int, digits: int = 4) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 and not pd.isna(std) else "")


def _fps(median: float, spread: float) -> str:
    """Median throughput and, in parentheses, the relative spread of the repeats ((max - min) / median)."""
    if pd.isna(median):
        return "-"
    return f"{median:.0f}" + (f" ({100 * spread:.1f} %)" if not pd.isna(spread) else "")


def _wide(long: pd.DataFrame, algo: str, base: pd.DataFrame | None) -> pd.DataFrame:
    """Model (and every varying axis) × source: INT8 accuracy mean ± std over seeds (†: from a dirty tree),
    INT8 FPS with its spread; FP32 first."""
    part = long[long.algo == algo]
    keys = [k for k in BASELINE_KEY[2:] if base is not None and algo == "default" and k in varying(base, [k])]
    index = ["model", *dict.fromkeys([*varying(part), *keys])]
    t = part.assign(cell=[_fmt(m, s, n) + (DIRTY if d else "") for m, s, n, d in
                          zip(part.int8_accuracy, part.int8_accuracy_std, part.seeds, part.dirty)],
                    fps=[_fps(m, s) for m, s in zip(part.int8_fps, part.int8_fps_spread)])
    wide = t.pivot(index=index, columns="source", values="cell").add_prefix("INT8 ").add_suffix(" acc")
    if t.int8_fps.notna().any():
        fps = t.pivot(index=index, columns="source", values="fps").add_prefix("INT8 ").add_suffix(" FPS")
        wide = wide.join(fps)[[c for s in sorted(part.source.unique()) for c in (f"INT8 {s} acc", f"INT8 {s} FPS")]]
        wide = wide.drop(columns=[c for c in fps if (wide[c].fillna("-") == "-").all()])  # sources not timed
    wide = wide.fillna("-").reset_index()
    if base is not None and algo == "default":  # Table 1 also lists FP32 and models with speed only
        on = [c for c in index if c in base]
        wide = base.drop(columns=[c for c in BASELINE_KEY[2:] if c not in on]).drop_duplicates(on, keep="last") \
            .merge(wide, on=on, how="outer")
    return wide.sort_values(index).reset_index(drop=True)


def _baseline_columns(df: pd.DataFrame, engine: str) -> pd.DataFrame:
    """Per model, fusing, ISA and weights: PyTorch and FP32 accuracy and speed (with its spread)."""
    ok = df[(df.kind == "baseline") & (df.status == "ok")]
    b = ok[ok.engine == engine].drop_duplicates(BASELINE_KEY, keep="last")
    out = b[BASELINE_KEY].drop(columns="engine").reset_index(drop=True)
    torch = {(r["model"], r["isa"], r["weights_id"]): r for r in ok.to_dict("records")
             if not pd.isna(r.get("pytorch_accuracy", np.nan)) or not pd.isna(r.get("pytorch_fps", np.nan))}
    recs = b.to_dict("records")
    mine = [torch.get((r["model"], r["isa"], r["weights_id"]), {}) for r in recs]
    acc = lambda v: f"{v:.4f}" if not pd.isna(v) else "-"  # noqa: E731
    out["PyTorch acc"] = [acc(t.get("pytorch_accuracy", np.nan)) for t in mine]
    out["PyTorch FPS"] = [_fps(t.get("pytorch_fps", np.nan), t.get("pytorch_fps_spread", np.nan)) for t in mine]
    out["IR FP32 acc"] = [acc(r.get("fp32_accuracy", np.nan)) for r in recs]
    out["IR FP32 FPS"] = [_fps(r.get("fp32_fps", np.nan), r.get("fp32_fps_spread", np.nan)) for r in recs]
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
            *SPEEDUP, "ref_speedup"]
    return side.reindex(columns=cols).sort_values(["model", "algo", "source"]).reset_index(drop=True)


def machine_slug(key: str) -> str:
    """A hardware key as a file-name part: "Intel(R) Xeon(R) Platinum 8480+ | avx512_core_amx" ->
    "intel-r-xeon-r-platinum-8480-avx512_core_amx"."""
    return re.sub(r"[^a-z0-9_]+", "-", key.lower()).strip("-")


def machine_line(table: pd.DataFrame) -> str:
    """The line above a table that says which machine made it (and whether any of it came from a dirty tree)."""
    machine = table.attrs.get("machine")
    if not machine:
        return ""
    text = f"Machine: {machine} (CPU | the ISA oneDNN ran)."
    dirty = table.attrs.get("dirty_rows", 0)
    if dirty:
        text += f" {dirty} of {table.attrs.get('rows', dirty)} rows come from a dirty tree (marked †, `dirty`)."
    return text


def speed_table(df: pd.DataFrame, engine: str) -> pd.DataFrame:
    """Every distinct timed model of an engine on one machine (equal models share one timing): median, min, max
    and relative spread ((max - min) / median) of throughput and latency, and how many cells share the timing."""
    ok = df[(df.status == "ok") & (df.engine == engine)]
    rows = []
    for r in ok.to_dict("records"):
        prefix = "fp32" if r["kind"] == "baseline" else "int8"
        if pd.isna(r.get(f"{prefix}_fps", np.nan)):
            continue
        what = r.get(f"{prefix}_model_fingerprint")
        rows.append({"model": r["model"], "precision": prefix.upper(),
                     "algo": "" if prefix == "fp32" else r.get("algo"), "source": r.get("source") or "",
                     "isa": r["isa"], "weights_id": r["weights_id"], "fuse": r["fuse"],
                     "model_fingerprint": what[:12] if isinstance(what, str) else "",
                     **{f"{k}": r.get(f"{prefix}_{k}", np.nan) for k in (
                         "fps", "fps_min", "fps_max", "fps_spread", "latency_fps", "latency_fps_min",
                         "latency_fps_max", "latency_fps_spread")},
                     "repeats": r.get("speed_repeats", np.nan), "seconds_each": r.get("speed_seconds_each", np.nan),
                     "timed_by": r.get("speed_timed_by") or r.get("cell")})
    cols = ["model", "precision", "algo", "source", "isa", "weights_id", "fuse", "model_fingerprint", "fps",
            "fps_min", "fps_max", "fps_spread", "latency_fps", "latency_fps_min", "latency_fps_max",
            "latency_fps_spread", "repeats", "seconds_each", "cells"]
    if not rows:
        return pd.DataFrame(columns=cols)
    t = pd.DataFrame(rows)
    t["cells"] = t.groupby(["timed_by", "model_fingerprint", "isa"]).model.transform("size")
    t = t.drop_duplicates(["timed_by", "model_fingerprint", "isa"])  # one timing, however many cells share it
    return t[cols].sort_values(["model", "precision", "isa", "algo", "source"]).reset_index(drop=True)


def isa_side_by_side(df: pd.DataFrame, labels: np.ndarray | None = None,
                     subsets: dict | None = None) -> pd.DataFrame:
    """On one CPU, each capped ISA against native for the same condition, seed and weights: accuracy (FP32 in
    baselines, INT8 in quantize cells) with a paired interval over test images pooled over seeds, how many
    predictions changed, and the throughput ratio. Empty without capped-ISA rows."""
    df = _normalize(df)
    ok = df[df.status == "ok"].copy()
    ok["cpu_name"] = ok.hardware_key.astype(str).str.split(" | ", regex=False).str[0]
    ok["precision"] = np.where(ok.kind == "baseline", "fp32", "int8")
    if "test_indices_sha256" not in ok:
        ok["test_indices_sha256"] = None
    for col in ("fp32_predictions", "int8_predictions", "fp32_fps", "int8_fps"):
        if col not in ok:
            ok[col] = None if col.endswith("predictions") else np.nan
    ok["pred"] = np.where(ok.kind == "baseline", ok.fp32_predictions, ok.int8_predictions)
    ok["fps"] = np.where(ok.kind == "baseline", ok.fp32_fps, ok.int8_fps).astype(float)
    axes = [c for c in CONDITION if c != "isa"]
    key = ["cpu_name", "kind", *axes, "seed"]
    native = {tuple(r[k] for k in key): r for r in ok[ok.isa == "native"].to_dict("records")}
    pairs: dict[tuple, list] = {}
    for r in ok[ok.isa != "native"].to_dict("records"):
        n = native.get(tuple(r[k] for k in key))
        if n is not None:
            pairs.setdefault((r["cpu_name"], r["kind"], r["isa"], *(r[a] for a in axes)), []).append((n, r))
    out = []
    for group, members in sorted(pairs.items(), key=lambda kv: [str(v) for v in kv[0]]):
        cpu, kind, isa = group[:3]
        row = {"cpu": cpu, "precision": members[0][1]["precision"].upper(), **dict(zip(axes, group[3:])),
               "isa": isa, "seeds": len(members),
               "machine_native": members[0][0]["hardware_key"], "machine_isa": members[0][1]["hardware_key"]}
        ref = [_correct(n["pred"], labels, _subset(n["test_indices_sha256"], subsets)) for n, _ in members]
        cap = [_correct(c["pred"], labels, _subset(c["test_indices_sha256"], subsets)) for _, c in members]
        changed = [np.mean(digits(n["pred"]) != digits(c["pred"])) * len(digits(c["pred"]))
                   for n, c in members if digits(n["pred"]) is not None and digits(c["pred"]) is not None
                   and len(digits(n["pred"])) == len(digits(c["pred"]))]
        row["predictions_changed"] = float(np.mean(changed)) if changed else np.nan
        if all(x is not None for x in ref + cap) and len({len(x) for x in ref + cap}) == 1:
            p = paired_difference(np.stack(ref), np.stack(cap))  # each seed's capped run against its native run
            row |= {"accuracy_native": float(np.mean(ref)), "accuracy_isa": float(np.mean(cap)), "delta": p["delta"],
                    "ci_low": p["ci_low"], "ci_high": p["ci_high"], "flips_to_wrong": p["flips_to_wrong"],
                    "flips_to_right": p["flips_to_right"], "verdict": p["verdict"].replace("INT8", isa)}
        fps_n = np.nanmedian([n["fps"] for n, _ in members]) if any(not pd.isna(n["fps"]) for n, _ in members) \
            else np.nan
        fps_c = np.nanmedian([c["fps"] for _, c in members]) if any(not pd.isna(c["fps"]) for _, c in members) \
            else np.nan
        row |= {"fps_native": fps_n, "fps_isa": fps_c, "fps_ratio": fps_c / fps_n if fps_n else np.nan}
        out.append(row)
    cols = ["cpu", "precision", "model", "engine", "source", "algo", *[a for a in FACETS if a != "isa"], "isa",
            "seeds", "accuracy_native", "accuracy_isa", "delta", "ci_low", "ci_high", "flips_to_wrong",
            "flips_to_right", "predictions_changed", "verdict", "fps_native", "fps_isa", "fps_ratio",
            "machine_native", "machine_isa"]
    return pd.DataFrame(out).reindex(columns=cols)


def _kernels_isa(row: dict) -> str:
    """The ISA a row's kernels ran: its effective ISA, or its CPU's own for a native row."""
    isa = row.get("isa_effective") or row.get("isa")
    return str(row.get("isa_native") if not isinstance(isa, str) or isa == "native" else isa)


def _cell_name(r: dict) -> str:
    return f"{r['model']} {r['engine']} {r['source'] or 'fp32'} {r['algo']} s{r['seed']}"


def expected_equal(df: pd.DataFrame) -> pd.DataFrame:
    """Capped cells beside the same cells of another machine whose kernels ran the same ISA (an AVX2 machine and
    an AVX-512 one capped to AVX2): expected equal, never pooled. One row per pair of machines: how many cells
    both ran (same condition, seed, weights, calibration set and test images), how many gave the same per-image
    predictions, the largest accuracy difference, and the cells that differ."""
    df = _normalize(df)
    ok = df[df.status == "ok"].copy()
    if ok.empty or not ok.hardware_key.astype(str).str.contains(" capped to ").any():
        return pd.DataFrame()
    for col in ("calib_hash", "test_indices_sha256", "fp32_predictions", "int8_predictions", "fp32_accuracy",
                "int8_accuracy"):
        if col not in ok:
            ok[col] = None
    ok["kernels_isa"] = [_kernels_isa(r) for r in ok.to_dict("records")]
    ok["pred"] = np.where(ok.kind == "baseline", ok.fp32_predictions, ok.int8_predictions)
    ok["acc"] = np.where(ok.kind == "baseline", ok.fp32_accuracy, ok.int8_accuracy).astype(float)
    key = ["kind", *[c for c in CONDITION if c != "isa"], "seed", "calib_hash", "test_indices_sha256", "kernels_isa"]
    ok[key] = ok[key].astype(str)
    pairs: dict[tuple, list] = {}
    for _, group in ok.groupby(key, dropna=False):
        rows = group.drop_duplicates("hardware_key", keep="last").to_dict("records")
        for a in rows:
            for b in rows:
                if a["hardware_key"] < b["hardware_key"] and " capped to " in a["hardware_key"] + b["hardware_key"]:
                    pairs.setdefault((a["kernels_isa"], a["hardware_key"], b["hardware_key"]), []).append((a, b))
    out = []
    for (isa, machine_a, machine_b), members in sorted(pairs.items()):
        same = [a["pred"] == b["pred"] for a, b in members]
        differ = [a for (a, _), s in zip(members, same) if not s]
        out.append({"kernels_isa": isa, "machine_a": machine_a, "machine_b": machine_b, "cells": len(members),
                    "same_predictions": int(sum(same)), "different": len(differ),
                    "max_abs_accuracy_difference": max(abs(a["acc"] - b["acc"]) for a, b in members),
                    "cells_that_differ": "; ".join(_cell_name(r) for r in differ)})
    return pd.DataFrame(out)


STEPS = ["set", "export", "quantize", "test_images", "evaluate", "kernels", "probe", "pytorch", "diagnose", "time"]


def _cell_kind(row: dict) -> str:
    if row["kind"] == "baseline":
        return "FP32 baseline"
    capped = "" if row.get("isa") in (None, "native") else f", capped at {row['isa']}"
    return f"{row['algo']}, {row['engine']}{capped}"


def time_table(df: pd.DataFrame) -> pd.DataFrame:
    """Where a run's cell time went: per kind of cell, the count, the sum of the cells' seconds and its share,
    and the seconds of each step inside the cells (`step_seconds`; `time` is the speed measurement). Cells of
    every machine in the rows, newest row per cell."""
    ok = df[df.status == "ok"]
    if ok.empty or "wall_seconds" not in ok:
        return pd.DataFrame()
    rows = []
    for r in ok.to_dict("records"):
        steps = r.get("step_seconds") if isinstance(r.get("step_seconds"), dict) else {}
        speed = r.get("speed_seconds")
        rows.append({"cells": _cell_kind(r), "seconds": float(r.get("wall_seconds") or 0.0),
                     **{k: float(steps.get(k, 0.0)) for k in STEPS if k != "time"},
                     "time": float(speed) if isinstance(speed, int | float) and not pd.isna(speed) else 0.0})
    t = pd.DataFrame(rows).groupby("cells").agg(count=("seconds", "size"), seconds=("seconds", "sum"),
                                                 **{k: (k, "sum") for k in STEPS})
    t.insert(2, "share", t.seconds / t.seconds.sum())
    t = t.sort_values("seconds", ascending=False).reset_index()
    total = {"cells": "all", "count": int(t["count"].sum()), "seconds": t.seconds.sum(), "share": 1.0,
             **{k: t[k].sum() for k in STEPS}}
    return pd.concat([t, pd.DataFrame([total])], ignore_index=True)


def _machine_tables(df: pd.DataFrame, labels: np.ndarray | None, subsets: dict | None) -> dict[str, pd.DataFrame]:
    """The tables of one machine's rows (see `tables`)."""
    cells = cell_table(df, labels, subsets)
    out: dict[str, pd.DataFrame] = {}
    longs = []
    for engine in sorted(df.engine.dropna().unique()):
        c = cells[cells.engine == engine]
        long = long_table(c, labels, subsets)
        longs.append(long)
        out[f"table1_{engine}"] = _wide(long, "default", _baseline_columns(df, engine))
        if (long.algo == "accuracy-aware").any():
            out[f"table2_{engine}"] = _wide(long, "accuracy-aware", None)
            promise = accuracy_aware_table(c)
            if not promise.empty:
                out[f"accuracy_aware_{engine}"] = promise
        out[f"long_{engine}"] = long
        out[f"cells_{engine}"] = c.drop(columns=["fp32_predictions", "int8_predictions", "hardware_key",
                                                 "test_indices_sha256", *AA_FIELDS]).reset_index(drop=True)
        speed = speed_table(df, engine)
        if not speed.empty:
            out[f"speed_{engine}"] = speed
    both = pd.concat(longs) if longs else pd.DataFrame(columns=[*CONDITION, "int8_accuracy"])
    if both.engine.nunique() > 1:  # the engines side by side, condition by condition
        index = [k for k in CONDITION if k != "engine"]
        side = both.pivot(index=index, columns="engine", values=["int8_accuracy", "delta_to_fp32", *SPEEDUP])
        side.columns = [f"{v} {e}" for v, e in side.columns]
        side = side.reset_index()
        side["max_drop"] = side.max_drop.where(side.algo == "accuracy-aware")  # an accuracy-aware option only
        out["engines_side_by_side"] = side[["model", "source", "algo", *varying(side)]
                                           + [c for c in side.columns if " " in c]]
    if (both.engine == "openvino").any():
        out["reference_side_by_side"] = reference_side_by_side(both)
    return out


def tables(df: pd.DataFrame, labels: np.ndarray | None = None) -> dict[str, pd.DataFrame]:
    """Named tables, per machine (`hardware_key`): per engine `table1_` (default INT8), `table2_`
    (accuracy-aware), `long_` (per condition), `cells_` (per seed), `speed_` (each distinct timed model);
    `engines_side_by_side`, `reference_side_by_side`. With several machines in the rows, each of these names
    ends in `__<machine_slug>`. Across machines: `isa_side_by_side` (capped ISAs against native on one CPU,
    where the run has them), `expected_equal` (a machine capped to the ISA of another, where the rows have both)
    and `not_ok`. Each table's `attrs["machine"]` names its machine, and `attrs["code_versions"]` says when the
    rows come from more than one version of calib's code (`code_versions`)."""
    labels = labels if labels is not None else df.attrs.get("test_labels")
    subsets = df.attrs.get("test_subsets")
    df = _normalize(df)
    machines = sorted(df.hardware_key.astype(str).unique())
    out: dict[str, pd.DataFrame] = {}
    for machine in machines:
        part = df[df.hardware_key.astype(str) == machine]
        rows = part[part.status == "ok"]
        for name, table in _machine_tables(part, labels, subsets).items():
            table.attrs = {"machine": machine, "rows": len(rows), "dirty_rows": int(rows.dirty.astype(bool).sum())}
            out[name if len(machines) == 1 else f"{name}__{machine_slug(machine)}"] = table
    isa = isa_side_by_side(df, labels, subsets)
    if not isa.empty:
        out["isa_side_by_side"] = isa
    equal = expected_equal(df)
    if not equal.empty:
        out["expected_equal"] = equal
    spent = time_table(df)
    if not spent.empty:
        out["time"] = spent
    cols = ["kind", "model", "source", "algo", "engine", "isa", "status", "reason", "hardware_key"]
    out["not_ok"] = df[df.status != "ok"].reindex(columns=cols).drop_duplicates(
        subset=["status", "reason", "model", "source", "hardware_key"])
    versions = code_versions(df)
    if versions:  # never pooled silently: every table says so above it
        for table in out.values():
            table.attrs["code_versions"] = versions
    return out


def code_versions(df: pd.DataFrame) -> str | None:
    """One line when the rows come from more than one version of calib's code (`code_fingerprint`; a row without
    one counts as "none recorded"), with the rows of each; None when they all come from one."""
    values = df["code_fingerprint"] if "code_fingerprint" in df else pd.Series(None, index=df.index, dtype=object)
    names = [str(v)[:8] if isinstance(v, str) and v else "none recorded" for v in values]
    counts = pd.Series(names, dtype=object).value_counts(sort=False)
    if len(counts) < 2:
        return None
    counts = counts.sort_values(ascending=False, kind="stable")
    each = ", ".join(f"{name} ({n} row{'s' if n != 1 else ''})" for name, n in counts.items())
    return f"These rows come from {len(counts)} versions of calib's code: {each}."


def markdown_table(table: pd.DataFrame) -> str:
    """Accuracies with 4 decimals, speeds as whole numbers, spreads and speed-ups with 2-3, p-values with 3
    significant; the machine line above."""
    def fmt(col: str) -> str:
        if col.endswith("_spread"):
            return ".3f"
        if "speedup" in col or "ratio" in col:  # before "fps": fps_ratio is a ratio
            return ".2f"
        if col == "seconds" or col in STEPS:  # before "_images": test_images is a step here
            return ".1f"
        if "fps" in col.lower() or col.endswith("_images") or col in (
                "seeds", "per_class", "subset_size", "repeats", "cells", "same_predictions", "different"):
            return ".0f"
        if col in ("max_drop", "seconds_each", "share"):
            return ".2f"
        if col == "count":
            return ".0f"
        if col.startswith("mcnemar") or col.startswith("flips") or col == "predictions_changed":
            return ".3g"
        return ".4f"

    view, not_interleaved = speedup_view(table)
    shown = view.astype(object).where(view.notna(), None)  # tabulate writes missingval for None, not NaN
    shown = shown.map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v)  # a hardware key has one
    text = shown.to_markdown(index=False, floatfmt=tuple(fmt(c) for c in view.columns), missingval="-") + "\n"
    if not_interleaved:
        text += f"\n{NOT_INTERLEAVED_NOTE}\n"
    lines = [x for x in (table.attrs.get("code_versions"), machine_line(table)) if x]
    return "\n\n".join([*lines, text]) if lines else text


def write_report(run: Path, out: Path | None = None) -> list[Path]:
    out = out or run / "report"
    written = []
    for name, table in tables(load_rows(run)).items():
        for suffix, text in ((".csv", table.to_csv(index=False)), (".md", markdown_table(table))):
            path = out / f"{name}{suffix}"
            atomic_write_bytes(path, text.encode())
            written.append(path)
    return written
