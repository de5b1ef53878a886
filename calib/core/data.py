"""CIFAR-10 splits as uint8 arrays and torch datasets, with the zoo's normalization.

Two paths to the same data: torchvision's CIFAR10 download (the real path) or any image-folder tree
`<root>/{train,test}/<class>/*` (the local path, `--data-dir` or `CALIB_CIFAR10_DIR`); both are read as
arrays by `calib.core.tree`.

Science hygiene lives here: `train_splits` cuts the train split into a calibration pool and a validation
split that never overlap (one definition, `SPLIT`, for every user), every `LabeledImages` carries its `role`
and the tree it came from, and `heldout_hashes` gives the pixel hashes of the test and validation images, so
the quantize path can refuse them by content, whatever folder or file name they arrive under.

Validation must be images the model never saw: `evaluation_split` reads the weight card's fields
(`calib.core.cards.trained_on`) and, for a model that trained on all of train, validates on a seeded slice of
test (`TEST_SLICE`) and measures the final accuracy on the rest of test (`aa_validation`, `final_test`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from calib.core.cards import TRAINED_ON_POOL, weights_trained_on
from calib.core.errors import CalibError
from calib.core.paths import calib_home
from calib.core.runs import atomic_path
from calib.core.tree import (
    CLASSES,
    SPLIT,
    SplitConfig,
    content_sha256,
    folder_fingerprint,
    read_split,
    resolve_data_dir,
    torchvision_cache,
)
from calib.core.tree import IMAGE_SIZE as IMAGE_SIZE  # re-exported: the zoo's input size lives with the data

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)

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
    provenance: dict = field(default_factory=dict, repr=False)  # the tree it was read from; see `load_split`

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(to_model_input(self.images[i : i + 1])[0]), int(self.labels[i])

    def subset(self, idx: np.ndarray, role: str | None = None) -> LabeledImages:
        base = self.indices if self.indices is not None else np.arange(len(self))
        return LabeledImages(self.images[idx], self.labels[idx], role or self.role, self.source, base[idx],
                             self.provenance)


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


def _with_provenance(images: np.ndarray, labels: np.ndarray, split: str, kind: str, where: Path) -> LabeledImages:
    prov = {"data": kind, "data_root": str(where), "split": split, "images": int(len(labels)),
            "per_class": np.bincount(labels, minlength=len(CLASSES)).tolist(),
            "content_sha256": content_sha256(images, labels)}
    source = f"torchvision:{where}" if kind == "torchvision" else str(where / split)
    return LabeledImages(images, labels, split, source, provenance=prov)


def load_split(split: Split, data_dir: Path | None = None, download: bool = True) -> LabeledImages:
    """Decode a whole CIFAR-10 split into memory (cached as .npz; 50,000 images are 150 MB).

    Any number of images per class is accepted (a 4,000-image train split with 366-422 per class, say); the
    result's `provenance` names the tree, the per-class counts and a sha256 of the decoded pixels and labels.
    """
    images, labels, kind, where = read_split(split, data_dir, download)
    return _with_provenance(images, labels, split, kind, where)


def data_provenance(data_dir: Path | None = None) -> dict:
    """Which CIFAR-10 tree a run used: root, per-split image counts and pixel sha256, and the train cut.

    Flat keys (`data_root`, `data_train_sha256`, ...), ready to merge into a manifest or a result row.
    """
    out: dict = {}
    for split in ("train", "test"):
        prov = load_split(split, data_dir).provenance
        out |= {"data": prov["data"], "data_root": prov["data_root"], f"data_{split}_images": prov["images"],
                f"data_{split}_sha256": prov["content_sha256"]}
    out["data_split"] = f"validation_per_class={SPLIT.validation_per_class},seed={SPLIT.seed}"
    out["data_test_slice"] = f"fraction={TEST_SLICE.fraction},seed={TEST_SLICE.seed}"
    return out


@dataclass(frozen=True)
class SliceConfig:
    """The slice of test that validates accuracy-aware quantization of a model that saw all of train: about
    `fraction` of the test split, the same number from every class (round(fraction x images / classes)), drawn
    with `seed`. The final accuracy of such a model is measured on the rest of test."""

    fraction: float = 0.1
    seed: int = 0


TEST_SLICE = SliceConfig()  # the one slice of test that accuracy-aware validation may use


def cut_test_slice(labels: np.ndarray, cfg: SliceConfig = TEST_SLICE) -> dict[str, np.ndarray]:
    """Seeded, disjoint index sets of test: `validation` (class-balanced, see `SliceConfig`) and
    `final_test`, the rest."""
    per_class = max(1, round(cfg.fraction * len(labels) / len(CLASSES)))
    rng = np.random.default_rng(cfg.seed)
    val = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= per_class:
            raise CalibError(f"class {CLASSES[c]} has {len(idx)} test images; the validation slice of test takes "
                             f"{per_class} per class (TEST_SLICE: fraction={cfg.fraction}, seed={cfg.seed}) and "
                             "must leave some for the final accuracy")
        val.append(rng.permutation(idx)[:per_class])
    val_idx = np.sort(np.concatenate(val))
    return {"validation": val_idx, "final_test": np.setdiff1d(np.arange(len(labels)), val_idx)}


def train_split_indices(labels: np.ndarray, cfg: SplitConfig = SPLIT,
                        classes: tuple[str, ...] = CLASSES) -> dict[str, np.ndarray]:
    """Seeded, disjoint index sets of train: `validation` takes `validation_per_class` of every class (whatever
    its count), `calibration_pool` the rest; `classes` names label 0, 1, ... (CIFAR-10's by default)."""
    rng = np.random.default_rng(cfg.seed)
    pool, val = [], []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= cfg.validation_per_class:
            raise CalibError(f"class {classes[c]} has {len(idx)} train images; need > {cfg.validation_per_class} "
                             f"(the validation split takes {cfg.validation_per_class} per class)")
        idx = rng.permutation(idx)
        val.append(idx[: cfg.validation_per_class])
        pool.append(idx[cfg.validation_per_class :])
    return {"calibration_pool": np.sort(np.concatenate(pool)), "validation": np.sort(np.concatenate(val))}


def train_splits(data_dir: Path | None = None) -> dict[str, LabeledImages]:
    """The calibration pool and the validation split, both cut from train by `SPLIT`."""
    train = load_split("train", data_dir)
    parts = train_split_indices(train.labels, SPLIT)
    return {role: train.subset(idx, role=role) for role, idx in parts.items()}


def _indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, np.int64).tobytes()).hexdigest()


def indices_sha256(data: LabeledImages) -> str:
    """Which images these are: sha256 of their indices (int64, in order) into the split they were cut from
    (`provenance["split"]`: test for the final test and a test slice, train for the validation split)."""
    return _indices_sha256(data.indices if data.indices is not None else np.arange(len(data)))


@dataclass(frozen=True)
class Evaluation:
    """The images a model's INT8 study uses besides calibration, decided by what the model saw in training:

    - trained on the calibration pool (its card's fields hold out the validation split of `SPLIT` and name
      this tree by its train hash): accuracy-aware validation on the validation split of train, final
      accuracy on all of test;
    - trained on all of train (the official weights; a card without the fields, or for another tree or cut):
      validation on the `TEST_SLICE` of test, final accuracy on the rest of test, so the two never overlap.

    It holds indices, not images, so it is decided once (a study's driver) and read anywhere (its workers):
    `test` and `validation` load their images from the tree when first asked for.
    """

    trained_on: str  # calib.core.cards.TRAINED_ON_POOL or TRAINED_ON_ALL
    trained_on_reason: str
    validation_source: str  # "train_validation_split" or "test_slice"
    test_indices: np.ndarray = field(repr=False, compare=False)
    test_slice: np.ndarray | None = field(default=None, repr=False, compare=False)  # the test slice, if validated on
    data_dir: Path | None = None
    # the validation split of train, once decided (`decided`): a worker then never reads train's labels to cut it
    train_validation: np.ndarray | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def test(self) -> LabeledImages:
        """Role "test": every final accuracy of this model, FP32 and INT8 alike."""
        return load_split("test", self.data_dir).subset(self.test_indices, role="test")

    @functools.cached_property
    def validation_indices(self) -> np.ndarray:
        """Indices of the validation images into their split (train, or test for the slice)."""
        if self.test_slice is not None:
            return self.test_slice
        if self.train_validation is not None:
            return self.train_validation
        return train_split_indices(load_split("train", self.data_dir).labels, SPLIT)["validation"]

    @functools.cached_property
    def validation(self) -> LabeledImages:
        """Role "validation": what accuracy-aware quantization validates on (train is read only when needed)."""
        split = "test" if self.test_slice is not None else "train"
        whole = load_split(split, self.data_dir)
        validation = whole.subset(self.validation_indices, role="validation")
        validation.provenance = {**whole.provenance, "validation_source": self.validation_source}
        return validation

    @property
    def test_indices_sha256(self) -> str:
        """Which images test this model (`indices_sha256` of `test`, without reading them)."""
        return _indices_sha256(self.test_indices)

    def decided(self, validation: bool) -> Evaluation:
        """A copy that carries its validation indices already decided (`validation`) and no images: what a
        study ships to the process that runs the cell."""
        train_validation = None
        if validation and self.test_slice is None:
            train_validation = self.validation_indices  # decided here, once
        return Evaluation(self.trained_on, self.trained_on_reason, self.validation_source, self.test_indices,
                          self.test_slice, self.data_dir, train_validation)

    def facts(self, validation: bool = True) -> dict:
        """Flat keys for a result row: which images tested and why, and (`validation`) which validated."""
        out = {"model_trained_on": self.trained_on, "trained_on_reason": self.trained_on_reason,
               "test_images": len(self.test_indices), "test_indices_sha256": self.test_indices_sha256}
        if validation:
            cut = (f"SPLIT: validation_per_class={SPLIT.validation_per_class}, seed={SPLIT.seed}"
                   if self.validation_source == "train_validation_split"
                   else f"TEST_SLICE: fraction={TEST_SLICE.fraction}, seed={TEST_SLICE.seed}, class-balanced")
            out |= {"validation_source": self.validation_source, "validation_cut": cut,
                    "validation_role": "validation", "validation_images": len(self.validation_indices),
                    "validation_indices_sha256": _indices_sha256(self.validation_indices)}
        return out


def evaluation_split(data_dir: Path | None, weights: Path | None) -> Evaluation:
    """Validation and final-test images for a model with the weight file `weights` (None: not known, so all of
    train is assumed seen) on the configured tree; see `Evaluation`."""
    labels = load_split("test", data_dir).labels
    seen, reason = weights_trained_on(weights, data_dir)
    if seen == TRAINED_ON_POOL:
        return Evaluation(seen, reason, "train_validation_split", np.arange(len(labels)), None, data_dir)
    cut = cut_test_slice(labels)
    return Evaluation(seen, reason, "test_slice", cut["final_test"], cut["validation"], data_dir)


def aa_validation(data_dir: Path | None, weights: Path | None) -> LabeledImages:
    """The images accuracy-aware quantization validates on for a model with `weights` (role "validation"): the
    validation split of train where the model's card says it was held out, else the `TEST_SLICE` of test."""
    return evaluation_split(data_dir, weights).validation


def final_test(data_dir: Path | None, weights: Path | None) -> LabeledImages:
    """The images every final accuracy of a model with `weights` is measured on (role "test", indices into the
    test split): all of test, or, where validation takes the `TEST_SLICE`, the rest of test. FP32 baselines
    and INT8 models of the same weights use these same images."""
    return evaluation_split(data_dir, weights).test


def image_hashes(images: np.ndarray) -> np.ndarray:
    """One 64-bit BLAKE2b hash per uint8 image: equal pixels, equal hash, whatever the file or folder."""
    images = np.ascontiguousarray(images, np.uint8)
    return np.fromiter((int.from_bytes(hashlib.blake2b(img.tobytes(), digest_size=8).digest(), "little")
                        for img in images), np.uint64, len(images))


@dataclass(frozen=True)
class HeldOut:
    """Pixel hashes (sorted uint64) of the images calibration must never see, and the tree they came from."""

    test: np.ndarray
    validation: np.ndarray
    data_root: str


def _tree_key(data_dir: Path | None) -> tuple[str | None, Path]:
    """A cache key for the held-out hashes of the configured tree (None while the tree is not on disk), and
    that tree's root."""
    root = resolve_data_dir(data_dir)
    if root is None:
        where = torchvision_cache().resolve()
        batches = where / "cifar-10-batches-py"
        parts = ["torchvision", folder_fingerprint(batches)] if batches.is_dir() else None
    else:
        where = root.resolve()
        parts = ["folder", *(folder_fingerprint(root / s) for s in ("train", "test") if (root / s).is_dir())]
    if parts is None:
        return None, where
    parts += [str(where), str(SPLIT.validation_per_class), str(SPLIT.seed)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20], where


def heldout_hashes(data_dir: Path | None = None) -> HeldOut:
    """Pixel hashes of the test split and the validation split of the configured tree (option, then
    `CALIB_CIFAR10_DIR`, then torchvision's download); computed once per tree and cached under `CALIB_HOME`."""
    key, where = _tree_key(data_dir)
    cache_file = calib_home() / "heldout" / f"{key}.npz"
    if key is not None and cache_file.exists():
        with np.load(cache_file) as z:
            return HeldOut(z["test"], z["validation"], str(where))
    try:
        test = load_split("test", data_dir)
        validation = train_splits(data_dir)["validation"]
    except CalibError as e:
        raise CalibError(f"cannot check calibration images against the test and validation splits: {e}") from None
    held = HeldOut(np.sort(image_hashes(test.images)), np.sort(image_hashes(validation.images)), str(where))
    key, _ = _tree_key(data_dir)  # again: a download may just have created the tree
    if key is not None:
        cache_file = calib_home() / "heldout" / f"{key}.npz"
        with atomic_path(cache_file) as tmp:
            np.savez(tmp, test=held.test, validation=held.validation)
    return held


def require_role(data: LabeledImages, allowed: tuple[str, ...], purpose: str) -> None:
    """Refuse data from the wrong split: the test split is only ever for the final accuracy."""
    if data.role not in allowed:
        raise CalibError(f"{purpose} must come from {' or '.join(allowed)}, not the {data.role} split")
