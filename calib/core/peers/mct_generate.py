"""Sony MCT's PyTorch data generation for a zoo model, run inside MCT's own venv (`scripts/mct-venv.sh`).

Writes `images` (N, 32, 32, 3) uint8, `labels` (the FP32 model's argmax, for class folders only: MCT's
generator is not class-conditional) and `seconds` (generation alone) to an .npz. Every MCT setting is its
default unless given; only the normalization constants are CIFAR-10's instead of ImageNet's, since the
zoo models expect those (MCT takes the constants from a table keyed by `ImageNormalizationType`).

    .venv-mct/bin/python -m calib.core.peers.mct_generate --model resnet20 --images 300 --seed 0 --out x.npz
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--images", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-iter", type=int, default=None, help="default: MCT's (500)")
    p.add_argument("--batch-size", type=int, default=None, help="default: MCT's (32)")
    p.add_argument("--extra-pixels", type=int, default=None, help="default: MCT's (32)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)

    import model_compression_toolkit as mct
    from model_compression_toolkit.data_generation.common.enums import ImageNormalizationType
    from model_compression_toolkit.data_generation.common.image_pipeline import image_normalization_dict

    from calib.core.data import MEAN, STD
    from calib.core.weights import load_model, resolve_weights

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)  # MCT draws its Gaussian init, crops and flips from torch's global generator
    np.random.seed(a.seed)  # and its batch order from NumPy's
    pretrained = a.weights is not None or not a.model.startswith("tiny")
    net = load_model(a.model, a.weights, fuse=False, pretrained=pretrained).eval()
    image_normalization_dict[ImageNormalizationType.TORCHVISION] = [[m * 255 for m in MEAN], [s * 255 for s in STD]]
    given = {k: v for k, v in {"n_iter": a.n_iter, "data_gen_batch_size": a.batch_size,
                               "extra_pixels": a.extra_pixels}.items() if v is not None}
    cfg = mct.data_generation.get_pytorch_data_generation_config(**given)
    t0 = time.perf_counter()
    out = mct.data_generation.pytorch_data_generation_experimental(net, a.images, 32, cfg)
    seconds = time.perf_counter() - t0
    x = torch.cat(out).float()
    pixels = x * torch.tensor(STD).view(1, 3, 1, 1) * 255 + torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    images = pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with torch.no_grad():
        labels = net(x).argmax(1).numpy().astype(np.int64)
    info = {"mct": mct.__version__, "model": a.model,
            "weights": str(resolve_weights(a.model, a.weights)) if pretrained else "random",
            "n_iter": cfg.n_iter, "batch_size": cfg.data_gen_batch_size, "extra_pixels": cfg.extra_pixels,
            "initial_lr": cfg.initial_lr, "optimizer": cfg.optimizer.__name__, "scheduler": str(cfg.scheduler_type),
            "seed": a.seed, "threads": torch.get_num_threads()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(f".{a.out.name}.tmp.npz")
    np.savez(tmp, images=images, labels=labels, seconds=np.float64(seconds), info=json.dumps(info))
    tmp.replace(a.out)


if __name__ == "__main__":
    main()
