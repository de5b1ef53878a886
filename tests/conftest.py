"""Shared fixtures: tiny CIFAR-10-shaped image-folder trees (even and uneven class counts), a weights folder, an
isolated cache, and the shared folder's official weights and lossless CIFAR-10 subset."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from calib.core.data import CLASSES

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(__import__("os").environ.get("CALIB_SHARED", REPO.parent / "shared"))
TRAIN_PER_CLASS, TEST_PER_CLASS = 110, 8
# uneven class counts, as in the shared lossless subset (366-422 train, 86-112 test per class), but tiny
UNEVEN_TRAIN = (104, 101, 117, 109, 125, 102, 113, 108, 121, 111)
UNEVEN_TEST = (5, 3, 9, 4, 12, 6, 7, 3, 10, 8)
REAL_DOWNLOAD = torch.hub.download_url_to_file  # the real function, for tests that serve file:// URLs


def write_tree(root: Path, per_class: dict[str, int | Sequence[int]], seed: int = 0, noise: int = 60,
               step: int = 20) -> Path:
    """Class-dependent colour blobs so that even a tiny model can learn something from them; a split's count is
    one number for every class or one number per class. Class c adds `step * c` grey levels to channel c % 3 of
    noise below `noise`: a small step under heavy noise makes classes a tiny model learns only in part."""
    rng = np.random.default_rng(seed)
    for split, counts in per_class.items():
        counts = [counts] * len(CLASSES) if isinstance(counts, int) else list(counts)
        for c, (name, n) in enumerate(zip(CLASSES, counts, strict=True)):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, noise, (32, 32, 3), dtype=np.uint8)
                img[..., c % 3] += np.uint8(step * c)
                Image.fromarray(img).save(root / split / name / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("cifar"), {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS})


@pytest.fixture(scope="session")
def uneven_dir(tmp_path_factory) -> Path:
    """A tree whose classes have different counts in both splits (seed 1: no image shared with `cifar_dir`)."""
    return write_tree(tmp_path_factory.mktemp("uneven"), {"train": UNEVEN_TRAIN, "test": UNEVEN_TEST}, seed=1)


@pytest.fixture
def fake_torchvision(monkeypatch, cifar_dir):
    """The torchvision path without the network: no CALIB_CIFAR10_DIR, and torchvision's CIFAR10 serves the tiny
    tree's arrays (as uint8 HWC `data` and a `targets` list, like the real class)."""
    from calib.core.data import load_split

    arrays = {split: load_split(split, cifar_dir) for split in ("train", "test")}

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False, **kwargs):
            split = arrays["train" if train else "test"]
            self.data, self.targets = split.images.copy(), split.labels.tolist()

    monkeypatch.setattr("torchvision.datasets.CIFAR10", FakeCIFAR10)
    monkeypatch.delenv("CALIB_CIFAR10_DIR")
    return arrays


def save_weights(model_name: str, folder: Path, seed: int = 0) -> Path:
    from calib.core.zoo import create_model

    torch.manual_seed(seed)
    model = create_model(model_name)
    tmp = folder / "tmp.pt"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    return tmp.rename(folder / f"cifar10_{model_name}-{digest}.pt")


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    for name in ("tiny_cnn", "tiny_repvgg"):
        save_weights(name, folder)
    return folder


def use_test_data(monkeypatch: pytest.MonkeyPatch, tmp_path_factory, cifar_dir: Path, weights_dir: Path) -> None:
    """The tiny tree and weights and a private cache, through the same variables users set."""
    monkeypatch.setenv("CALIB_HOME", str(tmp_path_factory.getbasetemp() / "calib_home"))
    monkeypatch.setenv("CALIB_CIFAR10_DIR", str(cifar_dir))
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(weights_dir))


TEST_PROBE_PER_CLASS = 2  # the label-free estimate's probe in tests: 20 images, not 500 (as test grids set it)


def small_probe(monkeypatch) -> None:
    """`calib quantize`'s probe (`calib.core.drop`) at `TEST_PROBE_PER_CLASS`: tiny images, as everywhere here."""
    from calib.core import drop

    images, measure = drop.probe_images, drop.measure
    monkeypatch.setattr(drop, "probe_images", lambda seed, make=None, per_class=TEST_PROBE_PER_CLASS:
                        images(seed, make, per_class))
    monkeypatch.setattr(drop, "measure", lambda f, i, x, seed, per_class=TEST_PROBE_PER_CLASS:
                        measure(f, i, x, seed, per_class))


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path_factory, cifar_dir, weights_dir):
    """Every test sees the tiny tree and weights, a private cache and a small probe; no test touches the
    network."""
    use_test_data(monkeypatch, tmp_path_factory, cifar_dir, weights_dir)
    monkeypatch.delenv("CALIB_STYLEGAN2_PKL", raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("network disabled in tests")))
    small_probe(monkeypatch)


def reference_file() -> Path:
    path = SHARED / "reference" / "cifar10_zoo_state_dicts.json"
    if not path.exists():
        pytest.fail(f"reference facts missing at {path}; set CALIB_SHARED to the shared folder")
    return path


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"{path} is missing; set CALIB_SHARED to the shared folder")
    return path


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """The five official release files (byte for byte) with their cards."""
    return shared_path("weights-official")


@pytest.fixture(scope="session")
def lossless_dir() -> Path:
    """CIFAR-10 train 0-3999 and test 0-999 as lossless PNG, uneven class counts."""
    return shared_path("data", "cifar10-lossless")
