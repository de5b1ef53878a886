import numpy as np
import pytest

from calibration.data import (
    CLASSES,
    LabeledImages,
    SplitConfig,
    load_split,
    require_role,
    to_model_input,
    train_split_indices,
    train_splits,
)
from calibration.errors import CalibError
from tests.conftest import TEST_PER_CLASS, TRAIN_PER_CLASS, write_tree


def test_splits_are_disjoint_balanced_and_separate_from_test(cifar_dir):
    parts = train_splits(cifar_dir, SplitConfig(validation_per_class=10))
    pool, val = parts["calibration_pool"], parts["validation"]
    assert not set(pool.indices) & set(val.indices)
    assert len(pool) + len(val) == 10 * TRAIN_PER_CLASS
    assert np.bincount(val.labels).tolist() == [10] * 10
    assert (pool.role, val.role) == ("calibration_pool", "validation")
    test = load_split("test", cifar_dir)
    assert test.role == "test" and len(test) == 10 * TEST_PER_CLASS
    # the test split is a different folder: no train image (by content) appears in it
    train_bytes = {img.tobytes() for img in load_split("train", cifar_dir).images}
    assert not any(img.tobytes() in train_bytes for img in test.images)


def test_split_indices_are_seeded():
    labels = np.repeat(np.arange(10), 50)
    a = train_split_indices(labels, SplitConfig(5, seed=1))
    b = train_split_indices(labels, SplitConfig(5, seed=1))
    c = train_split_indices(labels, SplitConfig(5, seed=2))
    assert np.array_equal(a["validation"], b["validation"])
    assert not np.array_equal(a["validation"], c["validation"])


def test_class_order_is_checked(tmp_path):
    root = write_tree(tmp_path / "c", {"train": 1})
    (root / "train" / "airplane").rename(root / "train" / "zebra")
    with pytest.raises(CalibError, match="not CIFAR-10"):
        load_split("train", root)


def test_missing_tree_is_a_clear_error(tmp_path):
    with pytest.raises(CalibError, match="no train"):
        load_split("train", tmp_path)


def test_require_role_refuses_the_test_split():
    data = LabeledImages(np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, np.int64), "test")
    with pytest.raises(CalibError, match="test split"):
        require_role(data, ("validation",), "validation data")


def test_normalization_matches_torchvision():
    import torch
    from torchvision.transforms import v2

    from calibration.data import MEAN, STD

    img = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    tv = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    expected = torch.stack([tv(i) for i in img]).numpy()
    np.testing.assert_allclose(to_model_input(img), expected, atol=1e-6)
    assert len(CLASSES) == 10


def test_splits_are_torch_datasets(cifar_dir):
    import torch

    loader = torch.utils.data.DataLoader(load_split("test", cifar_dir), batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
    assert torch.allclose(x, torch.from_numpy(to_model_input(load_split("test", cifar_dir).images[:4])))
