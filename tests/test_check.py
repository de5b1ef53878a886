"""`calib study check`: cells redone outside calib's quantize path, under each cell's ISA cap, with the images
re-derived from seeds and checked against the row's hashes; a tampered row is a mismatch, not a silent rerun."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from calib.cli import app
from calib.core.errors import CalibError
from calib.core.hardware import isa_env, native_isa, supported_isas
from calib.core.runs import read_jsonl
from calib.study import check
from calib.study.runner import run_study
from tests.conftest import use_test_data

CAPPED = "avx2" if "avx2" in supported_isas() else None  # the cap every x86-64 machine of the study can run
GRID = f"""
name = "c"
models = ["tiny_cnn"]
sources = ["noise"]
per_class = 2
probe_per_class = 2
seeds = [0]
algos = ["default", "accuracy-aware"]
accuracy_aware_models = ["tiny_cnn"]
subset_sizes = [15]
benchmark = false
isas = {json.dumps(["native", CAPPED] if CAPPED else ["native"])}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, cifar_dir, weights_dir):
    """A tiny study: default and accuracy-aware cells, natively and capped at AVX2."""
    with pytest.MonkeyPatch.context() as mp:
        use_test_data(mp, tmp_path_factory, cifar_dir, weights_dir)
        folder = tmp_path_factory.mktemp("check")
        (folder / "grid.toml").write_text(GRID)
        run_study(folder / "grid.toml", folder / "run", progress=False)
    return folder / "run"


@pytest.fixture(scope="module")
def checked(run):
    """`calib study check RUN --cells 0` once, its output and its check.csv."""
    result = CliRunner().invoke(app, ["study", "check", str(run), "--cells", "0"])
    return result, pd.read_csv(run / "check.csv")


def quantize_rows(run) -> list[dict]:
    return [r for r in read_jsonl(run / "rows.jsonl") if r["kind"] == "quantize"]


def test_independent_check_agrees_with_the_study(run, checked):
    result, table = checked
    assert result.exit_code == 0, result.output
    assert len(table) == len(quantize_rows(run)) == (4 if CAPPED else 2)
    assert (table.status == "ok").all() and table.within_tolerance.all() and (table.abs_difference <= 0.003).all()
    assert (table.prediction_agreement >= 0.95).all() and (table.subset_size_images == 15).all()
    for r in table.itertuples():  # every image it used was re-derived and matched the row's hashes
        need = {"data_test_sha256", "test_indices_sha256", "calib_hash", "calib_per_class"}
        need |= {"validation_source", "validation_indices_sha256"} if r.algo == "accuracy-aware" else set()
        assert need <= set(r.verified.split(", ")), r.verified
        assert r.fp32_file.startswith("models/fp32/tiny_cnn-openvino-fused-") and r.fp32_file.endswith("fp32.xml")
    rows = pd.DataFrame(quantize_rows(run))
    if "fp32_file" in rows:  # the file the cell quantized, as its row names it
        assert dict(zip(table.cell, table.fp32_file)) == dict(zip(rows.cell, rows.fp32_file))
    assert sorted(table.study_hardware_key) == sorted(rows.hardware_key)
    assert "rechecked on" in result.output


def test_the_check_says_what_it_shares_with_calib(checked):
    result, table = checked
    assert check.SHARED_WITH_CALIB in result.output
    assert (table.shared_with_calib == check.SHARED_WITH_CALIB).all()
    assert check.SHARED_WITH_CALIB.startswith("shared with calib: ") and "; its own: " in check.SHARED_WITH_CALIB


@pytest.mark.skipif(CAPPED is None, reason="this CPU has no AVX2")
def test_each_cell_is_rechecked_in_a_process_capped_at_the_cells_isa(run, checked):
    _, table = checked
    capped, native = table[table.isa == CAPPED], table[table.isa == "native"]
    assert len(capped) == len(native) == 2
    for caps in capped.check_caps.fillna(""):  # the child's own environment (nothing to cap on an AVX2 machine)
        assert isa_env(CAPPED).items() <= dict(c.split("=", 1) for c in caps.split("; ")).items()
    if isa_env(CAPPED):
        assert all("ONEDNN_MAX_CPU_ISA=AVX2" in c for c in capped.check_caps)
        assert all(k.endswith(f"{native_isa()} capped to {CAPPED}") for k in capped.hardware_key)
    assert not any("ONEDNN_MAX_CPU_ISA" in str(c) for c in native.check_caps)
    assert not any("avx512" in k for k in capped.check_ov_kernels)  # what OpenVINO ran in the child
    assert capped.kernels_as_cell.all() and native.kernels_as_cell.all()  # the same kernels as the cell's


def test_a_row_whose_hashes_differ_is_a_mismatch_and_fails_the_check(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    rows = [r for r in quantize_rows(copy) if r["isa"] == "native"]
    default, aware = (next(r for r in rows if r["algo"] == a) for a in ("default", "accuracy-aware"))
    default["test_indices_sha256"] = "0" * 64
    aware["validation_indices_sha256"] = "f" * 64
    aware["calib_hash"] = "e" * 64
    (copy / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (default, aware)))
    result = CliRunner().invoke(app, ["study", "check", str(copy), "--cells", "0"])
    assert result.exit_code == 1 and "failed their checks" in result.output
    table = pd.read_csv(copy / "check.csv").set_index("algo")
    assert (table.status == "mismatch").all() and not table.within_tolerance.any()
    assert table.independent_int8_accuracy.isna().all()  # nothing was quantized on other images
    assert "test_indices_sha256 (" in table.problem["default"] and "000000000000 in the row" in result.output
    assert "validation_indices_sha256 (" in table.problem["accuracy-aware"]
    assert "calib_hash (" in table.problem["accuracy-aware"]
    assert f"mismatch: cell {default['cell']}" in result.output


def test_the_fp32_file_is_the_rows_or_the_one_export_that_matches(run, tmp_path):
    row = next(r for r in quantize_rows(run) if r["isa"] == "native")
    row.pop("fp32_file", None)  # as in rows of older runs
    export = check.fp32_file(run, row)  # found by model, engine, fusion and weights
    assert export.parent.parent == run / "models" / "fp32" and export.name == "fp32.xml"
    assert check.fp32_file(run, {**row, "fp32_file": str(export.relative_to(run))}) == export
    with pytest.raises(CalibError, match="fp32_file .* does not exist"):
        check.fp32_file(run, {**row, "fp32_file": "models/fp32/gone/fp32.xml"})
    with pytest.raises(CalibError, match="no FP32 exports match .*-unfused-"):
        check.fp32_file(run, {**row, "fuse": False})
    out = check.check_cell(run, {**row, "weights_sha256": "0" * 64})  # fails in one line, no process started
    assert out["status"] == "error" and "no FP32 exports match" in out["problem"] and "\n" not in out["problem"]


def test_the_checks_own_rules_are_calibs(run, cifar_dir):
    """The check writes calib's rules again instead of importing them; here they must give calib's answers."""
    from calib.core.data import cut_test_slice, load_split, train_split_indices
    from calib.core.quantize import balanced_indices
    from calib.core.sets import read_set

    rng = np.random.default_rng(7)
    for n, classes in ((60, 10), (137, 10), (23, 4)):
        labels = rng.integers(0, classes, n)
        for size in (1, 7, n // 2, n):
            for seed in (0, 3):
                assert check.balanced_subset(labels, size, seed).tolist() == balanced_indices(labels, size,
                                                                                              seed).tolist()
    test, train = load_split("test", cifar_dir), load_split("train", cifar_dir)
    images, labels = check.read_image_folder(cifar_dir / "test")
    assert np.array_equal(images, test.images) and np.array_equal(labels, test.labels)
    assert check.slice_of_test(labels).tolist() == cut_test_slice(labels)["validation"].tolist()
    assert check._per_class_draw(train.labels, check.TRAIN_VALIDATION_PER_CLASS, check.TRAIN_VALIDATION_SEED
                                 ).tolist() == train_split_indices(train.labels)["validation"].tolist()
    folder = run / quantize_rows(run)[0]["calib_set"]
    images, labels, digest = check.read_set_files(folder)
    cset = read_set(folder)
    assert digest == cset.content_hash and np.array_equal(images, cset.images) and np.array_equal(labels,
                                                                                                  cset.labels)


@pytest.mark.parametrize("pool", [False, True], ids=["trained-on-all-of-train", "trained-on-the-pool"])
def test_the_images_are_re_derived_from_the_weight_card_as_calib_decides(tmp_path, cifar_dir, weights_dir, pool):
    """Weights whose card holds out train's validation split are tested on all of test and validated on that
    split; any other weights on test minus its slice, validated on the slice: the check's images hash as calib's."""
    from calib.core.cards import trained_on_fields
    from calib.core.data import evaluation_split
    from calib.core.tree import train_sha256

    weights = tmp_path / "w.pt"
    shutil.copy(next(weights_dir.glob("cifar10_tiny_cnn-*.pt")), weights)
    if pool:
        weights.with_suffix(".json").write_text(json.dumps(trained_on_fields(True, "tiny", train_sha256(cifar_dir))))
    facts = evaluation_split(cifar_dir, weights).facts()
    row = {"data_dir": str(cifar_dir), "weights": str(weights), "data_train_sha256": train_sha256(cifar_dir),
           **facts}
    assert facts["validation_source"] == ("train_validation_split" if pool else "test_slice")
    compared = check.Compared(row)
    data = check.evaluation_images(row, True, compared)
    assert not compared.wrong
    assert {"model_trained_on", "test_indices_sha256", "validation_source", "validation_indices_sha256"} <= set(
        compared.matched) and ("data_train_sha256" in compared.matched) == pool
    assert len(data["test"][1]) == facts["test_images"] and len(data["validation"][1]) == facts["validation_images"]
    compared = check.Compared({**row, "model_trained_on": "all_train" if pool else "calibration_pool"})
    check.evaluation_images(compared.row, False, compared)
    assert [w.split(" ")[0] for w in compared.wrong] == ["model_trained_on"]


def test_the_check_follows_the_cells_calibration_batch(tmp_path):
    """Cells calibrated in items of 5 images are redone the same way (the FP32 file takes any batch), or with
    batch 1 on request."""
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.replace('["default", "accuracy-aware"]', '["default"]\ncalibration_batch = 5')
                    .replace(f"isas = {json.dumps(['native', CAPPED] if CAPPED else ['native'])}", ""))
    run_study(grid, tmp_path / "run", progress=False)
    for flag, batch in (("--as-run", 5), ("--batch-1", 1)):
        out = tmp_path / f"check{flag}.csv"
        result = CliRunner().invoke(app, ["study", "check", str(tmp_path / "run"), "--cells", "0", flag,
                                          "--out", str(out)])
        table = pd.read_csv(out)
        assert len(table) == 1 and table.calibration_batch.tolist() == [batch], result.output
        assert table.status.tolist() == ["ok"], result.output
    assert pd.read_csv(tmp_path / "check--as-run.csv").abs_difference.tolist() == [0.0]
