"""Every registered source: deterministic per seed, balanced, and readable as a set."""

import hashlib

import numpy as np
import pytest
import torch

from calib.core.errors import CalibError
from calib.core.sets import read_set
from calib.core.sources import generate, generate_set, list_sources
from tests.conftest import save_weights

# Small options so that each source runs in seconds; a new source needs no entry here.
TINY = {
    "inversion": {"model": "tiny_cnn", "iterations": 5, "batch_size": 10},
    "fractal": {"variants": 2},
}


@pytest.fixture(scope="module")
def native_teacher(tmp_path_factory):
    from calib.distylegan.stylegan2 import CONFIGS, StyleGAN2Generator, save_native

    torch.manual_seed(0)
    return save_native(StyleGAN2Generator(CONFIGS["tiny"]).eval(), tmp_path_factory.mktemp("t") / "native.pt")


def options_for(source, native_teacher):
    opts = dict(TINY.get(source, {}))
    if source == "stylegan2-ada":
        opts["teacher"] = native_teacher
    if source == "inversion":
        opts["weights"] = None
    return opts


@pytest.mark.parametrize("source", list_sources())
def test_same_seed_same_bytes_other_seed_other_images(source, tmp_path, native_teacher):
    opts = options_for(source, native_teacher)
    a = generate_set(source, 2, 0, tmp_path / "a", **opts)
    b = generate_set(source, 2, 0, tmp_path / "b", **opts)
    c = generate_set(source, 2, 1, tmp_path / "c", **opts)
    files = lambda p: {f.relative_to(p).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()  # noqa: E731
                       for f in sorted(p.rglob("*.png"))}
    assert files(a) == files(b)
    assert set(files(a).values()) != set(files(c).values())
    cset = read_set(a)
    assert np.bincount(cset.labels, minlength=10).tolist() == [2] * 10
    assert cset.manifest["source"] == source and cset.manifest["seeds"] == {"set": 0}


def test_unknown_source_option_is_refused():
    with pytest.raises(CalibError, match="does not take"):
        generate("noise", 1, 0, iterations=3)


def test_cifar10_source_draws_from_the_calibration_pool_only(cifar_dir):
    from calib.core.data import SplitConfig, load_split, train_split_indices

    g = generate("cifar10", 5, 0)
    train = load_split("train", cifar_dir)
    val = set(train_split_indices(train.labels, SplitConfig())["validation"].tolist())
    assert g.role == "calibration_pool"
    assert not val & set(g.extra["train_indices"])


def test_synthetic_file_names_carry_the_image_seed():
    g = generate("noise", 1, 3)
    again = generate("noise", 1, 3)
    assert g.ids == again.ids and g.ids[0] == f"{3_000_000:010d}"


def test_registry_grows_without_other_edits(tmp_path):
    from calib.core.sources import _SOURCES, Generated, balanced_labels, register_source

    @register_source("constant-test")
    def constant(per_class: int, seed: int, value: int = 7) -> Generated:
        """A constant image per class (test only)."""
        labels = balanced_labels(per_class)
        return Generated(np.full((len(labels), 32, 32, 3), value, np.uint8), labels,
                         [f"{i:04d}" for i in range(len(labels))])

    try:
        assert "constant-test" in list_sources()
        assert len(read_set(generate_set("constant-test", 1, 0, tmp_path / "s"))) == 10
    finally:
        del _SOURCES["constant-test"]
    assert save_weights  # fixture helper stays importable for other tests
