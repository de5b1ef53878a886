"""Quantization end to end on tiny models, and the hygiene rules enforced by the quantize path itself."""

import numpy as np
import pytest
from typer.testing import CliRunner

from calibration.cli import app
from calibration.data import load_split, train_splits
from calibration.errors import CalibError
from calibration.pipeline import QuantizeRequest, accuracy_of, quantize_with, run_quantize
from calibration.quantize import calibration_items, select_calibration
from calibration.sets import import_set, read_set, write_set
from calibration.sources import generate_set

runner = CliRunner()


@pytest.fixture(scope="module")
def noise_set(tmp_path_factory):
    return generate_set("noise", 3, 0, tmp_path_factory.mktemp("sets") / "noise")


def test_default_int8_quantizes_and_evaluates(tmp_path, noise_set, cifar_dir):
    row = run_quantize(QuantizeRequest(model="tiny_cnn", calib=noise_set, subset_size=20), tmp_path / "q",
                       evaluate=True, record_path=tmp_path / "records.jsonl")
    assert row["subset_size_images"] == 20 and row["algo"] == "default"
    assert (tmp_path / "q" / "int8.xml").exists() and (tmp_path / "q" / "options.json").exists()
    assert 0.0 <= row["int8_accuracy"] <= 1.0 and row["int8_bytes"] > 0 and row["fp32_bytes"] > 0
    for key in ("git_sha", "cpu", "version_openvino", "input_calib", "seed_quantize", "command"):
        assert key in row
    # the IR really is INT8: it holds FakeQuantize nodes
    assert "FakeQuantize" in (tmp_path / "q" / "int8.xml").read_text()


@pytest.mark.slow
def test_accuracy_aware_uses_the_validation_split(tmp_path, noise_set):
    row = run_quantize(QuantizeRequest(model="tiny_cnn", calib=noise_set, algo="accuracy-aware", max_drop=0.5),
                       tmp_path / "aa", record_path=tmp_path / "r.jsonl")
    assert row["validation_role"] == "validation" and row["validation_images"] == 1000


def test_cli_quantize_then_evaluate(tmp_path, noise_set):
    out = tmp_path / "cli"
    result = runner.invoke(app, ["quantize", "--model", "tiny_cnn", "--calib", str(noise_set), "--out", str(out),
                                 "--record", str(tmp_path / "r.jsonl"), "--no-fast-bias-correction"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(out / "int8.xml"), "--record", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 0 and "accuracy" in result.output


def _set_from(data, path, role):
    return write_set(path, data.images[:20], data.labels[:20], [f"{i:04d}" for i in range(20)], "copy", {}, role=role)


@pytest.mark.parametrize("role", ["test", "validation"])
def test_calibration_from_test_or_validation_is_refused(tmp_path, role, cifar_dir):
    data = load_split("test", cifar_dir) if role == "test" else train_splits(cifar_dir)["validation"]
    bad = read_set(_set_from(data, tmp_path / "bad", role), allow_unbalanced=True)
    with pytest.raises(CalibError, match="calibration must use the train split"):
        select_calibration(bad, None, 0)


def test_importing_the_test_folder_keeps_it_marked_and_refused(tmp_path, cifar_dir):
    imported = import_set(cifar_dir / "test", tmp_path / "imported", fmt="imagenet")
    assert read_set(imported).role == "test"
    result = runner.invoke(app, ["quantize", "--model", "tiny_cnn", "--calib", str(imported),
                                 "--out", str(tmp_path / "q")])
    assert result.exit_code == 1 and "train split" in result.output


def test_validation_must_be_the_validation_split(tmp_path, noise_set, cifar_dir):
    from calibration.export import to_openvino
    from calibration.quantize import Algo, QuantizeConfig, quantize_model
    from calibration.weights import load_model

    ov_model = to_openvino(load_model("tiny_cnn"))
    with pytest.raises(CalibError, match="not the test split"):
        quantize_model(ov_model, read_set(noise_set), QuantizeConfig(Algo.accuracy_aware),
                       validation=load_split("test", cifar_dir))


def test_final_accuracy_only_on_the_test_split(tmp_path, noise_set, cifar_dir):
    q = quantize_with(QuantizeRequest(model="tiny_cnn", calib=noise_set), read_set(noise_set), tmp_path)
    with pytest.raises(CalibError, match="final accuracy"):
        accuracy_of(q["int8_path"], train_splits(cifar_dir)["validation"])


def test_subset_counts_images_and_is_seeded(noise_set):
    cset = read_set(noise_set)
    a, b = select_calibration(cset, 7, 0), select_calibration(cset, 7, 0)
    assert len(a) == 7 and np.array_equal(a, b)
    assert all(item.shape == (1, 3, 32, 32) for item in calibration_items(a))
    with pytest.raises(CalibError, match="exceeds"):
        select_calibration(cset, 31, 0)


def test_both_engines_receive_byte_identical_calibration_tensors(tmp_path, noise_set, monkeypatch):
    """Capture what NNCF and ONNX Runtime are actually fed, through their own entry points."""
    import nncf

    import calibration.ort as ort_mod
    import calibration.quantize as q_mod

    fed = {}
    real_dataset = nncf.Dataset

    def spy_dataset(items, *a, **k):
        fed.setdefault("openvino", [np.asarray(x).tobytes() for x in items])
        return real_dataset(items, *a, **k)

    monkeypatch.setattr(q_mod.nncf if hasattr(q_mod, "nncf") else nncf, "Dataset", spy_dataset)
    real_reader = ort_mod.ItemReader

    class SpyReader(real_reader):
        def __init__(self, items, *a, **k):
            fed["onnxruntime"] = [np.asarray(x).tobytes() for x in items]
            super().__init__(items, *a, **k)

    monkeypatch.setattr(ort_mod, "ItemReader", SpyReader)
    cset = read_set(noise_set)
    for engine in ("openvino", "onnxruntime"):
        quantize_with(QuantizeRequest(model="tiny_cnn", calib=noise_set, engine=engine, subset_size=12, seed=4),
                      cset, tmp_path / engine)
    assert len(fed["openvino"]) == 12 and fed["openvino"] == fed["onnxruntime"]


def test_onnxruntime_engine_end_to_end(tmp_path, noise_set, cifar_dir):
    row = run_quantize(QuantizeRequest(model="tiny_cnn", calib=noise_set, engine="onnxruntime",
                                       calibrate_method="entropy"), tmp_path / "o", evaluate=True,
                       record_path=tmp_path / "r.jsonl")
    assert row["engine"] == "onnxruntime" and row["int8_path"].endswith(".onnx")
    assert 0.0 <= row["int8_accuracy"] <= 1.0 and row["int8_bytes"] > 0 and row["fp32_bytes"] > 0


def test_benchmark_records_its_protocol(tmp_path):
    from calibration.benchmark import Protocol
    from calibration.pipeline import benchmark_models

    rows = benchmark_models(["tiny_cnn"], ["openvino", "onnxruntime"], Protocol(0.05, 0.1, 3), tmp_path,
                            record_path=tmp_path / "r.jsonl")
    assert {r["engine"] for r in rows} == {"openvino", "onnxruntime"}
    for r in rows:
        assert r["protocol"]["repeats"] == 3 and len(r["fp32_runs"]) == 3
        assert r["fp32_fps"] > 0 and r["int8_fps"] > 0 and r["int8_bytes"] > 0
