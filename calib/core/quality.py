"""How close a calibration set is to real data, measured with a zoo classifier (no downloaded network).

Reference images for the Fréchet distance are the validation split of train: real, never used for
calibration, and not the test split, which is kept for final accuracy alone.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from torch import nn

from calib.core.data import LabeledImages, to_model_input


@torch.no_grad()
def features_and_logits(model: nn.Module, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    feats, logits = [], []
    for s in range(0, len(images), batch):
        f = model.forward_features(torch.from_numpy(to_model_input(images[s : s + batch])))
        feats.append(f.numpy())
        logits.append(model(torch.from_numpy(to_model_input(images[s : s + batch]))).numpy())
    return np.concatenate(feats).astype(np.float64), np.concatenate(logits)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


@torch.no_grad()
def bn_distance(model: nn.Module, images: np.ndarray, batch: int = 500) -> float:
    """Sum over BN layers of |mean - running_mean| + |var - running_var| for the whole set's BN inputs."""
    sums: dict[nn.Module, list] = {}

    def hook(m, inputs):
        x = inputs[0].double()
        acc = sums.setdefault(m, [0.0, 0.0, 0])
        acc[0] = acc[0] + x.sum((0, 2, 3))
        acc[1] = acc[1] + (x * x).sum((0, 2, 3))
        acc[2] += x.shape[0] * x.shape[2] * x.shape[3]

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        for s in range(0, len(images), batch):
            model(torch.from_numpy(to_model_input(images[s : s + batch])))
    finally:
        for h in handles:
            h.remove()
    total = 0.0
    for m, (s1, s2, n) in sums.items():
        mean, var = s1 / n, s2 / n - (s1 / n) ** 2
        total += float(torch.linalg.vector_norm(mean - m.running_mean.double())
                       + torch.linalg.vector_norm(var - m.running_var.double()))
    return total


def set_metrics(model: nn.Module, images: np.ndarray, labels: np.ndarray, reference: LabeledImages) -> dict:
    model.eval()
    feats, logits = features_and_logits(model, images)
    ref_feats, _ = features_and_logits(model, reference.images)
    p = torch.softmax(torch.from_numpy(logits), 1).numpy()
    entropy = -(p * np.log(np.clip(p, 1e-12, 1))).sum(1)
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    return {
        "images": len(labels),
        "class_accuracy": float((logits.argmax(1) == labels).mean()),
        "mean_entropy": float(entropy.mean()),
        **{f"pixel_mean_{c}": float(v) for c, v in zip("rgb", pixels.mean(0))},
        **{f"pixel_std_{c}": float(v) for c, v in zip("rgb", pixels.std(0))},
        "frechet_distance": frechet_distance(feats, ref_feats),
        "frechet_reference": f"{reference.role} split ({len(reference)} images)",
        "bn_distance": bn_distance(model, images),
    }
