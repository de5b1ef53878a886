"""Weight cards are read by their fields (`trained_on`, `held_out`, `trained_on_tree`), never by their prose, and
a card's tree is recognised by the content hash of its train split, never by a folder name.

Checked field by field, against every card in the shared folder (whose `data_train_sha256` is the outside truth
for calib's hash of the JPEG tree), on a renamed copy of a tree, and on the cards `calib zoo train` writes.
"""

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from calib.cli import app
from calib.core import cards
from calib.core.cards import TRAINED_ON_ALL, TRAINED_ON_POOL, trained_on, weight_card, weights_trained_on
from calib.core.data import SPLIT, aa_validation, evaluation_split, final_test, indices_sha256, load_split
from calib.core.errors import CalibError
from calib.core.tree import train_sha256
from tests.conftest import shared_path

runner = CliRunner()
HELD_OUT = {"split": "validation", "validation_per_class": SPLIT.validation_per_class, "seed": SPLIT.seed}
# what each shared card says its model saw, read against the JPEG tree it was trained on
SHARED_ON_JPEG = {"repvgg_a0": TRAINED_ON_POOL, "vgg11_bn": TRAINED_ON_POOL, "mobilenetv2_x0_5": TRAINED_ON_POOL,
                  "resnet20": TRAINED_ON_ALL, "shufflenetv2_x2_0": TRAINED_ON_ALL}


def _pool(sha: str | None, held_out: dict | None = None, tree: str = "cifar/train") -> dict:
    """A card claiming the calibration pool of the tree whose train hash is `sha`."""
    return {"trained_on": TRAINED_ON_POOL, "held_out": HELD_OUT if held_out is None else held_out,
            "trained_on_tree": {"tree": tree} | ({"data_train_sha256": sha} if sha else {})}


def _rows_train_sha256(root: Path) -> str:
    """The train hash as a result row records it (`data_train_sha256`), not as cards.py computes it."""
    return load_split("train", root).provenance["content_sha256"]


def _weights_with_card(folder: Path, weights_dir: Path, card: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / next(weights_dir.glob("cifar10_tiny_cnn-*.pt")).name
    shutil.copyfile(weights_dir / copy.name, copy)
    if card is not None:
        copy.with_suffix(".json").write_text(json.dumps(card))
    return copy


# ---------------------------------------------------------------- field by field
CASES = {
    "no card": (lambda here, other: {}, TRAINED_ON_ALL, "no trained_on field"),
    "prose only": (lambda here, other: {"train_data": "cifar/train minus the validation split: the calibration "
                                                      "pool (validation_per_class=100, seed=0, held out)"},
                   TRAINED_ON_ALL, "no trained_on field"),
    "all_train": (lambda here, other: {"trained_on": "all_train", "trained_on_tree": {"data_train_sha256": here}},
                  TRAINED_ON_ALL, "all_train"),
    "pool of this tree": (lambda here, other: _pool(here), TRAINED_ON_POOL, "calibration_pool"),
    "another seed": (lambda here, other: _pool(here, HELD_OUT | {"seed": SPLIT.seed + 1}), TRAINED_ON_ALL,
                     "not the validation split"),
    "another count": (lambda here, other: _pool(here, HELD_OUT | {"validation_per_class": 7}), TRAINED_ON_ALL,
                      "not the validation split"),
    "no held_out": (lambda here, other: {k: v for k, v in _pool(here).items() if k != "held_out"},
                    TRAINED_ON_ALL, "not the validation split"),
    "no hash": (lambda here, other: _pool(None), TRAINED_ON_ALL, "no trained_on_tree.data_train_sha256"),
    "no tree": (lambda here, other: {k: v for k, v in _pool(here).items() if k != "trained_on_tree"},
                TRAINED_ON_ALL, "no trained_on_tree.data_train_sha256"),
    "another tree's hash": (lambda here, other: _pool(other), TRAINED_ON_ALL, "is not this tree"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_fields_decide_what_a_model_saw(case, cifar_dir, uneven_dir, monkeypatch):
    """Only a card claiming the pool, holding out `SPLIT`'s validation split, for this tree by its train hash,
    means the pool; the hash is computed only for such a claim."""
    make, expected, why = CASES[case]
    card = make(_rows_train_sha256(cifar_dir), _rows_train_sha256(uneven_dir))
    if card.get("trained_on") != TRAINED_ON_POOL:
        monkeypatch.setattr(cards, "train_sha256", lambda *a: pytest.fail("hash computed without a pool claim"))
    seen, reason = trained_on(card, cifar_dir)
    assert seen == expected and why in reason and "\n" not in reason


@pytest.mark.parametrize("value", ["calibration-pool", "validation", "", 1])
def test_an_unknown_trained_on_is_an_error_in_one_line(value, tmp_path, weights_dir, cifar_dir):
    with pytest.raises(CalibError, match="expected 'all_train' or 'calibration_pool'") as e:
        trained_on({"trained_on": value}, cifar_dir)
    assert "\n" not in str(e.value)
    weights = _weights_with_card(tmp_path / "w", weights_dir, {"trained_on": value})
    with pytest.raises(CalibError, match=re.escape(str(weights.with_suffix(".json")))):
        evaluation_split(cifar_dir, weights)


def test_no_card_and_unknown_weights_are_all_of_train(cifar_dir, tmp_path, weights_dir):
    assert weights_trained_on(None, cifar_dir)[0] == TRAINED_ON_ALL
    no_card = _weights_with_card(tmp_path / "w", weights_dir, None)
    assert not weight_card(no_card) and weights_trained_on(no_card, cifar_dir)[0] == TRAINED_ON_ALL


# ---------------------------------------------------------------- the shared cards
@pytest.fixture(scope="module")
def jpeg_sha256(tmp_path_factory) -> str:
    """calib's train hash of the shared JPEG tree, decoded once per module (50,000 images) into the tests' cache,
    where the tests' own reads find it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CALIB_HOME", str(tmp_path_factory.getbasetemp() / "calib_home"))
        return _rows_train_sha256(shared_path("data", "cifar10-jpeg"))


def test_the_shared_cards_name_the_jpeg_tree_by_calibs_hash(jpeg_sha256, official_dir):
    """Outside truth: every hash the shared cards give is the one calib computes for the JPEG tree."""
    given = {json.loads(c.read_text())["trained_on_tree"].get("data_train_sha256")
             for folder in (shared_path("weights"), official_dir) for c in folder.glob("cifar10_*.json")}
    assert given == {jpeg_sha256, None}  # the official cards name the original train set, which is not here
    assert train_sha256(shared_path("data", "cifar10-jpeg")) == jpeg_sha256


@pytest.mark.parametrize("tree", ["cifar10-jpeg", "cifar10-lossless"])
def test_the_shared_cards_decide_what_validates(tree, jpeg_sha256, official_dir):
    """The official weights saw all of train; of the weights trained here, repvgg_a0, vgg11_bn and
    mobilenetv2_x0_5 held out the validation split, and only of the JPEG tree they were trained on."""
    root = shared_path("data", tree)
    official = {c.stem: weights_trained_on(c.with_suffix(".pt"), root)[0] for c in official_dir.glob("cifar10_*.json")}
    assert len(official) == 5 and set(official.values()) == {TRAINED_ON_ALL}
    here = {c.stem.split("-")[0].removeprefix("cifar10_"): weights_trained_on(c.with_suffix(".pt"), root)[0]
            for c in shared_path("weights").glob("cifar10_*.json")}
    assert here == (SHARED_ON_JPEG if tree == "cifar10-jpeg" else dict.fromkeys(SHARED_ON_JPEG, TRAINED_ON_ALL))


# ---------------------------------------------------------------- a renamed tree
@pytest.fixture(scope="module")
def renamed(cifar_dir, tmp_path_factory) -> Path:
    """The tiny tree under another folder name, its files touched, so nothing but the content is the same."""
    copy = shutil.copytree(cifar_dir, tmp_path_factory.mktemp("moved") / "another-name")
    later = time.time() + 3600
    for f in copy.rglob("*.png"):
        os.utime(f, (later, later))
    return copy


@pytest.mark.parametrize("claim", ["pool", "all_train", "none"])
def test_a_renamed_tree_gets_the_same_answer_and_images(claim, cifar_dir, renamed, tmp_path, weights_dir):
    sha = _rows_train_sha256(cifar_dir)
    card = {"pool": _pool(sha, tree=f"{cifar_dir.name}/train"), "all_train": {"trained_on": TRAINED_ON_ALL},
            "none": None}[claim]
    weights = _weights_with_card(tmp_path / "w", weights_dir, card)
    assert _rows_train_sha256(renamed) == sha
    a, b = evaluation_split(cifar_dir, weights), evaluation_split(renamed, weights)
    assert a.trained_on == b.trained_on == (TRAINED_ON_POOL if claim == "pool" else TRAINED_ON_ALL)
    assert a.facts() == b.facts()
    for pick in (aa_validation, final_test):
        va, vb = pick(cifar_dir, weights), pick(renamed, weights)
        assert indices_sha256(va) == indices_sha256(vb) and np.array_equal(va.images, vb.images)


def test_a_card_naming_this_folder_for_another_tree_is_all_of_train(cifar_dir, uneven_dir):
    """The folder name on a card counts for nothing: the hash of another tree under this tree's name is not it."""
    card = _pool(_rows_train_sha256(uneven_dir), tree=f"{cifar_dir.name}/train")
    assert trained_on(card, cifar_dir)[0] == TRAINED_ON_ALL


# ---------------------------------------------------------------- the cards training writes
def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("hold_out", [True, False])
def test_cards_written_by_training_carry_the_fields_and_no_absolute_path(hold_out, cifar_dir, renamed, tmp_path):
    out = tmp_path / "run"
    flag = "--hold-out-validation" if hold_out else "--no-hold-out-validation"
    result = runner.invoke(app, ["zoo", "train", "--model", "tiny_cnn", "--epochs", "1", "--batch", "50",
                                 "--data-dir", str(cifar_dir), "--out", str(out), flag])
    assert result.exit_code == 0, result.output
    weights = next(out.glob("cifar10_tiny_cnn-*.pt"))
    card = weight_card(weights)
    expected = TRAINED_ON_POOL if hold_out else TRAINED_ON_ALL
    assert card["trained_on"] == expected and ("held_out" in card) == hold_out
    assert card.get("held_out", HELD_OUT) == HELD_OUT
    assert card["trained_on_tree"] == {"tree": f"{cifar_dir.name}/train",
                                       "data_train_sha256": _rows_train_sha256(cifar_dir)}
    assert card["test_data"] == f"{cifar_dir.name}/test"
    assert not [s for s in _strings(card) if s.startswith("/") or str(cifar_dir.parent) in s or str(tmp_path) in s]
    for root in (cifar_dir, renamed):
        assert weights_trained_on(weights, root)[0] == expected


@pytest.mark.parametrize("claim", ["pool", "all_train"])
def test_a_decided_evaluation_validates_on_the_images_the_card_allows(claim, cifar_dir, tmp_path, weights_dir):
    """What a study ships to its workers (`Evaluation.decided`, pickled) validates on the same images as the
    undecided one and as `aa_validation`: the validation split of train for a pool-trained model, the test slice
    for one trained on all of train; the final test images stay the same."""
    import pickle

    card = _pool(_rows_train_sha256(cifar_dir), tree=f"{cifar_dir.name}/train") if claim == "pool" else {
        "trained_on": TRAINED_ON_ALL}
    weights = _weights_with_card(tmp_path / "w", weights_dir, card)
    whole = evaluation_split(cifar_dir, weights)
    shipped = pickle.loads(pickle.dumps(whole.decided(validation=True)))
    expected = aa_validation(cifar_dir, weights)
    split = "train" if claim == "pool" else "test"
    for ev in (whole, shipped):
        assert np.array_equal(ev.validation_indices, expected.indices)
        assert np.array_equal(ev.validation.images, expected.images) and ev.validation.role == "validation"
        assert ev.validation.provenance["split"] == split
        assert np.array_equal(ev.test.images, final_test(cifar_dir, weights).images)
    assert shipped.facts() == whole.facts()
