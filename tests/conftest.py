"""Shared fixtures: a tiny CIFAR-10-shaped image-folder tree, a weights folder and an isolated cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from calibration.data import CLASSES

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(__import__("os").environ.get("CALIB_SHARED", REPO.parent / "shared"))
TRAIN_PER_CLASS, TEST_PER_CLASS = 110, 8


def write_tree(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """Class-dependent colour blobs so that even a tiny model can learn something from them."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
                img[..., c % 3] += np.uint8(20 * c)
                Image.fromarray(img).save(root / split / name / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("cifar"), {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS})


def save_weights(model_name: str, folder: Path, seed: int = 0) -> Path:
    from calibration.zoo import create_model

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


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path_factory, cifar_dir, weights_dir):
    """Every test sees the tiny tree and weights, and a private cache; no test touches the network."""
    monkeypatch.setenv("CALIB_HOME", str(tmp_path_factory.getbasetemp() / "calib_home"))
    monkeypatch.setenv("CALIB_CIFAR10_DIR", str(cifar_dir))
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.delenv("CALIB_STYLEGAN2_PKL", raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("network disabled in tests")))


def reference_file() -> Path:
    path = SHARED / "reference" / "cifar10_zoo_state_dicts.json"
    if not path.exists():
        pytest.fail(f"reference facts missing at {path}; set CALIB_SHARED to the shared folder")
    return path
