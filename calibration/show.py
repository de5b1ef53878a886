"""A labelled sample grid of a set: one row per class, the class name in a left margin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from calibration.data import CLASSES
from calibration.sets import CalibrationSet


def save_grid(cset: CalibrationSet, out: Path, per_class: int = 12, scale: int = 2) -> Path:
    rows = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(cset.labels == c)[:per_class]
        imgs = np.zeros((per_class, 32, 32, 3), np.uint8)
        imgs[: len(idx)] = cset.images[idx]
        rows.append(imgs)
    tensor = torch.from_numpy(np.concatenate(rows)).permute(0, 3, 1, 2)
    grid = make_grid(tensor, nrow=per_class, padding=2, pad_value=255).permute(1, 2, 0).numpy()
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    margin = 90
    canvas = Image.new("RGB", (img.width + margin, img.height + 24), "white")
    canvas.paste(img, (margin, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), f"{cset.manifest.get('source', '?')}: {cset.path.name} ({len(cset)} images)", fill="black")
    for c, name in enumerate(CLASSES):
        draw.text((4, 24 + scale * (2 + c * 34) + 28), name, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
