"""A CIFAR-10 tree as uint8 arrays, without torch at import: the image-folder and torchvision paths, the cache of
decoded arrays, the content hash that names a tree whatever its folder is called, and the one cut of train.

It sits below `calib.core.data` (which wraps these arrays as datasets) and `calib.core.cards` (which compares a
card's tree with the tree in use), so neither has to import the other.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib.core.errors import CalibError
from calib.core.paths import calib_home, env_path
from calib.core.runs import atomic_path

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SIZE = 32


@dataclass(frozen=True)
class SplitConfig:
    """How train is cut: `validation_per_class` images per class for accuracy-aware validation."""

    validation_per_class: int = 100
    seed: int = 0


SPLIT = SplitConfig()  # the one cut of train that the cifar10 source, validation and the guard all use


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


def folder_fingerprint(folder: Path) -> str:
    """Cheap identity of a folder tree (names, sizes, mtimes), for cache keys; one stat per file."""
    entries: list[tuple[tuple[str, ...], int, int]] = []

    def walk(d: Path, rel: tuple[str, ...]) -> None:
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir():
                    walk(Path(e.path), (*rel, e.name))
                elif e.is_file():
                    st = e.stat()
                    entries.append(((*rel, e.name), st.st_size, st.st_mtime_ns))

    walk(folder, ())
    h = hashlib.sha256()
    for parts, size, mtime in sorted(entries):
        h.update(f"{'/'.join(parts)}:{size}:{mtime}\n".encode())
    return h.hexdigest()[:16]


def torchvision_cache() -> Path:
    return calib_home() / "cifar10"


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """The hash of decoded pixels and labels: what a row's `data_<split>_sha256` records."""
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, np.int64).tobytes())
    return h.hexdigest()


def read_split(split: str, data_dir: Path | None = None, download: bool = True
               ) -> tuple[np.ndarray, np.ndarray, str, Path]:
    """A whole split decoded (cached as .npz; 50,000 images are 150 MB): images, labels, "folder" or
    "torchvision", and the root it came from."""
    if split not in ("train", "test"):
        raise CalibError(f"unknown split {split!r} (train or test)")
    root = resolve_data_dir(data_dir)
    if root is None:
        from torchvision.datasets import CIFAR10

        cache = torchvision_cache()
        try:
            ds = CIFAR10(str(cache), train=split == "train", download=download)
        except (RuntimeError, OSError) as e:  # missing without download, or no network
            msg = " ".join(str(e).split())
            raise CalibError(f"CIFAR-10 not available in {cache} ({type(e).__name__}: {msg}); set --data-dir or "
                             "CALIB_CIFAR10_DIR to a local tree") from None
        return np.asarray(ds.data, np.uint8), np.asarray(ds.targets, np.int64), "torchvision", cache.resolve()
    folder = root / split
    if not folder.is_dir():
        raise CalibError(f"missing split folder {folder}")
    cache_file = calib_home() / "decoded" / f"{split}-{folder_fingerprint(folder)}.npz"
    if cache_file.exists():
        with np.load(cache_file) as z:
            images, labels = z["images"], z["labels"]
    else:
        images, labels = _read_image_folder(folder)
        with atomic_path(cache_file) as tmp:
            np.savez(tmp, images=images, labels=labels)
    return images, labels, "folder", root.resolve()


@functools.lru_cache(maxsize=8)
def _train_sha256(fingerprint: str, where: str, data_dir: Path | None) -> str:
    images, labels, _, _ = read_split("train", data_dir)
    return content_sha256(images, labels)


def train_sha256(data_dir: Path | None = None) -> str:
    """The tree's `data_train_sha256` as rows record it: a hash of the train split's content, so a moved or
    renamed copy has the same one. Decoding 50,000 images is slow, so it is computed once per tree and process
    (the key is the train folder's fingerprint, which changes with any file)."""
    root = resolve_data_dir(data_dir)
    folder = torchvision_cache() / "cifar-10-batches-py" if root is None else root / "train"
    if not folder.is_dir():  # torchvision's download is not there yet: nothing to key a cache on
        return content_sha256(*read_split("train", data_dir)[:2])
    return _train_sha256(folder_fingerprint(folder), str(folder.resolve()), data_dir)
