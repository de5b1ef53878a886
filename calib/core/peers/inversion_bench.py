"""calib's inversion against Sony MCT's data generation, side by side: speed, and INT8 accuracy after the same
NNCF quantization, evaluated on the test split. One row per (model, method, images, seed); a rerun skips
rows already recorded, so a long grid can be stopped and resumed.

Methods: `calib` (the source's defaults), `calib-old` (the defaults before the speed-up), `mct` (MCT's
defaults), `mct-matched` (MCT at calib's iteration count and batch size), or `TOOL:key=value,...`
(e.g. `calib:iterations=100`, `mct:n_iter=100,extra_pixels=0`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from calib.core.errors import CalibError
from calib.core.runs import read_jsonl, record
from calib.core.sources.inversion import DEFAULTS, OLD_DEFAULTS

NAMED = {
    "calib": ("calib", {}),
    "calib-old": ("calib", OLD_DEFAULTS),
    "mct": ("mct", {}),
    "mct-matched": ("mct", {"n_iter": DEFAULTS["iterations"], "batch_size": DEFAULTS["batch_size"]}),
}


def boolean(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
    return text.lower() in ("true", "1")


CALIB_KEYS = {"iterations": int, "batch_size": int, "lr": float, "w_bn": float, "w_ce": float, "w_tv": float,
              "w_l2": float, "init": str, "channels_last": boolean}
MCT_KEYS = {"n_iter": int, "batch_size": int, "extra_pixels": int}
# the settings of the 1.01 s/image figure measured before the speed-up (`calib benchmark sources`)
# (with today's BN-statistics formula, so the measured ratio understates the speed-up)
SPEED_OLD_METHOD = f"calib:iterations=400,batch_size=20,lr={OLD_DEFAULTS['lr']},channels_last=false"


def parse_method(spec: str) -> tuple[str, dict]:
    """A named method or `calib:k=v,...` / `mct:k=v,...` -> (tool, options)."""
    if spec in NAMED:
        return NAMED[spec][0], dict(NAMED[spec][1])
    tool, _, rest = spec.partition(":")
    keys = {"calib": CALIB_KEYS, "mct": MCT_KEYS}.get(tool)
    if keys is None or not rest:
        raise CalibError(f"unknown method {spec!r}; use {', '.join(NAMED)} or calib:k=v,... / mct:k=v,...")
    opts = {}
    for item in rest.split(","):
        k, _, v = item.partition("=")
        if k not in keys:
            raise CalibError(f"method {spec!r}: {tool} takes {', '.join(keys)}, not {k!r}")
        try:
            opts[k] = keys[k](v)
        except ValueError:
            raise CalibError(f"method {spec!r}: {k}={v!r} is not a {keys[k].__name__}") from None
    return tool, opts


def split_methods(methods: str) -> list[str]:
    """Split on the commas that start a new method: `calib:iterations=50,lr=0.3,mct` -> two methods."""
    parts: list[str] = []
    for piece in (p.strip() for p in methods.split(",")):
        if parts and "=" in piece and ":" not in piece:
            parts[-1] += "," + piece
        elif piece:
            parts.append(piece)
    return parts


def generate_images(tool: str, opts: dict, model: str, images: int, seed: int,
                    weights: Path | None = None) -> dict:
    """Images, labels, ids and the generation time alone (model loading included for both tools)."""
    if tool == "calib":
        from calib.core.sources import generate

        if images % 10:
            raise CalibError("calib's inversion makes class-balanced sets: --images must be a multiple of 10")
        t0 = time.perf_counter()
        g = generate("inversion", images // 10, seed, model=model, weights=weights, **opts)
        seconds = time.perf_counter() - t0
        return {"images": g.images, "labels": g.labels, "ids": g.ids, "seconds": seconds,
                "settings": g.extra["inversion"], "extra": g.extra}
    from calib.core.peers.mct import mct_generate

    r = mct_generate(model, images, seed, weights, threads=torch.get_num_threads(), **opts)
    return {"images": r.images, "labels": r.labels, "ids": [f"{i:05d}" for i in range(images)], "seconds": r.seconds,
            "settings": r.info, "extra": {"mct": r.info}}


def bn_distance(model: str, images: np.ndarray, weights: Path | None = None) -> float:
    """BN-statistics distance of the whole set under the model (one batch): one yardstick for both tools."""
    from calib.core.sources.inversion import _load, bn_loss_of

    net, _ = _load(model, weights)
    return bn_loss_of(net, images)


def benchmark_inversion(models: list[str], methods: list[str], images: int, seeds: list[int], out: Path,
                        weights: Path | None = None, data_dir: Path | None = None,
                        record_path: Path = Path("runs/records.jsonl"), log=print) -> list[dict]:
    """Every (model, method, seed): generate `images` images, quantize with the same NNCF settings, evaluate."""
    from calib.core.data import load_split
    from calib.core.evaluate import evaluate
    from calib.core.pipeline import quantize_with
    from calib.core.sets import read_set, write_set
    from calib.core.spec import QuantizeSpec

    parsed = {m: parse_method(m) for m in methods}  # refuse a bad method, or a missing MCT, before any work
    if any(tool == "mct" for tool, _ in parsed.values()):
        from calib.core.peers.mct import mct_python

        mct_python()
    test = load_split("test", data_dir)
    rows = []
    for model in models:
        for seed in seeds:
            for method, (tool, opts) in parsed.items():
                done = {(r["model"], r["method"], r["images"], r["seed"]) for r in read_jsonl(record_path)
                        if r.get("kind") == "benchmark_inversion"}  # read again: other processes may add rows
                if (model, method, images, seed) in done:
                    log(f"skip {model} {method} {images} images seed {seed}: already recorded")
                    continue
                g = generate_images(tool, opts, model, images, seed, weights)
                slug = method.replace(":", "_").replace(",", "_").replace("=", "")
                set_dir = write_set(out / "sets" / model / f"{slug}-{images}-s{seed}", g["images"], g["labels"],
                                    g["ids"], f"inversion-{tool}", {"method": method, **opts}, {"set": seed},
                                    extra=g["extra"], overwrite=True)
                cset = read_set(set_dir, allow_unbalanced=True)
                spec = QuantizeSpec(model=model, calib=set_dir, seed=0, weights=weights, data_dir=data_dir)
                q = quantize_with(spec, cset, out / "quantized" / model / f"{slug}-{images}-s{seed}")
                row = {"model": model, "method": method, "tool": tool, "seed": seed, "images": images,
                       "settings": g["settings"], "generate_seconds": round(g["seconds"], 2),
                       "s_per_image": g["seconds"] / images, "images_per_s": images / g["seconds"],
                       "torch_threads": torch.get_num_threads(),
                       "bn_distance_set": bn_distance(model, g["images"], weights),
                       # batch 1: the IR's batch stays as exported (ShuffleNetV2's channel shuffle fixes it)
                       "fp32_accuracy": evaluate(q["fp32_path"], test, 1)["accuracy"],
                       "int8_accuracy": evaluate(q["int8_path"], test, 1)["accuracy"],
                       "subset_size_images": q["subset_size_images"], "calib_hash": cset.content_hash,
                       "set": str(set_dir)}
                rows.append(record(record_path, "benchmark_inversion", row, seeds={"set": seed},
                                   inputs={"calib": cset.content_hash}))
                log(f"{model} {method} seed {seed}: {row['s_per_image']:.3f} s/image, "
                    f"INT8 {row['int8_accuracy']:.4f} (FP32 {row['fp32_accuracy']:.4f})")
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds, per (model, method, images)."""
    import pandas as pd

    if not rows:
        return []
    df = pd.DataFrame(rows)
    if "bn_distance_set" not in df:
        df["bn_distance_set"] = np.nan
    if "bn_distance" in df:  # older rows: a mean over 100-image chunks, the whole-set value for sets of <= 100
        df["bn_distance_set"] = df["bn_distance_set"].fillna(df["bn_distance"].where(df["images"] <= 100))
    g = df.groupby(["model", "method", "images"], sort=False)
    s = g.agg(seeds=("seed", "nunique"), s_per_image=("s_per_image", "mean"), images_per_s=("images_per_s", "mean"),
              int8_mean=("int8_accuracy", "mean"), int8_std=("int8_accuracy", "std"),
              fp32=("fp32_accuracy", "mean"), bn_distance=("bn_distance_set", "mean")).reset_index()
    return s.sort_values(["model", "images"], kind="stable").to_dict("records")


def markdown_table(summ: list[dict]) -> str:
    def acc(r: dict) -> str:
        return f"{r['int8_mean']:.4f}" + (f" ± {r['int8_std']:.4f}" if r["seeds"] > 1 else "")

    def bn(r: dict) -> str:
        return "-" if np.isnan(r["bn_distance"]) else f"{r['bn_distance']:.2f}"

    head = ("| model | method | images | seeds | s/image | images/s | INT8 acc (mean ± sd) | FP32 acc | BN distance |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    return head + "".join(f"| {r['model']} | {r['method']} | {r['images']} | {r['seeds']} | {r['s_per_image']:.3f} | "
                          f"{r['images_per_s']:.2f} | {acc(r)} | {r['fp32']:.4f} | {bn(r)} |\n" for r in summ)


def inversion_speed(model: str = "resnet20", images: int = 100, weights: Path | None = None,
                    variants: dict[str, str] | None = None, record_path: Path = Path("runs/records.jsonl")) -> dict:
    """Seconds per image of each variant (name -> method), timed around generation alone, in one run, so that
    the ratio of the first to the last holds even on a busy machine. Default: the settings of the 1.01 s/image
    figure before the speed-up against today's defaults."""
    variants = variants or {"old": SPEED_OLD_METHOD, "new": "calib"}
    parsed = {name: parse_method(m) for name, m in variants.items()}
    if images % 10:
        raise CalibError("--images must be a multiple of 10 (class-balanced sets)")
    generate_images("calib", {"iterations": 2, "batch_size": 10}, model, 10, 99, weights)  # warm-up
    result = {"model": model, "images": images, "torch_threads": torch.get_num_threads()}
    for name, (tool, opts) in parsed.items():
        g = generate_images(tool, opts, model, images, 0, weights)
        result[f"{name}_s_per_image"] = g["seconds"] / images
        result[f"{name}_method"] = variants[name]
        result[f"{name}_settings"] = g["settings"]
    names = list(variants)
    result["ratio"] = result[f"{names[0]}_s_per_image"] / result[f"{names[-1]}_s_per_image"]
    return record(record_path, "inversion_speed", result)
