import inspect
import shutil

import numpy as np
import pytest

from calib.core.data import (
    CLASSES,
    SPLIT,
    LabeledImages,
    SplitConfig,
    data_provenance,
    load_split,
    require_role,
    to_model_input,
    train_split_indices,
    train_splits,
)
from calib.core.errors import CalibError
from tests.conftest import TEST_PER_CLASS, TRAIN_PER_CLASS, UNEVEN_TEST, UNEVEN_TRAIN, write_tree

# per-class counts of the shared lossless subset, as its README states them
LOSSLESS_TRAIN = dict(airplane=396, automobile=366, bird=420, cat=384, deer=422, dog=393, frog=414, horse=385,
                      ship=407, truck=413)
LOSSLESS_TEST = dict(airplane=103, automobile=89, bird=100, cat=103, deer=90, dog=86, frog=112, horse=102, ship=106,
                     truck=109)


def test_splits_are_disjoint_balanced_and_separate_from_test(cifar_dir):
    parts = train_splits(cifar_dir)
    pool, val = parts["calibration_pool"], parts["validation"]
    assert not set(pool.indices) & set(val.indices)
    assert len(pool) + len(val) == 10 * TRAIN_PER_CLASS
    assert np.bincount(val.labels).tolist() == [SPLIT.validation_per_class] * 10
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

    from calib.core.data import MEAN, STD

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


def _check_cut(train, parts, counts):
    pool, val = parts["calibration_pool"], parts["validation"]
    assert not set(pool.indices.tolist()) & set(val.indices.tolist())
    assert sorted([*pool.indices.tolist(), *val.indices.tolist()]) == list(range(len(train)))
    assert np.bincount(val.labels, minlength=10).tolist() == [SPLIT.validation_per_class] * 10
    assert np.bincount(pool.labels, minlength=10).tolist() == [n - SPLIT.validation_per_class for n in counts]
    # by content too: no validation image is a pool image
    assert not {i.tobytes() for i in pool.images} & {i.tobytes() for i in val.images}


def test_uneven_class_counts_split_disjointly(uneven_dir):
    train, test = load_split("train", uneven_dir), load_split("test", uneven_dir)
    assert np.bincount(train.labels).tolist() == list(UNEVEN_TRAIN)
    assert np.bincount(test.labels).tolist() == list(UNEVEN_TEST)
    assert train.provenance["per_class"] == list(UNEVEN_TRAIN) and test.provenance["images"] == sum(UNEVEN_TEST)
    _check_cut(train, train_splits(uneven_dir), UNEVEN_TRAIN)
    assert not {i.tobytes() for i in train.images} & {i.tobytes() for i in test.images}


def test_the_lossless_subset_loads_with_its_uneven_counts(lossless_dir):
    """4,000 train and 1,000 test images with the README's per-class counts; the cut stays disjoint."""
    train, test = load_split("train", lossless_dir), load_split("test", lossless_dir)
    assert len(train) == 4000 and len(test) == 1000
    assert dict(zip(CLASSES, np.bincount(train.labels).tolist())) == LOSSLESS_TRAIN
    assert dict(zip(CLASSES, np.bincount(test.labels).tolist())) == LOSSLESS_TEST
    _check_cut(train, train_splits(lossless_dir), list(LOSSLESS_TRAIN.values()))


def test_too_few_images_for_the_validation_cut_is_a_clear_error(tmp_path):
    root = write_tree(tmp_path / "small", {"train": [120] * 9 + [SPLIT.validation_per_class]})
    with pytest.raises(CalibError, match="class truck has 100 train images"):
        train_splits(root)


def test_one_split_definition_for_the_source_and_validation(cifar_dir):
    """The cifar10 source cannot move the cut: with an option to, its pool overlapped the validation split that
    accuracy-aware quantization always takes."""
    from calib.core.sources import generate, source_info

    assert "validation_per_class" not in source_info("cifar10").options
    with pytest.raises(CalibError, match="does not take"):
        generate("cifar10", 2, 0, validation_per_class=1)
    assert list(inspect.signature(train_splits).parameters) == ["data_dir"]
    g = generate("cifar10", TRAIN_PER_CLASS - SPLIT.validation_per_class, 0)  # the whole pool
    val = train_splits(cifar_dir)["validation"]
    assert not {i.tobytes() for i in g.images} & {i.tobytes() for i in val.images}
    assert g.extra["train_split"] == {"validation_per_class": SPLIT.validation_per_class, "seed": SPLIT.seed}


def test_provenance_names_the_tree_and_its_content(cifar_dir, tmp_path):
    prov = data_provenance(cifar_dir)
    assert prov["data"] == "folder" and prov["data_root"] == str(cifar_dir.resolve())
    assert prov["data_train_images"] == 10 * TRAIN_PER_CLASS and prov["data_test_images"] == 10 * TEST_PER_CLASS
    copy = shutil.copytree(cifar_dir, tmp_path / "copy")
    again = data_provenance(copy)
    assert again["data_train_sha256"] == prov["data_train_sha256"] and again["data_root"] != prov["data_root"]
    from PIL import Image

    first = sorted((copy / "test" / "cat").glob("*.png"))[0]
    img = np.asarray(Image.open(first)).copy()
    img[0, 0, 0] ^= 1
    Image.fromarray(img).save(first)
    changed = data_provenance(copy)
    assert changed["data_test_sha256"] != prov["data_test_sha256"]
    assert changed["data_train_sha256"] == prov["data_train_sha256"]


def test_torchvision_path_records_its_provenance(fake_torchvision):
    test = load_split("test")
    assert test.provenance["data"] == "torchvision" and test.source.startswith("torchvision:")
    assert test.provenance["images"] == 10 * TEST_PER_CLASS


def test_torchvision_path_without_network_is_one_clear_error(monkeypatch):
    """No tree configured, nothing cached, no network: one line that says what to set."""
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("CALIB_CIFAR10_DIR")
    monkeypatch.setattr("torchvision.datasets.CIFAR10.download", offline)
    with pytest.raises(CalibError, match="CIFAR-10 not available .*URLError.*CALIB_CIFAR10_DIR") as e:
        load_split("test")
    assert "\n" not in str(e.value)
