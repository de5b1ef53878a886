"""Figures written atomically, as every other output: the study's heatmaps and `calib diagnose`'s plots."""

from __future__ import annotations

from pathlib import Path

from calib.core.runs import atomic_path


def save_figure(fig, path: Path, dpi: int = 100, palette: bool = True) -> Path:
    """Write a matplotlib figure as PNG and close it; `palette` quantizes to 256 colours (a few tens of kB: small
    enough to embed in the HTML report and commit)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        plt.close(fig)
        if palette:
            from PIL import Image

            with Image.open(tmp) as im:
                small = im.convert("RGB").quantize(colors=256)
            small.save(tmp, "PNG", optimize=True)
    return path
