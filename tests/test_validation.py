"""Accuracy-aware validation on images the model never saw, and final accuracy on images that never validated.

What a model saw comes from its weight card's fields (`calib.core.cards`, tested in test_cards.py); a model that
saw all of train validates on the seeded slice of test (`TEST_SLICE`) and is tested on the rest. Checked by
index and by pixel content, and against `nncf.quantize_with_accuracy_control` called directly in another process.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calib.core.cards import TRAINED_ON_ALL, TRAINED_ON_POOL
from calib.core.data import (
    TEST_SLICE,
    SliceConfig,
    aa_validation,
    cut_test_slice,
    evaluation_split,
    final_test,
    image_hashes,
    indices_sha256,
    load_split,
    to_model_input,
    train_splits,
)
from calib.core.errors import CalibError
from calib.core.evaluate import evaluate
from calib.core.pipeline import run_quantize
from calib.core.quantize import calibration_items, select_calibration
from calib.core.sets import check_calibration_set, read_set, write_set
from calib.core.sources import generate_set
from calib.core.spec import QuantizeSpec
from tests.conftest import REPO, write_tree
from tests.test_engines import train_tiny


def _card(folder: Path, weights: Path, card: dict | None) -> Path:
    """A copy of `weights` in `folder` (same name, so its hash still matches) with `card` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / weights.name
    shutil.copyfile(weights, copy)
    if card is not None:
        copy.with_suffix(".json").write_text(json.dumps(card))
    return copy


def _pool_card(tree: Path) -> dict:
    """The fields `calib zoo train` writes for a model trained on the calibration pool of `tree`."""
    from calib.core.train import card_fields

    return card_fields(train_splits(tree)["calibration_pool"])


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory, cifar_dir):
    return train_tiny(cifar_dir, tmp_path_factory.mktemp("trained"))


def _pixels(images: np.ndarray) -> set[int]:
    return set(image_hashes(images).tolist())


# ---------------------------------------------------------------- the slice of test
def test_the_test_slice_is_seeded_class_balanced_and_leaves_the_rest_for_testing():
    labels = np.repeat(np.arange(10), [103, 89, 100, 103, 90, 86, 112, 102, 106, 109])  # the lossless counts
    a, b = cut_test_slice(labels), cut_test_slice(labels)
    assert np.array_equal(a["validation"], b["validation"]) and TEST_SLICE == SliceConfig(0.1, 0)
    assert np.bincount(labels[a["validation"]]).tolist() == [10] * 10  # 10 % of 1,000, the same per class
    assert not set(a["validation"]) & set(a["final_test"])
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(len(labels)))
    assert not np.array_equal(a["validation"], cut_test_slice(labels, SliceConfig(0.1, 1))["validation"])
    with pytest.raises(CalibError, match="must leave some for the final accuracy"):
        cut_test_slice(np.repeat(np.arange(10), [20] * 9 + [1]), SliceConfig(0.5, 0))


@pytest.mark.parametrize("tree", ["cifar_dir", "uneven_dir"])
def test_a_model_that_saw_all_of_train_validates_on_test_images_never_tested(tree, request, weights_dir):
    """No card (all of train assumed): validation is the slice of test, disjoint from the final test by index
    and by pixels, and from every train image by pixels; the two together are the whole test split."""
    root = request.getfixturevalue(tree)
    weights = next(weights_dir.glob("cifar10_tiny_cnn-*.pt"))
    split = evaluation_split(root, weights)
    val, test, whole = split.validation, split.test, load_split("test", root)
    assert (val.role, test.role, split.validation_source, split.trained_on) == \
        ("validation", "test", "test_slice", TRAINED_ON_ALL)
    assert not set(val.indices) & set(test.indices)
    assert np.array_equal(np.sort(np.concatenate([val.indices, test.indices])), np.arange(len(whole)))
    assert np.array_equal(val.images, whole.images[val.indices]) and np.array_equal(test.labels,
                                                                                     whole.labels[test.indices])
    assert not _pixels(val.images) & _pixels(test.images)
    assert not _pixels(val.images) & _pixels(load_split("train", root).images)  # the model saw all of train
    assert len(set(np.bincount(val.labels, minlength=10).tolist())) == 1  # class-balanced
    facts = split.facts()
    assert facts["validation_indices_sha256"] == indices_sha256(val) != facts["test_indices_sha256"]
    assert facts["test_images"] == len(test) == len(whole) - len(val)
    assert indices_sha256(aa_validation(root, weights)) == indices_sha256(val)
    assert indices_sha256(final_test(root, weights)) == indices_sha256(test)


def test_a_model_that_held_out_the_validation_split_validates_there_and_tests_on_all_of_test(cifar_dir, tmp_path,
                                                                                            weights_dir):
    pool = train_splits(cifar_dir)["calibration_pool"]
    weights = _card(tmp_path / "w", next(weights_dir.glob("cifar10_tiny_cnn-*.pt")), _pool_card(cifar_dir))
    split = evaluation_split(cifar_dir, weights)
    val, test = split.validation, split.test
    assert (split.trained_on, split.validation_source, val.role) == (TRAINED_ON_POOL, "train_validation_split",
                                                                     "validation")
    assert np.array_equal(val.indices, train_splits(cifar_dir)["validation"].indices)
    assert not set(val.indices) & set(pool.indices) and not _pixels(val.images) & _pixels(pool.images)
    assert len(test) == len(load_split("test", cifar_dir)) and not _pixels(val.images) & _pixels(test.images)


def test_calibration_from_the_test_slice_is_refused_by_content(tmp_path, cifar_dir):
    """Images of the validation slice of test, in a set that claims to be train: refused by pixels."""
    val = aa_validation(cifar_dir, None)
    cset = write_set(tmp_path / "s", val.images, val.labels, [f"{i:04d}" for i in range(len(val))], "copy", {},
                     role="train")
    with pytest.raises(CalibError, match="test-split images"):
        check_calibration_set(read_set(cset, allow_unbalanced=True), cifar_dir)


# ---------------------------------------------------------------- accuracy-aware quantization end to end
def _hashes(arrays) -> set[str]:
    import hashlib

    return {hashlib.sha256(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest() for a in arrays}


@pytest.mark.slow
@pytest.mark.parametrize("card", ["none", "pool"])
def test_accuracy_aware_validates_only_on_images_the_model_never_saw(tmp_path, cifar_dir, trained_tiny,
                                                                     monkeypatch, card):
    """What NNCF's validation function actually saw: the test slice for weights without a card, the validation
    split for weights whose card held it out; never a calibration image; the final accuracy on `final_test`;
    the ranking subset explicit (all validation images) and recorded."""
    import nncf

    weights = trained_tiny if card == "none" else _card(tmp_path / "w", trained_tiny, _pool_card(cifar_dir))
    calib = generate_set("cifar10", 3, 0, tmp_path / "set", data_dir=cifar_dir)
    seen, calib_fed, kwargs = set(), set(), {}
    real = nncf.quantize_with_accuracy_control

    def spy(model, calibration_dataset, validation_dataset, validation_fn, **kw):
        calib_fed.update(_hashes(calibration_dataset.get_inference_data()))
        kwargs.update(kw)

        def watched(compiled, items):
            items = list(items)
            seen.update(_hashes(x for x, _ in items))
            return validation_fn(compiled, items)

        return real(model, calibration_dataset, validation_dataset, watched, **kw)

    monkeypatch.setattr(nncf, "quantize_with_accuracy_control", spy)
    row = run_quantize(QuantizeSpec(model="tiny_cnn", calib=calib, algo="accuracy-aware", max_drop=0.0,
                                       weights=weights, data_dir=cifar_dir), tmp_path / "aa", test=True,
                       record_path=tmp_path / "r.jsonl")
    validation, test = aa_validation(cifar_dir, weights), final_test(cifar_dir, weights)
    assert seen == _hashes(x[None] for x in to_model_input(validation.images)) and not seen & calib_fed
    assert row["validation_source"] == ("test_slice" if card == "none" else "train_validation_split")
    assert row["validation_indices_sha256"] == indices_sha256(validation)
    assert (row["test_images"], row["test_indices_sha256"]) == (len(test), indices_sha256(test))
    assert len(test) == len(load_split("test", cifar_dir)) - (len(validation) if card == "none" else 0)
    ranking = kwargs["advanced_accuracy_restorer_parameters"].ranking_subset_size
    assert ranking == len(validation) == row["ranking_subset_images"] == row["validation_images"]
    assert row["validation_role"] == "validation"
    assert row["aa_fp32_validation_accuracy"] == row["aa_nncf_initial_metric"]


def _spread_channel(weights: Path, folder: Path, scale: float = 1000.0) -> Path:
    """The same function with one activation channel `scale` times wider: BatchNorm 1 scales channel 0 up,
    conv 2 scales its input down (ReLU and max-pooling commute with a positive scale). NNCF quantizes conv 2's
    input per tensor on 256 levels, so the other channels fall below one step and INT8 loses accuracy from the
    8-bit grid itself, on any instruction set; keeping conv 2 in FP32 restores it."""
    import torch

    sd = torch.load(weights, weights_only=True)
    sd["features.1.weight"][0] *= scale
    sd["features.1.bias"][0] *= scale
    sd["features.4.weight"][:, 0] /= scale
    tmp = folder / "spread.pt"
    torch.save(sd, tmp)
    return tmp.rename(folder / f"cifar10_tiny_cnn-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pt")


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    """calib's accuracy-aware run (max drop 0) of a tiny model that saw all of its train split and has one
    activation channel 1000 times wider than the rest, so NNCF keeps a layer in FP32 on every CPU."""
    base = tmp_path_factory.mktemp("restored")
    tree = write_tree(base / "tree", {"train": 110, "test": 30}, seed=3)
    weights = _spread_channel(train_tiny(tree, base), base)
    calib = generate_set("cifar10", 3, 0, base / "set", data_dir=tree)
    row = run_quantize(QuantizeSpec(model="tiny_cnn", calib=calib, algo="accuracy-aware", max_drop=0.0,
                                       weights=weights, data_dir=tree), base / "aa", record_path=base / "r.jsonl")
    return {"base": base, "tree": tree, "weights": weights, "calib": calib, "row": row}


SHAPE_ONLY = {"Reshape", "Squeeze", "Unsqueeze", "Transpose"}  # a quantizer may sit in front of these


def _activation_quantized(xml: Path) -> set[str]:
    """Friendly names of the operations that take an input through an activation FakeQuantize (one whose data
    input is not a constant), looking through shape-only operations in between."""
    import openvino as ov

    def through_fq(node) -> bool:
        while node.get_type_name() in SHAPE_ONLY:
            node = node.input_value(0).get_node()
        return node.get_type_name() == "FakeQuantize" and \
            node.input_value(0).get_node().get_type_name() != "Constant"

    return {op.get_friendly_name() for op in ov.Core().read_model(str(xml)).get_ordered_ops()
            if op.get_type_name() not in SHAPE_ONLY | {"FakeQuantize"}
            and any(through_fq(i.get_source_output().get_node()) for i in op.inputs())}


DIRECT = r'''
import json, sys
import numpy as np
import nncf, openvino as ov
from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters as R
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters as Q

fp32, data, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
items = list(data["calib"])
val = [(x[None], int(y)) for x, y in zip(data["val_x"], data["val_y"])]


def validate(compiled, pairs):
    correct = [float(np.argmax(compiled(x)[0]) == y) for x, y in pairs]
    return float(np.mean(correct)), correct


model = ov.Core().read_model(fp32)
common = dict(preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
              subset_size=len(items), fast_bias_correction=True)
q = Q(overflow_fix=nncf.OverflowFix.FIRST_LAYER)
aa = nncf.quantize_with_accuracy_control(model, nncf.Dataset(items), nncf.Dataset(val), validate, max_drop=0.0,
                                         drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=q,
                                         advanced_accuracy_restorer_parameters=R(ranking_subset_size=len(val)),
                                         **common)
default = nncf.quantize(ov.Core().read_model(fp32), nncf.Dataset(items), advanced_parameters=q, **common)
ov.save_model(aa, out + "/aa.xml", compress_to_fp16=False)
ov.save_model(default, out + "/default.xml", compress_to_fp16=False)
core = ov.Core()
f32 = {"INFERENCE_PRECISION_HINT": "f32"}
compiled = {k: core.compile_model(m, "CPU", f32) for k, m in (("fp32", fp32), ("aa", out + "/aa.xml"))}
print(json.dumps({
    "fp32_validation": validate(compiled["fp32"], val)[0], "aa_validation": validate(compiled["aa"], val)[0],
    "aa_test_predictions": [int(np.argmax(compiled["aa"](x[None])[0])) for x in data["test_x"]]}))
'''


@pytest.mark.slow
def test_accuracy_aware_equals_nncf_called_directly_in_another_process(restored):
    """Outside truth: `nncf.quantize_with_accuracy_control` with its own plain validation function, on the same
    FP32 IR, calibration items and validation slice, in a fresh process: the same INT8 predictions on the final
    test images, the same validation accuracies, and the same operations without their activation quantizers
    against NNCF's default INT8 model."""
    r, base = restored["row"], restored["base"]
    tree, weights = restored["tree"], restored["weights"]
    cset = read_set(restored["calib"])
    items = calibration_items(select_calibration(cset, None, 0, tree).images)
    val, test = aa_validation(tree, weights), final_test(tree, weights)
    np.savez(base / "inputs.npz", calib=np.stack(items), val_x=to_model_input(val.images), val_y=val.labels,
             test_x=to_model_input(test.images))
    (base / "direct").mkdir(exist_ok=True)
    run = subprocess.run([sys.executable, "-c", DIRECT, r["fp32_path"], str(base / "inputs.npz"),
                          str(base / "direct")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    direct = json.loads(run.stdout.strip().splitlines()[-1])
    ours = evaluate(r["int8_path"], test)
    assert ours["predictions"].tolist() == direct["aa_test_predictions"]
    assert (r["aa_fp32_validation_accuracy"], r["aa_int8_validation_accuracy"]) == \
        (direct["fp32_validation"], direct["aa_validation"])
    assert r["aa_kept_fp32_count"] == len(r["aa_kept_fp32"]) >= 1, "the fixture should make NNCF restore a layer"
    default = _activation_quantized(base / "direct" / "default.xml")
    lost = default - _activation_quantized(Path(r["int8_path"]))
    assert lost and lost == default - _activation_quantized(base / "direct" / "aa.xml")


def test_accuracy_aware_result_is_in_the_row_and_nncf_logs_in_the_run_folder(restored):
    r = restored["row"]
    assert r["aa_nncf_initial_metric"] == r["aa_fp32_validation_accuracy"]
    assert r["aa_nncf_quantized_metric"] < r["aa_fp32_validation_accuracy"]  # the default INT8 model lost some
    assert r["aa_int8_validation_accuracy"] >= r["aa_fp32_validation_accuracy"] - r["max_drop"]
    assert r["aa_nncf_reached_drop"] and r["aa_validation_drop"] <= r["max_drop"]
    log = Path(r["nncf_log"]).read_text()
    assert "Metric of initial model" in log and r["aa_kept_fp32"][0] in log
    stored = json.loads((restored["base"] / "r.jsonl").read_text().splitlines()[-1])
    for key in ("aa_kept_fp32", "aa_fp32_validation_accuracy", "aa_int8_validation_accuracy", "validation_source",
                "validation_indices_sha256", "test_indices_sha256", "model_trained_on"):
        assert stored[key] == r[key]


def test_nncf_logs_into_the_run_folder_not_onto_stdout(tmp_path, cifar_dir, trained_tiny, capfd):
    calib = generate_set("cifar10", 1, 0, tmp_path / "set", data_dir=cifar_dir)
    row = run_quantize(QuantizeSpec(model="tiny_cnn", calib=calib, algo="accuracy-aware", weights=trained_tiny,
                                       data_dir=cifar_dir), tmp_path / "aa", record_path=tmp_path / "r.jsonl")
    out = capfd.readouterr().out
    assert "nncf:" not in out and "Metric of" not in out
    assert "Metric of initial model" in Path(row["nncf_log"]).read_text()
