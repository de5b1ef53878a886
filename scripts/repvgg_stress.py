"""Why a RepVGG can collapse under default INT8 when these weights do not: the second cause the QARepVGG paper
names (activation channels of very different ranges) made to order, the FP32 function left unchanged.

A fused RepVGG is a plain chain of conv3x3 + bias + ReLU. ReLU(s * x) = s * ReLU(x) for s > 0, so multiplying
output channel c of one block (weights and bias) by s_c and dividing input channel c of the next layer by s_c
changes no FP32 output. With s_c log-uniform in [1, k] (seeded), every block's output gets channels whose ranges
differ by up to k more than the trained ones: what long training does to RepVGG's identity-branch BatchNorm.
NNCF's default INT8 quantizes each activation with one range per tensor (weights per channel), so the small
channels lose their resolution as k grows. For each k this measures FP32 (unchanged), default INT8 and the
levers that address activation ranges, and the activation channel spread (the largest channel's range over the
median channel's, per block output, on the calibration images) to place the trained weights on the curve.

    CALIB_CIFAR10_DIR=../shared/data/cifar10-jpeg python scripts/repvgg_stress.py \
        --weights ../shared/weights/cifar10_repvgg_a0-20eadc6e.pt --out results/repvgg
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

# the lever settings, one definition: run as a script, scripts/ is on the path
from repvgg_levers import fq_count, predict, quantize, validation_items

LEVERS = ("default", "smooth_quant", "minmax", "per_tensor_weights", "mean_no_outliers", "percentile",
          "accuracy_aware")


def stress(net, k: float, seed: int) -> None:
    """Rescale every block's output channels by log-uniform factors in [1, k] and undo it in the next layer."""
    import torch

    from calib.core.zoo.repvgg import RepVGGBlock

    blocks = [m for m in net.modules() if isinstance(m, RepVGGBlock)]
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for j, block in enumerate(blocks):
            s = torch.tensor(k ** rng.uniform(0.0, 1.0, block.cout), dtype=torch.float32)
            block.rbr_reparam.weight.mul_(s.view(-1, 1, 1, 1))
            block.rbr_reparam.bias.mul_(s)
            nxt = blocks[j + 1].rbr_reparam if j + 1 < len(blocks) else net.linear  # global pooling is linear
            nxt.weight.div_(s.view(1, -1, 1, 1) if nxt.weight.ndim == 4 else s.view(1, -1))


def channel_spread(net, x: np.ndarray) -> list[float]:
    """Per block output (post-ReLU, what NNCF quantizes per tensor): max over channels of each channel's largest
    value, over the median channel's."""
    import torch

    from calib.core.zoo.repvgg import RepVGGBlock

    peaks: dict[int, torch.Tensor] = {}

    def hook(i):
        def record(_module, _inputs, out):
            m = out.detach().amax(dim=(0, 2, 3))
            peaks[i] = torch.maximum(peaks[i], m) if i in peaks else m
        return record

    blocks = [m for m in net.modules() if isinstance(m, RepVGGBlock)]
    handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
    with torch.no_grad():
        for s in range(0, len(x), 100):
            net(torch.from_numpy(x[s : s + 100]))
    for h in handles:
        h.remove()
    return [float(p.max() / p.median().clamp_min(1e-12)) for _, p in sorted(peaks.items())]


def main(argv: list[str] | None = None) -> None:
    """The command line; `argv` lets the test suite run it at toy size in-process."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="repvgg_a0")
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ks", default="1,4,16,64")
    ap.add_argument("--levers", default=",".join(LEVERS))
    ap.add_argument("--out", type=Path, default=Path("results/repvgg"))
    args = ap.parse_args(argv)
    try:
        ks = [float(v) for v in args.ks.split(",")]
    except ValueError:
        ap.error(f"--ks {args.ks}: comma-separated numbers, e.g. 1,4,16,64")
    if ks[0] != 1:
        ap.error(f"--ks {args.ks}: the first k must be 1, the unstressed network every row compares with")

    from calib.core.data import load_split, to_model_input, train_splits
    from calib.core.export import to_openvino
    from calib.core.hardware import hardware
    from calib.core.quantize import balanced_indices
    from calib.core.runs import append_jsonl, file_sha256, git_sha, versions
    from calib.core.weights import load_model

    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "stress.jsonl"
    test = load_split("test")
    x_test = to_model_input(test.images)
    splits = train_splits()
    pool, validation = splits["calibration_pool"], splits["validation"]  # the weights never saw validation
    x_calib = to_model_input(pool.images[balanced_indices(pool.labels, args.images, args.seed)])
    items = list(x_calib.reshape(-1, 30, 3, 32, 32))
    val = validation_items(validation)
    common = {"model": args.model, "weights": args.weights.name, "weights_sha256": file_sha256(args.weights),
              "source": "cifar10", "calib_images": len(x_calib), "seed": args.seed, "test": test.source,
              "test_images": len(test), "git_sha": git_sha(), **hardware(), "versions": versions()}
    reference = None
    for k in ks:
        net = load_model(args.model, args.weights, fuse=True)
        stress(net, k, args.seed)
        spread = channel_spread(net, x_calib)
        fp32 = to_openvino(net, dynamic_batch=True)
        fp32_pred = predict(fp32, x_test)
        reference = fp32_pred if reference is None else reference
        fp32_acc = float((fp32_pred == test.labels).mean())
        print(f"k={k:g}: FP32 {fp32_acc:.4f} (same predictions as k=1: {100 * (fp32_pred == reference).mean():.2f} %), "
              f"activation channel spread median {np.median(spread):.1f}, largest {max(spread):.1f}", flush=True)
        for lever in args.levers.split(","):
            t0 = time.perf_counter()
            q = quantize(fp32, lever, items, val)  # accuracy_aware: the held-out train split, never the test images
            seconds = time.perf_counter() - t0
            pred = predict(q, x_test)
            acc = float((pred == test.labels).mean())
            append_jsonl(rows_path, {**common, "k": k, "lever": lever, "fp32_accuracy": fp32_acc,
                                     "fp32_same_as_unstressed": float((fp32_pred == reference).mean()),
                                     "activation_spread_median": float(np.median(spread)),
                                     "activation_spread_max": float(max(spread)), "activation_spread": spread,
                                     "accuracy": acc, "drop_points": round(100 * (acc - fp32_acc), 2),
                                     "agreement": float((pred == fp32_pred).mean()),
                                     "quantize_seconds": round(seconds, 1), "fq_nodes": fq_count(q)})
            print(f"  {lever:20s} {acc:.4f} ({100 * (acc - fp32_acc):+.2f} pts)", flush=True)


if __name__ == "__main__":
    main()
