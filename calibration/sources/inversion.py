"""Data-free images inverted from the target model's own BatchNorm statistics (DeepInversion-style).

Images are optimized in normalized space so that the mean and variance of every BatchNorm layer's *input*
match that layer's running statistics (inputs, not conv outputs, so RepVGG's identity-branch BNs count),
with cross-entropy toward each image's class, total-variation and L2 priors, random jitter and flips.
Images are kept inside the valid pixel range at every step; the result is de-normalized and rounded
to uint8, and the BN loss is measured again on those uint8 images, since that is what calibration sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from calibration.data import MEAN, STD, from_model_input, to_model_input
from calibration.sources import Generated, balanced_labels, image_seed, register_source


class BNStatsLoss:
    """Hooks every BatchNorm2d input; `value()` is the summed mean/variance mismatch of the last forward."""

    def __init__(self, model: nn.Module):
        self.terms: list[torch.Tensor] = []
        self.handles = [m.register_forward_pre_hook(self._hook) for m in model.modules()
                        if isinstance(m, nn.BatchNorm2d)]
        if not self.handles:
            raise ValueError("model has no BatchNorm2d layers to invert")

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        x = inputs[0]
        mean = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=False)
        self.terms.append(torch.linalg.vector_norm(mean - module.running_mean)
                          + torch.linalg.vector_norm(var - module.running_var))

    def value(self) -> torch.Tensor:
        total = torch.stack(self.terms).sum()
        self.terms.clear()
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def to_normalized(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


@torch.no_grad()
def bn_loss_of(model: nn.Module, images_u8: np.ndarray) -> float:
    """BN-statistics distance of a batch of uint8 images under `model` (eval mode)."""
    hooks = BNStatsLoss(model)
    try:
        model(torch.from_numpy(to_model_input(images_u8)))
        return float(hooks.value())
    finally:
        hooks.remove()


def invert_batch(model: nn.Module, labels: np.ndarray, seeds: list[int], iterations: int, lr: float,
                 w_bn: float, w_ce: float, w_tv: float, w_l2: float, jitter: int = 2) -> tuple[np.ndarray, dict]:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.stack([torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in seeds])
    x.requires_grad_(True)
    gen = torch.Generator().manual_seed(seeds[0])
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    lo, hi = to_normalized(torch.zeros(1, 3, 1, 1)), to_normalized(torch.ones(1, 3, 1, 1))
    hooks = BNStatsLoss(model)
    first_bn = None
    try:
        for _ in range(iterations):
            dx, dy = torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist()
            inp = torch.roll(x, (dx, dy), (2, 3))
            if torch.rand(1, generator=gen).item() < 0.5:
                inp = inp.flip(3)
            logits = model(inp)
            bn = hooks.value()
            first_bn = bn.item() if first_bn is None else first_bn
            loss = (w_bn * bn + w_ce * nn.functional.cross_entropy(logits, y) + w_tv * total_variation(x)
                    + w_l2 * x.pow(2).mean())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():  # stay inside the valid pixel range, so that saving loses only rounding
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
        with torch.no_grad():
            model(x)
            last_bn = float(hooks.value())
    finally:
        hooks.remove()
    pixels = from_model_input(x.detach()).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    images = np.rint(pixels * 255).astype(np.uint8)
    return images, {"bn_loss_start": first_bn, "bn_loss_float": last_bn, "bn_loss_uint8": bn_loss_of(model, images)}


@register_source("inversion")
def inversion(per_class: int, seed: int, model: str = "resnet20", weights: Path | None = None,
              iterations: int = 1000, batch_size: int = 100, lr: float = 0.1, w_bn: float = 1.0,
              w_ce: float = 1.0, w_tv: float = 1e-3, w_l2: float = 1e-4) -> Generated:
    """Class-conditional images optimized to match the model's BatchNorm running statistics."""
    from calibration.weights import load_model, resolve_weights

    torch.manual_seed(seed)  # fixes random weights of test-only tiny models too
    pretrained = weights is not None or not model.startswith("tiny")
    net = load_model(model, weights, fuse=False, pretrained=pretrained)  # unfused: keep every BN
    labels = balanced_labels(per_class)
    # interleave classes so that every batch mixes them, as the BN statistics were gathered on mixed batches
    order = np.argsort(np.arange(len(labels)) % per_class, kind="stable")
    seeds = [image_seed(seed, i) for i in range(len(labels))]
    images = np.empty((len(labels), 32, 32, 3), np.uint8)
    stats = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        imgs, st = invert_batch(net, labels[idx], [seeds[i] for i in idx], iterations, lr, w_bn, w_ce, w_tv, w_l2)
        images[idx] = imgs
        stats.append(st)
    extra = {"model": model, "weights": str(resolve_weights(model, weights)) if pretrained else "random",
             "batches": stats}
    return Generated(images, labels, [f"{s:010d}" for s in seeds], extra=extra)
