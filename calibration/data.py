"""CIFAR-10 splits as uint8 arrays and torch datasets, with the zoo's normalization.

Two paths to the same data: torchvision's CIFAR10 download (the real path) or any image-folder tree
`<root>/{train,test}/<class>/*` (the local path, `--data-dir` or `CALIB_CIFAR10_DIR`).

Science hygiene lives here: `train_splits` cuts the train split into a calibration pool and a validation
split that never overlap, and every `LabeledImages` carries its `role`, so the quantize path can refuse
the test split where it does not belong.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from calibration.errors import CalibError
from calibration.paths import calib_home, env_path

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
IMAGE_SIZE = 32

Split = Literal["train", "test"]
Role = Literal["train", "calibration_pool", "validation", "test", "synthetic"]


@dataclass
class LabeledImages(torch.utils.data.Dataset):
    """uint8 HWC images with labels, a role (which split they come from) and the indices they came from."""

    images: np.ndarray
    labels: np.ndarray
    role: str
    source: str = ""
    indices: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(to_model_input(self.images[i : i + 1])[0]), int(self.labels[i])

    def subset(self, idx: np.ndarray, role: str | None = None) -> LabeledImages:
        base = self.indices if self.indices is not None else np.arange(len(self))
        return LabeledImages(self.images[idx], self.labels[idx], role or self.role, self.source, base[idx])


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW normalized: the one transform every engine receives."""
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def from_model_input(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_model_input` for tensors: normalized NCHW -> pixel values in [0, 1]."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return x * std + mean


def resolve_data_dir(data_dir: Path | None = None) -> Path | None:
    """The local image-folder root if one is configured; None means the torchvision download path."""
    root = data_dir or env_path("CALIB_CIFAR10_DIR")
    if root is not None and not (root / "train").is_dir():
        raise CalibError(f"CIFAR-10 folder {root} has no train/ sub-folder (expected <root>/{{train,test}}/<class>/*)")
    return root


def _read_image_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    if not folder.is_dir():
        raise CalibError(f"missing split folder {folder}")
    tree = ImageFolder(str(folder))
    if tuple(tree.classes) != CLASSES:
        raise CalibError(f"{folder}: class folders {tree.classes} are not CIFAR-10's {list(CLASSES)}")
    images = np.empty((len(tree.samples), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i, (path, _) in enumerate(tree.samples):
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        if arr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise CalibError(f"{path}: expected 32x32 RGB, got {arr.shape}")
        images[i] = arr
    return images, np.asarray(tree.targets, np.int64)


def _folder_fingerprint(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_split(split: Split, data_dir: Path | None = None, download: bool = True) -> LabeledImages:
    """Decode a whole CIFAR-10 split into memory (cached as .npz; 50,000 images are 150 MB)."""
    if split not in ("train", "test"):
        raise CalibError(f"unknown split {split!r} (train or test)")
    root = resolve_data_dir(data_dir)
    if root is None:
        from torchvision.datasets import CIFAR10

        cache = calib_home() / "cifar10"
        try:
            ds = CIFAR10(str(cache), train=split == "train", download=download)
        except RuntimeError as e:
            raise CalibError(f"CIFAR-10 not available in {cache}: {e}") from None
        return LabeledImages(ds.data, np.asarray(ds.targets, np.int64), split, f"torchvision:{cache}")
    folder = root / split
    cache_file = calib_home() / "decoded" / f"{split}-{_folder_fingerprint(folder)}.npz"
    if cache_file.exists():
        with np.load(cache_file) as z:
            images, labels = z["images"], z["labels"]
    else:
        images, labels = _read_image_folder(folder)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cache_file)
    return LabeledImages(images, labels, split, str(folder.resolve()))


@dataclass(frozen=True)
class SplitConfig:
    """How train is cut: `validation_per_class` images per class for accuracy-aware validation."""

    validation_per_class: int = 100
    seed: int = 0


def train_split_indices(labels: np.ndarray, cfg: SplitConfig = SplitConfig()) -> dict[str, np.ndarray]:
    """Class-balanced, seeded, disjoint index sets of train: `calibration_pool` and `validation`."""
    rng = np.random.default_rng(cfg.seed)
    pool, val = [], []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= cfg.validation_per_class:
            raise CalibError(f"class {CLASSES[c]} has {len(idx)} train images; need > {cfg.validation_per_class}")
        idx = rng.permutation(idx)
        val.append(idx[: cfg.validation_per_class])
        pool.append(idx[cfg.validation_per_class :])
    return {"calibration_pool": np.sort(np.concatenate(pool)), "validation": np.sort(np.concatenate(val))}


def train_splits(data_dir: Path | None = None, cfg: SplitConfig = SplitConfig()) -> dict[str, LabeledImages]:
    """The calibration pool and the validation split, both cut from train."""
    train = load_split("train", data_dir)
    parts = train_split_indices(train.labels, cfg)
    return {role: train.subset(idx, role=role) for role, idx in parts.items()}


def require_role(data: LabeledImages, allowed: tuple[str, ...], purpose: str) -> None:
    """Refuse data from the wrong split: the test split is only ever for the final accuracy."""
    if data.role not in allowed:
        raise CalibError(f"{purpose} must come from {' or '.join(allowed)}, not the {data.role} split")
