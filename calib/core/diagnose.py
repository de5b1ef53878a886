"""Which layers a calibration set gets wrong, and how: one row per quantized activation of the INT8 model.

NNCF writes every activation quantizer into the IR as a FakeQuantize node whose input_low/input_high are the
range the calibration set produced. For each one we read that range with OpenVINO's model API, find the tensor
it quantizes (its producer, which keeps its friendly name in the FP32 IR), add that tensor as an extra output
of both models, and stream reference images (the validation split by default, never test) through them:

- clipped_fraction: share of the FP32 model's real activation values outside [low, high];
- range_used: share of [low, high] that the real values span (small = resolution wasted on an empty range);
- local_sqnr_db: the error this quantizer alone adds in the INT8 model (its output against its input);
- sqnr_db, cosine: the INT8 model's tensor after this quantizer against the FP32 tensor (errors accumulated
  up to this point);
- optionally, the validation accuracy with only this quantizer removed (that activation kept in FP32).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calib.core.contract import InputContract
from calib.core.data import LabeledImages, require_role, to_model_input
from calib.core.errors import CalibError, OptionError
from calib.core.figures import save_figure
from calib.core.runs import to_jsonable
from calib.core.spec import QuantizeSpec

if TYPE_CHECKING:
    from calib.core.own import Tree

REFERENCE_ROLES = ("validation", "calibration_pool", "train", "synthetic", "imported")
METRICS = ("clipped_fraction", "range_used", "local_sqnr_db", "sqnr_db", "cosine")


class RankBy(str, Enum):
    """What "worst" means in the ranked table (ascending SQNR/cosine/range use, descending clipping)."""

    local_sqnr = "local-sqnr"
    sqnr = "sqnr"
    clipped = "clipped"
    cosine = "cosine"


_RANK_COLUMN = {RankBy.local_sqnr: ("local_sqnr_db", True), RankBy.sqnr: ("sqnr_db", True),
                RankBy.clipped: ("clipped_fraction", False), RankBy.cosine: ("cosine", True)}


@dataclass(frozen=True)
class Quantizer:
    """An activation FakeQuantize of the INT8 IR and the FP32 tensor it quantizes."""

    index: int  # position in network (topological) order
    fq_name: str
    layer: str  # friendly name of the producer node, shared by both IRs
    op_type: str
    low: np.ndarray
    high: np.ndarray
    levels: int
    after: str = ""  # for a node named without a scope: the nearest scoped node upstream (`readable`)

    @property
    def short(self) -> str:
        """The producer's name as `readable` shortens it, with the node it follows where it has no scope."""
        return readable(self.layer) + (f" after {self.after}" if self.after else "")


def readable(name: str) -> str:
    """A node's friendly name short enough for a table, its scope kept: OpenVINO's PyTorch frontend
    `__module.layer1.0.relu/aten::relu_/Relu_1` -> `layer1.0.relu/Relu_1`; torch.onnx's scope path
    `/features/features.0/act/HardSwish` -> `features.0/act/HardSwish` (a scope that the next one repeats as its
    prefix dropped); a name without a scope (`/Mul`) -> `Mul`."""
    if name.startswith("/"):
        parts = [p for p in name.split("/") if p] or [name]
        return "/".join([p for p, nxt in zip(parts, parts[1:]) if not nxt.startswith(p + ".")] + parts[-1:])
    parts = name.split("/")
    module = parts[0].removeprefix("__module.")
    return module if len(parts) == 1 else f"{module}/{parts[-1]}"


def _unscoped(name: str) -> bool:
    """A torch.onnx node name at the graph's top level (`/Mul`): it says the op, not where it is."""
    return name.startswith("/") and name.count("/") == 1


def _scoped_upstream(node, hops: int = 32) -> str:
    """The `readable` name of the nearest node upstream (along first inputs, past quantizers) whose name has a
    scope; "" where none is found within `hops`."""
    for _ in range(hops):
        if node.get_input_size() == 0:
            return ""
        node = node.input_value(0).get_node()
        name = node.get_friendly_name()
        if node.get_type_name() == "Parameter":
            return f"input {name}"
        if node.get_type_name() not in ("FakeQuantize", "Convert", "Constant") and not _unscoped(name):
            return readable(name)
    return ""


def activation_quantizers(int8_model) -> list[Quantizer]:
    """Every FakeQuantize whose data input is computed (not a weight constant), in network order."""
    found = []
    for op in int8_model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        producer = op.input_value(0).get_node()
        if producer.get_type_name() == "Constant":
            continue  # a weight quantizer: its range comes from the weights, not from the calibration set
        bounds = []
        for port in (1, 2):
            node = op.input_value(port).get_node()
            if node.get_type_name() != "Constant":
                raise CalibError(f"{op.get_friendly_name()}: range input {port} is not a constant")
            bounds.append(np.asarray(node.get_data(), np.float64))
        name = producer.get_friendly_name()
        found.append(Quantizer(len(found), op.get_friendly_name(), name, producer.get_type_name(), bounds[0],
                               bounds[1], int(op.get_attributes()["levels"]),
                               _scoped_upstream(producer) if _unscoped(name) else ""))
    return found


@dataclass
class _Stats:
    """Streaming sums over the reference images for one quantizer (float64)."""

    n: int = 0
    below: int = 0
    above: int = 0
    vmin: np.ndarray | float = math.inf
    vmax: np.ndarray | float = -math.inf
    signal: float = 0.0  # sum fp32^2
    noise: float = 0.0  # sum (int8 - fp32)^2
    local_signal: float = 0.0  # sum fq_in^2
    local_noise: float = 0.0  # sum (fq_out - fq_in)^2
    cosine_sum: float = 0.0
    images: int = 0
    zero_out: int = 0  # images whose INT8 tensor is all zero where the FP32 one is not
    local_zero_out: int = 0  # images where this quantizer's output is all zero and its input is not
    reduce_axes: tuple[int, ...] = field(default=())

    def update(self, q: Quantizer, fp: np.ndarray, fq_in: np.ndarray, fq_out: np.ndarray) -> None:
        low, high = _broadcastable(q.low, fp.ndim), _broadcastable(q.high, fp.ndim)
        self.n += fp.size
        self.below += int((fp < low).sum())
        self.above += int((fp > high).sum())
        axes = tuple(i for i in range(fp.ndim) if np.broadcast_shapes(low.shape, high.shape)[i] == 1)
        self.vmin = np.minimum(self.vmin, fp.min(axis=axes, keepdims=True))
        self.vmax = np.maximum(self.vmax, fp.max(axis=axes, keepdims=True))
        a, b, c = (t.reshape(len(t), -1) for t in (fp, fq_in, fq_out))
        sq = lambda t: np.einsum("ij,ij->i", t, t, dtype=np.float64)  # noqa: E731 - per-image sums of squares
        fp_sq, in_sq, out_sq = sq(a), sq(b), sq(c)
        self.signal += float(fp_sq.sum())
        self.noise += float(sq(c - a).sum())
        self.local_signal += float(in_sq.sum())
        self.local_noise += float(sq(c - b).sum())
        self.zero_out += int(((out_sq == 0) & (fp_sq > 0)).sum())
        self.local_zero_out += int(((out_sq == 0) & (in_sq > 0)).sum())
        denom = np.sqrt(fp_sq * out_sq)
        dot = np.einsum("ij,ij->i", a, c, dtype=np.float64)
        # two zero tensors agree (1); a zero tensor against another shares no direction with it (0, as sklearn)
        self.cosine_sum += float(np.where(denom > 0, dot / np.where(denom > 0, denom, 1),
                                          np.where((fp_sq == 0) & (out_sq == 0), 1.0, 0.0)).sum())
        self.images += len(fp)

    def row(self, q: Quantizer) -> dict:
        low, high = _broadcastable(q.low, np.ndim(self.vmin)), _broadcastable(q.high, np.ndim(self.vmin))
        width = np.maximum(high - low, 1e-30)
        used = np.clip((np.minimum(high, self.vmax) - np.maximum(low, self.vmin)) / width, 0.0, 1.0)
        return {"clipped_fraction": (self.below + self.above) / self.n, "clipped_below": self.below / self.n,
                "clipped_above": self.above / self.n, "ref_min": float(np.min(self.vmin)),
                "ref_max": float(np.max(self.vmax)), "range_used": float(np.mean(used)),
                "sqnr_db": _db(self.signal, self.noise, self.n),
                "local_sqnr_db": _db(self.local_signal, self.local_noise, self.n),
                "cosine": self.cosine_sum / self.images,
                "sqnr_note": _db_note(self.signal, self.noise, self.n, self.zero_out, self.images),
                "local_sqnr_note": _db_note(self.local_signal, self.local_noise, self.n, self.local_zero_out,
                                            self.images)}


def _broadcastable(bound: np.ndarray, ndim: int) -> np.ndarray:
    """FakeQuantize bounds are scalars or shaped like [1, C, 1, 1]; left-pad to the tensor's rank."""
    return bound.reshape((1,) * (ndim - bound.ndim) + bound.shape) if bound.ndim < ndim else bound


# below float32's smallest normal number, an activation's RMS is no signal to measure an error against
NO_SIGNAL_RMS = float(np.finfo(np.float32).tiny)


def _db(signal: float, noise: float, n: int) -> float | None:
    """10 log10(signal / noise) over `n` values; None where there is no meaningful finite ratio (no error, or no
    signal: `_db_note`)."""
    if noise <= 0 or n == 0 or math.sqrt(signal / n) < NO_SIGNAL_RMS:
        return None
    return 10 * math.log10(signal / noise)


def _db_note(signal: float, noise: float, n: int, zero_images: int, images: int) -> str | None:
    """Why an SQNR reads as it does, where its number alone would mislead: "no signal" (the reference tensor's
    RMS is below float32's smallest normal number: the ratio means nothing), "exact" (no error: no finite
    ratio), "INT8 all zero" (every image's quantized tensor is zero, so the error equals the signal: 0 dB for
    any scale, however small); None otherwise."""
    if n == 0 or math.sqrt(signal / n) < NO_SIGNAL_RMS:
        return "no signal"
    if noise <= 0:
        return "exact"
    if images and zero_images == images:
        return "INT8 all zero"
    return None


def _with_outputs(model, names: list[str]):
    """Add the named nodes' first outputs to `model`; return the positions of the new outputs."""
    by_name = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise CalibError(f"the FP32 model has no node named {missing[0]!r} ({len(missing)} unmatched); "
                         "diagnose needs the FP32 IR the INT8 model was quantized from")
    first = len(model.outputs)
    model.add_outputs([by_name[n].output(0) for n in names])
    return list(range(first, first + len(names)))


def _compile_pair(fp32, int8, batch: int):
    """Both models compiled at `batch` images per request; where a graph fixes its batch (a traced channel
    shuffle reshapes to [1, ...]), both run at the IR's own static batch instead."""
    from calib.core.engines.openvino import compile_model

    try:
        return (compile_model(fp32.clone(), "f32", "LATENCY", batch),
                compile_model(int8.clone(), "f32", "LATENCY", batch)), batch
    except (RuntimeError, CalibError):
        own = int8.input(0).get_partial_shape()[0]
        if not own.is_static:
            raise
        return (compile_model(fp32, "f32", "LATENCY"), compile_model(int8, "f32", "LATENCY")), own.get_length()


def reference_images(reference: str | Path | None, data_dir: Path | None = None) -> LabeledImages:
    """`validation` (default) or a calibration-set folder; the test split is refused."""
    from calib.core.data import resolve_data_dir, train_splits

    if reference is None or str(reference) == "validation":
        return train_splits(data_dir)["validation"]
    if str(reference) == "test":
        raise CalibError("diagnose never looks at the test split; use --reference validation or a set folder")
    from calib.core.sets import read_set

    cset = read_set(Path(reference), allow_unbalanced=True)
    root = resolve_data_dir(data_dir)
    role = cset.role
    if root is not None and cset.path.resolve().is_relative_to((root / "test").resolve()):
        role = "test"
    data = LabeledImages(cset.images, cset.labels, role, str(cset.path))
    require_role(data, REFERENCE_ROLES, "diagnose reference images")
    return data


def _inputs(images: np.ndarray, contract: InputContract | None) -> np.ndarray:
    """Model inputs by the model's contract; the zoo's (`calib.core.data.to_model_input`) without one."""
    from calib.core.contract import to_model_input as by_contract

    return to_model_input(images) if contract is None else by_contract(images, contract)


def measure_quantizers(fp32_model, int8_model, reference: LabeledImages, batch: int = 16,
                       quiet: bool = True, contract: InputContract | None = None) -> list[dict]:
    """Rows for every activation quantizer of `int8_model` (both `ov.Model` or `.xml`), on `reference` (made
    model inputs by `contract`, default the zoo's)."""
    from calib.core.engines.openvino import read_model
    from calib.core.progress import progress

    require_role(reference, REFERENCE_ROLES, "diagnose reference images")
    fp32, int8 = read_model(fp32_model).clone(), read_model(int8_model).clone()
    quantizers = activation_quantizers(int8)
    if not quantizers:
        raise CalibError("the INT8 model has no activation FakeQuantize nodes (is it quantized by NNCF?)")
    fp_out = _with_outputs(fp32, [q.layer for q in quantizers])
    in_out = _with_outputs(int8, [q.layer for q in quantizers])
    fq_out = _with_outputs(int8, [q.fq_name for q in quantizers])
    (fp_c, q_c), batch = _compile_pair(fp32, int8, batch)
    stats = [_Stats() for _ in quantizers]
    x = _inputs(reference.images, contract)
    with progress(f"diagnose: {len(quantizers)} quantizers", len(x), quiet) as advance:
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
            a, b = fp_c(chunk), q_c(chunk)
            fa, fb = list(a.values()), list(b.values())
            for i, q in enumerate(quantizers):
                stats[i].update(q, fa[fp_out[i]][:n], fb[in_out[i]][:n], fb[fq_out[i]][:n])
            advance(n)
    rows = []
    for q, s in zip(quantizers, stats):
        per_channel = q.low.size > 1 or q.high.size > 1
        rows.append({"index": q.index, "layer": q.short, "node": q.layer, "op_type": q.op_type, "fq": q.fq_name,
                     "levels": q.levels, "per_channel": per_channel, "low": float(q.low.min()),
                     "high": float(q.high.max()), **s.row(q), "reference": reference.role,
                     "reference_source": reference.source, "reference_images": len(reference)})
    return rows


def rank(rows: list[dict], by: RankBy = RankBy.local_sqnr) -> list[dict]:
    """Rows worst first (a missing SQNR, i.e. no error at all, counts as best); adds `rank` (1 = worst)."""
    col, ascending = _RANK_COLUMN[RankBy(by)]

    def key(r: dict) -> float:
        v = r.get(col)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return math.inf
        return v if ascending else -v

    ranked = sorted(rows, key=key)
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return ranked


def layer_accuracy(fp32_model, int8_model, fq_names: Iterable[str], validation: LabeledImages,
                   quiet: bool = True, contract: InputContract | None = None) -> dict:
    """Validation accuracy of FP32, INT8, and INT8 with each named quantizer removed (that input kept FP32).

    Removing one FakeQuantize (its consumers read its input) is the cheap way: no re-quantization.
    """
    from calib.core.engines.openvino import predict_ov, read_model
    from calib.core.progress import progress

    require_role(validation, ("validation",), "per-layer accuracy")
    fp32, int8 = read_model(fp32_model), read_model(int8_model)
    names = list(fq_names)

    x = _inputs(validation.images, contract)

    def acc(model) -> float:
        try:
            preds, _, _ = predict_ov(model.clone(), x)
        except (RuntimeError, CalibError):  # the graph fixes its batch (see `_compile_pair`)
            preds, _, _ = predict_ov(model, x, batch=model.input(0).get_partial_shape()[0].get_length())
        return float((preds == validation.labels).mean())

    out: dict = {}
    with progress("per-layer accuracy", len(names) + 2, quiet) as advance:
        out["fp32"] = acc(fp32)
        advance()
        out["int8"] = acc(int8)
        advance()
        for name in names:
            m = int8.clone()
            op = next((o for o in m.get_ordered_ops() if o.get_friendly_name() == name), None)
            if op is None:
                raise CalibError(f"the INT8 model has no FakeQuantize named {name!r}")
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(op.input_value(0))
            out[name] = acc(m)
            advance()
    return out


def diagnose(spec: QuantizeSpec, out: Path, reference: str | Path | LabeledImages | None = None,
             per_layer_accuracy: int = 0, rank_by: RankBy = RankBy.local_sqnr, quiet: bool = True) -> list[dict]:
    """Quantize `spec.model` with `spec.calib` (the project's quantize path, OpenVINO engine) into `out`,
    then measure every activation quantizer; returns the rows ranked worst first. `per_layer_accuracy=k` adds
    the validation accuracy with each of the worst k quantizers removed.
    """
    from calib.core.data import train_splits
    from calib.core.pipeline import quantize_with
    from calib.core.progress import others_quiet
    from calib.core.sets import read_set

    if spec.engine != "openvino":
        raise CalibError("diagnose reads NNCF's FakeQuantize nodes from the OpenVINO IR: use --engine openvino")
    cset = read_set(Path(spec.calib))
    ref = reference if isinstance(reference, LabeledImages) else reference_images(reference, spec.data_dir)
    with others_quiet(quiet):
        q = quantize_with(spec, cset, out)
    rows = measure_quantizers(q["fp32_path"], q["int8_path"], ref, quiet=quiet)
    info = {"model": q.get("model", spec.model), "weights": q.get("weights", ""), "source": cset.manifest["source"],
            "set": cset.path.name, "set_path": str(cset.path), "calib_hash": cset.content_hash,
            "subset_size_images": q["subset_size_images"], "algo": spec.algo, "seed": spec.seed}
    rows = [{**info, **r} for r in rank(rows, rank_by)]
    if per_layer_accuracy:
        add_layer_accuracy(rows, q, per_layer_accuracy, train_splits(spec.data_dir)["validation"], quiet)
    return rows


def add_layer_accuracy(rows: list[dict], q: dict, k: int, validation: LabeledImages, quiet: bool = True,
                       contract: InputContract | None = None) -> None:
    """Add to ranked `rows` the validation accuracy of FP32, INT8, and INT8 with each of the worst `k`
    quantizers removed (`layer_accuracy`); `q` holds the quantize result's `fp32_path` and `int8_path`."""
    acc = layer_accuracy(q["fp32_path"], q["int8_path"], [r["fq"] for r in rows[:k]], validation, quiet, contract)
    for r in rows:
        r["val_accuracy_fp32"], r["val_accuracy_int8"] = acc["fp32"], acc["int8"]
        if r["fq"] in acc:
            r["val_accuracy_layer_fp32"] = acc[r["fq"]]
            r["val_accuracy_recovered"] = acc[r["fq"]] - acc["int8"]


# ---------------------------------------------------------------- tables and plots
def ranked_table(rows: list[dict], top: int | None = None):
    """A pandas table of one set's rows, worst first: each layer's name and OpenVINO op type, percentages rounded
    for reading, SQNR as `db_text` writes it, ranges to four significant digits."""
    import pandas as pd

    df = pd.DataFrame(rows).sort_values("rank")
    if top:
        df = df.head(top)
    df["per_channel"] = df["per_channel"].map({True: "per channel", False: ""})
    cols = {"rank": "rank", "index": "#", "layer": "layer", "op_type": "op", "per_channel": "range", "low": "low",
            "high": "high",
            "ref_min": "ref min", "ref_max": "ref max", "clipped_fraction": "clipped %", "range_used": "range used %",
            "local_sqnr_db": "local SQNR dB", "sqnr_db": "SQNR dB", "cosine": "cosine",
            "val_accuracy_layer_fp32": "val acc, layer FP32"}
    for col, note in (("local_sqnr_db", "local_sqnr_note"), ("sqnr_db", "sqnr_note")):
        notes = df[note] if note in df else pd.Series(None, index=df.index, dtype=object)
        df[col] = [db_text(v, n) for v, n in zip(df[col], notes)]
    df = df[[c for c in cols if c in df]].rename(columns=cols)
    for c in ("clipped %", "range used %"):
        df[c] = df[c] * 100
    for c in ("low", "high", "ref min", "ref max"):  # four significant digits: a 1e-5 range never reads 0.0
        df[c] = df[c].map(lambda v: float(f"{v:.4g}"))
    return df.round({"clipped %": 3, "range used %": 1, "cosine": 4, "val acc, layer FP32": 4})


def db_text(value: float | None, note: str | None = None) -> str:
    """An SQNR for reading: one decimal from 10 dB, two below (a small SQNR never rounds to a bare 0.0), and
    the reason where the number alone would mislead (`_db_note`): "n/a (no signal)", "exact", "0.00 (INT8 all
    zero)"; "-" for a row without one."""
    note = note if isinstance(note, str) else None  # a missing note reads NaN in a DataFrame
    if note == "no signal":
        return "n/a (no signal)"
    if note == "exact":
        return "exact"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{text} ({note})" if note else text


def _labels(df):
    """Legend/column label per set: the source name, or the set folder when two sets share a source."""
    per_source = df.groupby("source")["set"].nunique()
    return [s if per_source[s] == 1 else f"{s} ({n})" for s, n in zip(df["source"], df["set"])]


def plot_layers(df, path: Path, title: str = "") -> Path:
    """Layers in network order (x) against each metric (one panel each), one line per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = df.assign(set_label=_labels(df), **{"clipped %": df.clipped_fraction * 100,
                                              "range used %": df.range_used * 100})
    panels = [("clipped %", "clipped %"), ("range used %", "range used %"),
              ("local_sqnr_db", "local SQNR (dB)"), ("sqnr_db", "SQNR vs FP32 (dB)")]
    order = df.drop_duplicates("index").sort_values("index")
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 0.28 * len(order) + 3), 2.3 * len(panels)),
                             sharex=True)
    for ax, (col, label) in zip(axes, panels):
        sns.lineplot(data=df, x="index", y=col, hue="set_label", marker="o", ax=ax, legend=ax is axes[0])
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xticks(order["index"], order["layer"], rotation=90, fontsize=7)
    axes[-1].set_xlabel("quantized activation (network order)")
    if axes[0].get_legend():
        axes[0].legend(title="calibration set", fontsize=8)
    axes[0].set_title(title or f"{df.model.iloc[0]}: per-layer diagnosis on {df.reference.iloc[0]} images "
                      f"({df.reference_images.iloc[0]})\nclipped: real values outside the set's range; range used: "
                      "their span in it; local SQNR: this quantizer alone; SQNR: INT8 vs FP32 here", fontsize=9)
    return save_figure(fig, path)


def plot_heatmaps(df, out: Path, metric: str = "clipped_fraction") -> list[Path]:
    """One heatmap per model: quantized layers (rows, network order) x calibration sources, one metric.

    `df` holds diagnose rows (columns model, source, index, layer and the metric; weights when present); several
    rows of one (model, weights, source, layer), e.g. seeds, are averaged. A model diagnosed with several weight
    files gets one heatmap per file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    if metric not in df:
        raise CalibError(f"diagnose rows have no column {metric!r} (known: {', '.join(METRICS)})")
    written = []
    scale, unit = (100, "%") if metric in ("clipped_fraction", "range_used") else (1, "")
    weights = df["weights"].fillna("").astype(str) if "weights" in df else pd.Series("", index=df.index)
    several = weights.groupby(df["model"]).transform("nunique") > 1
    keys = df["model"].where(~several, df["model"] + "-" + weights.map(lambda w: Path(w).stem if w else "none"))
    for model, part in df.groupby(keys):
        pivot = part.groupby(["index", "layer", "source"])[metric].mean().unstack("source") * scale
        pivot.index = [f"{i:>3} {name}" for i, name in pivot.index]
        fig, ax = plt.subplots(figsize=(2.5 + 1.1 * pivot.shape[1], 1.2 + 0.24 * pivot.shape[0]))
        sns.heatmap(pivot, annot=pivot.shape[0] <= 60, fmt=".2f" if scale == 100 else ".1f", cmap="magma_r"
                    if metric == "clipped_fraction" else "viridis", ax=ax, annot_kws={"fontsize": 7},
                    cbar_kws={"label": f"{metric} {unit}".strip()})
        ax.set_ylabel("quantized activation (network order)")
        ax.set_xlabel("calibration source")
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"{model}: {metric}")
        written.append(save_figure(fig, out / f"diagnose_{metric}_{model}.png"))
    return written


def compare_table(df):
    """Layers in network order, one column block per set: clipped %, range used % and local SQNR."""
    df = df.assign(label=_labels(df))
    wide = df.pivot_table(index=["index", "layer"], columns="label",
                          values=["clipped_fraction", "range_used", "local_sqnr_db"], aggfunc="first")
    out = wide.reset_index()
    out.columns = ["#", "layer", *(f"{_SHORT[m]} {label}" for m, label in wide.columns)]
    for c in out.columns:
        if c.startswith(("clipped", "used")):
            out[c] = (out[c] * 100).round(3 if c.startswith("clipped") else 1)
        elif c.startswith("local"):
            out[c] = out[c].round(1)
    return out


_SHORT = {"clipped_fraction": "clipped %", "range_used": "used %", "local_sqnr_db": "local SQNR dB"}


def run_diagnose(model: str, calibs: list[Path], out: Path | None = None, reference: str | Path | None = None,
                 per_layer_accuracy: int = 0, rank_by: RankBy = RankBy.local_sqnr, quiet: bool = True,
                 record_path: Path = Path("runs/records.jsonl"), overwrite: bool = False, **request) -> dict:
    """`calib diagnose`: every set in `calibs` quantized and measured; rows, tables and a plot written to `out`.

    `request` holds further `QuantizeRequest` fields (weights, data_dir, subset_size, preset, seed, engine...).
    Writes `rows.jsonl`, `ranked-<set>.md` per set, `compare.md` (several sets) and `layers.png`. `out` defaults to
    `runs/diagnose/<model>-<digest of the sets and every option>`; an existing folder is refused unless
    `overwrite` (then only what calib wrote there is replaced), and a failed run leaves none
    (`calib.core.folders.run_folder`).
    """
    from calib.core.folders import claim, name_digest, run_folder
    from calib.core.sets import read_set

    if out is not None:
        claim(out, overwrite)
    if not calibs:
        raise CalibError("diagnose needs at least one --calib set")
    if request.get("engine", "openvino") != "openvino":
        raise CalibError("diagnose reads NNCF's FakeQuantize nodes from the OpenVINO IR: use --engine openvino")
    sets = [read_set(Path(c)) for c in calibs]
    ref = reference_images(reference, request.get("data_dir"))
    names: list[str] = []
    for s in sets:
        names.append(s.path.name if s.path.name not in names else f"{s.path.name}-{len(names)}")
    if out is None:
        options = {"model": model, "sets": [s.content_hash for s in sets], "reference": str(reference or "validation"),
                   "per_layer_accuracy": per_layer_accuracy, "rank_by": RankBy(rank_by), **request}
        out = Path("runs/diagnose") / f"{Path(model).stem}-{name_digest(options)}"
    with run_folder(out, overwrite):
        return _diagnose_into(out, model, sets, names, ref, reference, per_layer_accuracy, rank_by, quiet,
                              record_path, request)


def _diagnose_into(out: Path, model: str, sets: list, names: list[str], ref: LabeledImages,
                   reference: str | Path | None, per_layer_accuracy: int, rank_by: RankBy, quiet: bool,
                   record_path: Path, request: dict) -> dict:
    from calib.core.runs import record, start_run
    from calib.core.spec import QuantizeSpec

    start_run(out, {"model": model, "calibs": [s.path for s in sets], "reference": reference or "validation",
                    "per_layer_accuracy": per_layer_accuracy, "rank_by": RankBy(rank_by), **request},
              seeds={"quantize": request.get("seed", 0)},
              inputs={f"calib_{n}": s.content_hash for n, s in zip(names, sets)})
    rows: list[dict] = []
    for name, cset in zip(names, sets):
        spec = QuantizeSpec(model=model, calib=cset.path, **request)
        rows += [{**r, "set": name} for r in diagnose(spec, out / name, ref, per_layer_accuracy, rank_by, quiet)]
    written, summary = write_diagnosis(out, rows, names, ref)
    summary |= {"model": model, "sets": [str(s.path) for s in sets], "sources": [s.manifest["source"] for s in sets]}
    record(record_path, "diagnose", summary, seeds={"quantize": request.get("seed", 0)},
           inputs={f"calib_{n}": s.content_hash for n, s in zip(names, sets)})
    return {"rows": rows, "written": written, "summary": summary}


def ranked_markdown(df, name: str) -> str:
    """`ranked-<set>.md`: the quantizers of set `name` among the rows `df`, worst first."""
    return ranked_table(df[df.set == name].to_dict("records")).to_markdown(index=False) + "\n"


def compare_markdown(df) -> str:
    """`compare.md`: the sets of the rows `df` side by side per quantizer."""
    return compare_table(df).to_markdown(index=False) + "\n"


def write_diagnosis(out: Path, rows: list[dict], names: list[str], ref: LabeledImages) -> tuple[list[Path], dict]:
    """`rows.jsonl`, `ranked-<set>.md` per set, `compare.md` (several sets) and `layers.png` under `out`; returns
    the files written and a summary (worst layer and mean clipping per set)."""
    import pandas as pd

    from calib.core.runs import atomic_write_bytes

    df = pd.DataFrame(rows)
    text = "".join(json.dumps(to_jsonable(r)) + "\n" for r in rows)
    atomic_write_bytes(out / "rows.jsonl", text.encode())
    written = [out / "rows.jsonl"]
    for name in names:
        path = out / f"ranked-{name}.md"
        atomic_write_bytes(path, ranked_markdown(df, name).encode())
        written.append(path)
    if len(names) > 1:
        atomic_write_bytes(out / "compare.md", compare_markdown(df).encode())
        written.append(out / "compare.md")
    written.append(plot_layers(df, out / "layers.png"))
    summary: dict = {"reference": ref.role, "reference_images": len(ref), "quantizers": int(df["index"].nunique()),
                     "out": str(out)}
    for name in names:
        part = df[df.set == name]
        summary[f"worst_{name}"] = part.sort_values("rank").iloc[0]["layer"]
        summary[f"mean_clipped_fraction_{name}"] = float(part.clipped_fraction.mean())
    return written, summary


# ---------------------------------------------------------------- your own model
def own_reference(reference: str | Path | None, contract: InputContract, tree: Tree | None) -> LabeledImages:
    """Your own model's reference images at its input size: the validation split of `tree` (default; see
    `calib.core.own.Tree`) or any folder of images, guarded as the folder source is; never test."""
    from calib.core import own

    if reference is None or str(reference) == "validation":
        if tree is None:
            raise OptionError("diagnose judges your model's ranges on real images: give --data-dir ROOT (its "
                              "validation images) or --reference DIR (any folder of images, never test ones)")
        return tree.validation("give --reference DIR")
    if str(reference) == "test":
        raise OptionError("diagnose never looks at the test split; use --reference validation or a folder")
    folder = Path(reference)
    count = len([p for p in folder.rglob("*") if p.suffix.lower() in own.IMAGE_SUFFIXES]) if folder.is_dir() else 0
    if not count:
        raise OptionError(f"--reference {reference}: not a folder of images ({', '.join(own.IMAGE_SUFFIXES)})")
    if tree is not None and tree.holds_test(folder):
        raise OptionError(f"--reference {reference} is inside the test split of {tree.root}: diagnose never looks "
                          "at test images")
    try:
        images = own.make_images("folder", count, 0, contract, folder, tree)  # refuses test and validation images
    except CalibError as e:
        raise OptionError(f"--reference {reference}: {e}") from None
    return LabeledImages(images, np.zeros(len(images), np.int64), "imported", str(folder))


def diagnose_own(req, out: Path, reference: str | Path | None = None, per_layer_accuracy: int = 0,
                 rank_by: RankBy = RankBy.local_sqnr, quiet: bool = True, record_path: Path | None = None,
                 overwrite: bool = False) -> dict:
    """`calib diagnose` for your own model (`req`: a `calib.core.own.OwnRequest`): quantize it as `calib
    quantize` does into `out/quantize`, then measure every activation quantizer on its reference images, made
    model inputs by its contract. Writes what `run_diagnose` writes; a failed run leaves no folder."""
    from calib.core.data import image_hashes
    from calib.core.folders import run_folder
    from calib.core.own import plan_own, quantize_own
    from calib.core.runs import record, start_run

    if (req.engine or "openvino") != "openvino":
        raise OptionError("diagnose reads NNCF's FakeQuantize nodes from the OpenVINO IR: leave --engine out")
    tree = req.tree()  # read once, for the reference, per-layer accuracy and the quantization alike
    plan = plan_own(req, tree)  # every check before the run folder
    ref = own_reference(reference, req.contract, tree)
    validation = None
    if per_layer_accuracy:
        if tree is None:
            raise OptionError("--per-layer-accuracy needs labeled validation images: give --data-dir ROOT")
        validation = tree.validation("--per-layer-accuracy needs labeled validation images")
    options = {"own": req.options(), "contract": req.contract.to_dict(), "reference": str(reference or "validation"),
               "per_layer_accuracy": per_layer_accuracy, "rank_by": RankBy(rank_by)}
    with run_folder(out, overwrite):
        start_run(out, options, seeds={"calibration": req.seed},
                  inputs={"reference_images": len(ref), "reference_sha256": _images_digest(image_hashes(ref.images))})
        q = quantize_own(req, out / "quantize", tree=tree, plan=plan)
        rows = measure_quantizers(q["fp32_path"], q["int8_path"], ref, quiet=quiet, contract=req.contract)
        name = f"{req.source}-{req.images}-s{req.seed}"
        info = {"model": str(req.model), "source": req.source, "set": name, "images": req.images, "seed": req.seed,
                "algo": req.algo, "contract": req.contract.to_dict()}
        rows = [{**info, **r} for r in rank(rows, rank_by)]
        if validation is not None:
            add_layer_accuracy(rows, q, per_layer_accuracy, validation, quiet, req.contract)
        written, summary = write_diagnosis(out, rows, [name], ref)
    summary |= {"model": str(req.model), "sources": [req.source], "contract": req.contract.to_dict(),
                "int8_path": q["int8_path"], "int8_accuracy": q["int8_accuracy"], "fp32_accuracy": q["fp32_accuracy"]}
    if record_path is not None:
        record(record_path, "diagnose", summary, seeds={"calibration": req.seed})
    return {"rows": rows, "written": written, "summary": summary}


def _images_digest(hashes: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.sort(hashes).tobytes()).hexdigest()
