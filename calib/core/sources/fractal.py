"""Fractal images from random iterated function systems (FractalDB's recipe, rendered offline here).

Systems: 2-7 affine maps with parameters uniform in [-1, 1], chosen with probability proportional to
|det|, kept when their points fill >= `min_fill` of the canvas. Each system gives `variants` images by
scaling one map's linear part (weights 0.8..1.2). Points are drawn as small random patches.

Colouring, without the colourisation network that is no longer available: every map of a system gets its
own hue, each pixel takes the mean colour of the maps whose points landed on it and an opacity from its
point density, and the result is laid over one of 1,000 fixed background colours. So colour follows the
fractal's own self-similar structure instead of being uniform. Then a random flip/rotation and a Gaussian
blur whose width is set in output pixels, so 32x32 images keep their structure. Rendering happens at
`supersample` times the size and is reduced by area averaging.

Fractal categories have no CIFAR-10 meaning: system k goes to class folder k % 10 (recorded in the manifest).
"""

from __future__ import annotations

import colorsys

import numpy as np
from scipy.ndimage import gaussian_filter

from calib.core.contract import InputContract, resize
from calib.core.sources import Generated, balanced_labels, image_seed, register_source

PALETTE = np.random.default_rng(20_220_101).uniform(0, 1, (1000, 3))  # the fixed background colours


def random_system(rng: np.random.Generator, min_fill: float, max_tries: int = 200):
    for _ in range(max_tries):
        n = int(rng.integers(2, 8))
        params = rng.uniform(-1, 1, (n, 6))
        det = np.abs(params[:, 0] * params[:, 3] - params[:, 1] * params[:, 2])
        if det.sum() < 1e-6:
            continue
        A, b, p = params[:, :4].reshape(n, 2, 2), params[:, 4:], det / det.sum()
        pts, _ = iterate(A, b, p, rng, walkers=256, steps=24)
        if len(pts) > 1000 and np.abs(pts).max() < 100 and fill_rate(pts) >= min_fill:  # bounded and filling
            return A, b, p
    raise RuntimeError("no fractal system passed the fill-rate test; lower min_fill")


def iterate(A, b, p, rng, walkers: int = 512, steps: int = 24, burn: int = 4):
    """The chaos game, vectorized over independent walkers: returns points and the map that made each."""
    x = rng.uniform(-1, 1, (walkers, 2))
    pts, ids = [], []
    for t in range(steps):
        k = np.minimum(np.searchsorted(np.cumsum(p), rng.random(walkers)), len(p) - 1)
        x = np.einsum("wij,wj->wi", A[k], x) + b[k]
        if t >= burn:
            pts.append(x)
            ids.append(k)
    pts, ids = np.concatenate(pts), np.concatenate(ids)
    ok = np.isfinite(pts).all(1) & (np.abs(pts).max(1) < 1e6)
    return pts[ok], ids[ok]


def to_pixels(pts: np.ndarray, size: int, margin: float = 0.05) -> np.ndarray:
    lo, hi = np.percentile(pts[::8], [1, 99], axis=0)
    scale = (1 - 2 * margin) * size / np.maximum(hi - lo, 1e-9).max()
    centre = (lo + hi) / 2
    return np.floor((pts - centre) * scale + size / 2).astype(np.int64)


def fill_rate(pts: np.ndarray, size: int = 32) -> float:
    px = to_pixels(pts, size)
    ok = ((px >= 0) & (px < size)).all(1)
    return len(np.unique(px[ok, 1] * size + px[ok, 0])) / size**2


def render(A, b, p, rng: np.random.Generator, size: int = 32, supersample: int = 2,
           blur: float = 0.3) -> np.ndarray:
    S = size * supersample
    pts, ids = iterate(A, b, p, rng)
    px = to_pixels(pts, S)
    patch = rng.random((3, 3)) < 0.5
    patch[1, 1] = True
    hues = rng.uniform(0, 1, len(p))
    colours = np.array([colorsys.hsv_to_rgb(h, rng.uniform(0.5, 1), rng.uniform(0.6, 1)) for h in hues])
    dy, dx = np.nonzero(patch)
    all_px = (px[None, :, :] + np.stack([dx - 1, dy - 1], 1)[:, None, :]).reshape(-1, 2)
    all_ids = np.tile(ids, len(dy))
    ok = ((all_px >= 0) & (all_px < S)).all(1)
    flat = all_px[ok, 1] * S + all_px[ok, 0]
    per_map = np.bincount(flat * len(p) + all_ids[ok], minlength=S * S * len(p)).reshape(S * S, len(p))
    count = per_map.sum(1).astype(np.float64)
    rgb = per_map @ colours
    colour = rgb / np.maximum(count, 1)[:, None]
    alpha = np.clip(count / max(np.percentile(count[count > 0], 50), 1), 0, 1)[:, None]
    bg = PALETTE[rng.integers(len(PALETTE))]
    img = (alpha * colour + (1 - alpha) * bg).reshape(S, S, 3)
    img = np.rot90(img, int(rng.integers(4)))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    sigma = rng.uniform(0, blur) * supersample
    if sigma > 0:
        img = gaussian_filter(img, sigma=(sigma, sigma, 0))
    img = img.reshape(size, supersample, size, supersample, 3).mean((1, 3))
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


@register_source("fractal")
def fractal(per_class: int, seed: int, variants: int = 25, min_fill: float = 0.2, blur: float = 0.3,
            supersample: int = 2, contract: InputContract | None = None) -> Generated:
    """Iterated-function-system fractals, coloured per map, spread evenly over the 10 class folders; at the input
    size of `contract` (your own model's: rendered square at its longer side, then resized), else 32x32."""
    size = max(contract.input_size) if contract is not None else 32
    labels = balanced_labels(per_class)
    systems: dict[int, tuple] = {}
    images, ids = [], []
    for i, c in enumerate(labels):
        r = i - c * per_class  # index within the class
        k = (r // variants) * 10 + int(c)  # fractal category; category k lives in class folder k % 10
        if k not in systems:
            systems[k] = random_system(np.random.default_rng([seed, 1, k]), min_fill)
        A, b, p = systems[k]
        v = r % variants
        A = A.copy()
        A[v % len(A)] *= np.linspace(0.8, 1.2, variants)[v] if variants > 1 else 1.0
        s = image_seed(seed, i)
        img = render(A, b, p, np.random.default_rng(s), size=size, supersample=supersample, blur=blur)
        images.append(img if contract is None else resize(img[None], contract.input_size)[0])
        ids.append(f"{s:010d}")
    return Generated(np.stack(images), labels, ids,
                     extra={"labels": "arbitrary: fractal category k is stored in class folder k % 10",
                            "categories": len(systems)})
