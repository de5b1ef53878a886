"""The teacher set: (z, class, image) triplets, each image made from exactly the latent stored beside it.

Image i gets seed `seed + i` and class `i % num_classes`; z ~ N(0, I) from that seed, the same distribution
the sampler uses. Images go to `images/<i>.png`, and latents, labels and seeds to `triplets.npz`. Work is
done in chunks, each finished chunk saved, so a killed build resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from calib.core.errors import CalibError
from calib.core.runs import atomic_path, atomic_write_json, provenance
from calib.distylegan.teachers import ModuleTeacher


def latents_for_seeds(seeds: np.ndarray, z_dim: int) -> torch.Tensor:
    """One Gaussian latent per seed, independent of batching: the same seed always gives the same z."""
    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Fixed map [-1, 1] -> uint8 NHWC (no per-image rescaling)."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class TeacherSet:
    latents: np.ndarray  # (N, z_dim) float32
    labels: np.ndarray  # (N,) int64
    seeds: np.ndarray  # (N,) int64
    images: np.ndarray  # (N, 32, 32, 3) uint8

    def __len__(self) -> int:
        return len(self.labels)


def build_teacher_set(teacher: ModuleTeacher, out: Path, count: int, seed: int = 0, chunk: int = 256,
                      device: str = "cpu") -> Path:
    if teacher.num_classes < 1:
        raise CalibError(f"teacher {teacher.name} is unconditional; a teacher set needs class-conditional images")
    if count % teacher.num_classes:
        raise CalibError(f"count {count} is not a multiple of {teacher.num_classes} classes (sets are balanced)")
    (out / "images").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "options.json", {"teacher": teacher.name, "count": count, "seed": seed, "chunk": chunk})
    parts = out / "chunks"
    parts.mkdir(exist_ok=True)
    for start in range(0, count, chunk):
        part = parts / f"{start:08d}.npz"
        if part.exists():
            continue
        idx = np.arange(start, min(count, start + chunk))
        seeds, labels = seed + idx, idx % teacher.num_classes
        z = latents_for_seeds(seeds, teacher.z_dim)
        imgs = to_uint8(teacher(z.to(device), torch.from_numpy(labels).to(device)))
        for i, im in zip(idx, imgs):
            Image.fromarray(im).save(out / "images" / f"{i:08d}.png")
        with atomic_path(part) as tmp:
            np.savez(tmp, latents=z.numpy(), labels=labels, seeds=seeds)
    files = sorted(parts.glob("[0-9]*.npz"))
    arrays = [np.load(f) for f in files]
    merged = {k: np.concatenate([a[k] for a in arrays]) for k in ("latents", "labels", "seeds")}
    with atomic_path(out / "triplets.npz") as tmp:
        np.savez(tmp, **merged)
    manifest = provenance({"teacher_set": seed}) | {"teacher": teacher.name, "count": count}
    atomic_write_json(out / "manifest.json", manifest)
    return out


def load_teacher_set(path: Path) -> TeacherSet:
    f = path / "triplets.npz"
    if not f.exists():
        raise CalibError(f"{path} is not a finished teacher set (no triplets.npz)")
    with np.load(f) as z:
        latents, labels, seeds = z["latents"], z["labels"], z["seeds"]
    images = np.stack([np.asarray(Image.open(path / "images" / f"{i:08d}.png").convert("RGB"))
                       for i in range(len(labels))])
    return TeacherSet(latents.astype(np.float32), labels.astype(np.int64), seeds, images)
