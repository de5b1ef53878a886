"""A labelled sample grid of a set: one row per class, the class name in a left margin, white where a class
has fewer images than the row holds (no padding tiles that look like black images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from calib.core.data import CLASSES
from calib.core.errors import OptionError
from calib.core.sets import CalibrationSet

MARGIN, HEADER, GAP = 90, 24, 2  # left margin for class names, title band, pixels between tiles (before scale)


def image_suffixes() -> set[str]:
    """File suffixes Pillow can write (".png", ".jpg", ...)."""
    Image.init()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def check_image_path(out: Path, option: str = "--out") -> None:
    """Refuse a path Pillow cannot write, before any work."""
    if out.suffix.lower() not in image_suffixes():
        raise OptionError(f"{option} {out}: unknown image type {out.suffix or '(no suffix)'}; use .png or .jpg")
    if out.is_dir():
        raise OptionError(f"{option} {out} is a folder; give an image file name such as grid.png")


def save_grid(cset: CalibrationSet, out: Path, per_class: int = 12, scale: int = 2) -> Path:
    check_image_path(out)
    tile = 32 * scale
    step = tile + GAP * scale
    counts = [min(per_class, int((cset.labels == c).sum())) for c in range(len(CLASSES))]
    columns = max(1, max(counts))
    canvas = Image.new("RGB", (MARGIN + columns * step, HEADER + len(CLASSES) * step), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), f"{cset.manifest.get('source', '?')}: {cset.path.name} ({len(cset)} images)", fill="black")
    for c, name in enumerate(CLASSES):
        top = HEADER + c * step
        draw.text((4, top + tile // 2 - 6), name, fill="black")
        for j, i in enumerate(np.flatnonzero(cset.labels == c)[: counts[c]]):
            img = Image.fromarray(cset.images[i]).resize((tile, tile), Image.NEAREST)
            canvas.paste(img, (MARGIN + j * step, top))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
