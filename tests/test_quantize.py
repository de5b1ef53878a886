"""Quantization end to end on tiny models, checked against the FP32 model and at the runtimes' own API
boundaries, and the hygiene rules enforced by the quantize path itself."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from calib.cli import app
from calib.core.data import load_split, train_splits
from calib.core.engines import get_engine, list_engines
from calib.core.errors import CalibError
from calib.core.evaluate import evaluate
from calib.core.pipeline import quantize_with, run_quantize
from calib.core.quantize import calibration_items, select_calibration
from calib.core.runs import predictions_from_str, predictions_to_str
from calib.core.sets import import_set, read_set, write_set
from calib.core.sources import generate_set
from calib.core.spec import QuantizeSpec
from tests.test_engines import torchvision_input, train_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory, cifar_dir):
    return train_tiny(cifar_dir, tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def noise_set(tmp_path_factory):
    return generate_set("noise", 3, 0, tmp_path_factory.mktemp("sets") / "noise")


@pytest.fixture(scope="module")
def real_set(tmp_path_factory, cifar_dir):
    """3 images per class from the calibration pool of the tiny tree."""
    return generate_set("cifar10", 3, 0, tmp_path_factory.mktemp("sets") / "cifar10", data_dir=cifar_dir)


def _hashes(arrays) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(a, np.float32).tobytes()).hexdigest() for a in arrays}


def _input_fake_quantize(xml) -> tuple[float, float]:
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    fq = next(op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
              and op.input_value(0).get_node().get_type_name() == "Parameter")
    low, high = (float(fq.input_value(i).get_node().get_data().ravel()[0]) for i in (1, 2))
    return low, high


def _qdq(onnx_path) -> tuple[list, dict]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    return list(graph.node), {i.name: numpy_helper.to_array(i) for i in graph.initializer} | {"_input": graph.input[0]}


def test_default_int8_keeps_fp32_accuracy_and_is_really_quantized(tmp_path, real_set, trained_tiny):
    """Trained tiny model, real calibration images: INT8 within 5 points of FP32 on the same test images and
    the same class for >= 90% of them; the IR holds FakeQuantize nodes whose input range is NNCF's default
    estimator (mean over images of the per-image min and max), made symmetric (performance preset)."""
    row = run_quantize(QuantizeSpec(model="tiny_cnn", calib=real_set, weights=trained_tiny), tmp_path / "q",
                       test=True, record_path=tmp_path / "records.jsonl")
    assert row["fp32_accuracy"] >= 0.5, "the fixture model should be well above chance"
    assert abs(row["int8_accuracy"] - row["fp32_accuracy"]) <= 0.05 and row["int8_agreement"] >= 0.9
    assert row["subset_size_images"] == 30 and row["preset"] == "performance" and row["calibrate_method"] == "nncf"
    for key in ("git_sha", "cpu", "version_openvino", "input_calib", "seed_quantize", "command"):
        assert key in row
    xml = (tmp_path / "q" / "int8.xml").read_text()
    assert xml.count('type="FakeQuantize"') >= 3
    low, high = _input_fake_quantize(tmp_path / "q" / "int8.xml")
    x = torchvision_input(read_set(real_set).images).reshape(30, -1)
    bound = max(abs(float(x.min(1).mean())), abs(float(x.max(1).mean())))
    assert high == pytest.approx(bound, rel=1e-5) and low == pytest.approx(-high * 128 / 127, rel=1e-5)


@pytest.mark.parametrize("preset,method", [("performance", "minmax"), ("mixed", "minmax"), ("mixed", None)])
def test_nncf_preset_and_range_estimator_are_applied(tmp_path, preset, method, trained_tiny):
    from calib.core.weights import load_model

    engine = get_engine("openvino")
    fp32 = engine.export(load_model("tiny_cnn", trained_tiny), tmp_path)
    x = torchvision_input(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    cfg = QuantizeSpec("tiny_cnn", tmp_path, preset=preset, calibrate_method=method)
    xml, rec = engine.quantize(fp32, [x[i : i + 1] for i in range(len(x))], cfg, tmp_path)
    low, high = _input_fake_quantize(xml)
    lo_ref, hi_ref = (float(x.min()), float(x.max())) if method == "minmax" else \
        (float(np.mean(x.reshape(16, -1).min(1))), float(np.mean(x.reshape(16, -1).max(1))))
    if preset == "performance":  # symmetric: the larger magnitude of both ends, 128 levels below zero
        assert high == pytest.approx(max(abs(lo_ref), abs(hi_ref)), rel=1e-5)
        assert low == pytest.approx(-high * 128 / 127, rel=1e-5) and rec["activations"] == "symmetric"
    else:  # asymmetric: the data's own ends, the low one moved by at most one step so that zero is representable
        assert high == pytest.approx(hi_ref, rel=1e-5)
        assert lo_ref - (hi_ref - lo_ref) / 255 <= low <= lo_ref and rec["activations"] == "asymmetric"
    assert rec["calibrate_method"] == (method or "nncf")


def test_onnxruntime_end_to_end_keeps_fp32_accuracy_with_minmax_qdq(tmp_path, real_set, trained_tiny):
    """QDQ nodes present; the input's scale and zero point are min-max's (asymmetric UINT8) over exactly the
    calibration images; INT8 within 5 points of FP32."""
    row = run_quantize(QuantizeSpec(model="tiny_cnn", calib=real_set, engine="onnxruntime", weights=trained_tiny),
                       tmp_path / "o", test=True, record_path=tmp_path / "r.jsonl")
    assert row["engine"] == "onnxruntime" and row["int8_path"].endswith(".onnx") and row["calibrate_method"] == "minmax"
    assert abs(row["int8_accuracy"] - row["fp32_accuracy"]) <= 0.05 and row["int8_agreement"] >= 0.9
    nodes, init = _qdq(row["int8_path"])
    assert sum(n.op_type == "QuantizeLinear" for n in nodes) >= 3 and sum(n.op_type == "DequantizeLinear"
                                                                         for n in nodes) >= 3
    q_in = next(n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] == init["_input"].name)
    x = torchvision_input(read_set(real_set).images)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255
    assert float(init[q_in.input[1]]) == pytest.approx(scale, rel=1e-5)
    assert init[q_in.input[2]].dtype == np.uint8 and int(init[q_in.input[2]]) == round(-lo / scale)


def test_onnxruntime_calibration_method_and_preset_are_applied(tmp_path, noise_set):
    cset = read_set(noise_set)

    def scales(**kw):
        q = quantize_with(QuantizeSpec(model="tiny_cnn", calib=noise_set, engine="onnxruntime", **kw), cset,
                          tmp_path / "-".join(f"{v}" for v in kw.values()))
        nodes, init = _qdq(q["int8_path"])
        qs = [n for n in nodes if n.op_type == "QuantizeLinear"]
        return q, {n.input[0]: (float(init[n.input[1]].ravel()[0]), init[n.input[2]]) for n in qs}

    q_min, minmax = scales(calibrate_method="minmax")
    q_pct, percentile = scales(calibrate_method="percentile")
    q_sym, symmetric = scales(preset="performance")
    assert q_pct["calibrate_method"] == "percentile"
    assert all(percentile[k][0] <= minmax[k][0] + 1e-9 for k in minmax)  # clipped ranges never exceed min-max
    assert any(percentile[k][0] < minmax[k][0] * 0.999 for k in minmax)
    assert q_sym["activations"] == "symmetric" and all(zp.dtype == np.int8 and not zp.any() for _, zp in
                                                       symmetric.values())
    assert any(zp.dtype == np.uint8 for _, zp in minmax.values())


def _int8_weights(path) -> list[np.ndarray]:
    """The INT8 weight tensors of an IR (compressed constants) or a QDQ ONNX file (initializers), in graph order."""
    if str(path).endswith(".xml"):
        import openvino as ov

        return [op.get_data() for op in ov.Core().read_model(str(path)).get_ordered_ops()
                if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() == "i8"]
    nodes, init = _qdq(path)
    return [v for k, v in init.items() if k != "_input" and getattr(v, "dtype", None) == np.int8 and v.size > 1]


# each engine's option for weights on half the INT8 range: (off, on)
HALF_RANGE = {"overflow_fix": ("disable", "enable"), "reduce_range": (False, True)}


@pytest.mark.parametrize("engine", list_engines(int8=True))
def test_overflow_fix_puts_weights_on_half_the_int8_range(tmp_path, noise_set, engine):
    """NNCF's overflow fix `enable`, ONNX Runtime's `reduce_range`: every weight within 7 bits (|w| <= 64); off:
    the full 8-bit range is used."""
    cset = read_set(noise_set)
    option = next(k for k in HALF_RANGE if k in get_engine(engine).options)
    full, half = (_int8_weights(quantize_with(QuantizeSpec(model="tiny_cnn", calib=noise_set, engine=engine,
                                                              **{option: value}), cset,
                                              tmp_path / str(value))["int8_path"])
                  for value in HALF_RANGE[option])
    assert len(full) == len(half) >= 3
    assert all(np.abs(w.astype(int)).max() <= 64 for w in half)
    assert any(np.abs(w.astype(int)).max() > 100 for w in full)


def _ranges(path) -> list[np.ndarray]:
    """Activation ranges in graph order: FakeQuantize limits of an IR, or the scales and zero points of a QDQ file."""
    if str(path).endswith(".xml"):
        import openvino as ov

        return [op.input_value(i).get_node().get_data() for op in ov.Core().read_model(str(path)).get_ordered_ops()
                if op.get_type_name() == "FakeQuantize" for i in range(1, 5)]
    nodes, init = _qdq(path)
    return [init[n.input[i]] for n in nodes if n.op_type == "QuantizeLinear" for i in (1, 2)]


@pytest.mark.parametrize("engine", list_engines(int8=True))
def test_calibration_in_batches_keeps_per_image_statistics(tmp_path, noise_set, engine):
    """Items of 8 images (the last one of 6) give the ranges of batch-1 calibration: statistics stay per image.
    (Pooled over the batch, NNCF's mean of per-image minima and maxima would widen.)"""
    cset = read_set(noise_set)
    one, eight = (_ranges(quantize_with(QuantizeSpec(model="tiny_cnn", calib=noise_set, engine=engine,
                                                        calibration_batch=b), cset, tmp_path / str(b))["int8_path"])
                  for b in (1, 8))
    assert len(one) == len(eight) >= 6
    for a, b in zip(one, eight):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert [len(x) for x in calibration_items(cset.images, 8)] == [8, 8, 8, 6]


def test_nncf_default_overflow_fix_is_the_first_layer_only(tmp_path, noise_set):
    q = quantize_with(QuantizeSpec(model="tiny_cnn", calib=noise_set), read_set(noise_set), tmp_path)
    first, *rest = (np.abs(w.astype(int)).max() for w in _int8_weights(q["int8_path"]))
    assert q["overflow_fix"] == "first_layer_only" and first <= 64 and all(m > 100 for m in rest)


def test_validation_fn_on_the_async_queue_matches_synchronous_inference(tmp_path, trained_tiny, cifar_dir):
    import openvino as ov

    from calib.core.engines.openvino import _validation_fn
    from calib.core.weights import load_model

    xml = get_engine("openvino").export(load_model("tiny_cnn", trained_tiny), tmp_path)
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    val = train_splits(cifar_dir)["validation"]
    x = torchvision_input(val.images[:57])
    items = [(x[i : i + 1], int(val.labels[i])) for i in range(57)]
    metric, per_item = _validation_fn(compiled, iter(items))
    reference = [float(compiled(xi)[0].argmax() == y) for xi, y in items]
    assert per_item == reference and metric == pytest.approx(np.mean(reference))


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
    from calib.core.weights import load_model

    engine = get_engine("openvino")
    fp32 = engine.export(load_model("tiny_cnn"), tmp_path)
    items = calibration_items(read_set(noise_set).images[:4])
    with pytest.raises(CalibError, match="not the test split"):
        engine.quantize(fp32, items, QuantizeSpec("tiny_cnn", noise_set, algo="accuracy-aware"), tmp_path,
                        load_split("test", cifar_dir))


def test_final_accuracy_only_on_the_test_split(tmp_path, noise_set, cifar_dir):
    q = quantize_with(QuantizeSpec(model="tiny_cnn", calib=noise_set), read_set(noise_set), tmp_path)
    with pytest.raises(CalibError, match="final accuracy"):
        evaluate(q["int8_path"], train_splits(cifar_dir)["validation"])


def test_subset_is_class_balanced_seeded_and_recorded(tmp_path, noise_set):
    cset = read_set(noise_set)
    a, b = select_calibration(cset, 20, 0), select_calibration(cset, 20, 0)
    assert np.array_equal(a.images, b.images) and set(a.per_class.values()) == {2}
    assert np.array_equal(np.bincount(a.labels, minlength=10), [2] * 10)
    assert not np.array_equal(a.indices, select_calibration(cset, 20, 1).indices)
    odd = select_calibration(cset, 7, 0)
    assert sum(odd.per_class.values()) == 7 and set(odd.per_class.values()) <= {0, 1}
    assert all(item.shape == (1, 3, 32, 32) for item in calibration_items(a.images))
    with pytest.raises(CalibError, match="exceeds"):
        select_calibration(cset, 31, 0)
    q = quantize_with(QuantizeSpec(model="tiny_cnn", calib=noise_set, subset_size=20), cset, tmp_path)
    assert q["calib_per_class"] == a.per_class


def test_both_engines_receive_byte_identical_calibration_tensors(tmp_path, real_set, monkeypatch):
    """Captured at NNCF's and ONNX Runtime's own entry points (`nncf.quantize`, `quantize_static`): the same
    tensors, in the same order, all of them used (NNCF's subset_size), and equal to torchvision's transform of
    images of the set, class-balanced."""
    import nncf
    import onnxruntime.quantization as ortq

    fed = {}
    real_nncf, real_ort = nncf.quantize, ortq.quantize_static

    def spy_nncf(model, calibration_dataset, *a, **k):
        fed["openvino"] = [np.array(x) for x in calibration_dataset.get_inference_data()]
        fed["nncf_subset_size"] = k["subset_size"]
        return real_nncf(model, calibration_dataset, *a, **k)

    def spy_ort(model_input, model_output, calibration_data_reader, *a, **k):
        items = []
        while (item := calibration_data_reader.get_next()) is not None:
            items.append(np.array(next(iter(item.values()))))
        calibration_data_reader.rewind()
        fed["onnxruntime"] = items
        return real_ort(model_input, model_output, calibration_data_reader, *a, **k)

    monkeypatch.setattr(nncf, "quantize", spy_nncf)
    monkeypatch.setattr(ortq, "quantize_static", spy_ort)
    cset = read_set(real_set)
    for engine in list_engines(int8=True):
        quantize_with(QuantizeSpec(model="tiny_cnn", calib=real_set, engine=engine, subset_size=12, seed=4),
                      cset, tmp_path / engine)
    ov_items, ort_items = fed["openvino"], fed["onnxruntime"]
    assert len(ov_items) == fed["nncf_subset_size"] == 12
    assert [x.tobytes() for x in ov_items] == [x.tobytes() for x in ort_items]
    reference = torchvision_input(cset.images)
    matched = [int(np.flatnonzero(np.abs(reference - x).reshape(len(reference), -1).max(1) < 1e-5)[0])
               for x in ov_items]
    assert len(set(matched)) == 12 and set(np.bincount(cset.labels[matched], minlength=10)) == {1, 2}


def test_evaluate_returns_per_image_predictions_in_test_order(tmp_path, trained_tiny, cifar_dir):
    from calib.core.weights import load_model

    model = load_model("tiny_cnn", trained_tiny)
    test = load_split("test", cifar_dir)
    result = evaluate(get_engine("openvino").export(model, tmp_path), test, batch=7)
    with torch.no_grad():
        expected = model(torch.from_numpy(torchvision_input(test.images))).argmax(1).numpy()
    assert result["predictions"].dtype == np.int64 and np.array_equal(result["predictions"], expected)
    assert result["accuracy"] == pytest.approx(float((expected == test.labels).mean()))
    text = predictions_to_str(result["predictions"])
    assert len(text) == len(test) and np.array_equal(predictions_from_str(text), expected)


def test_speed_runs_need_no_data(tmp_path, monkeypatch):
    """An in-memory noise set made for timing holds no file that could be a held-out image: no data needed."""
    from calib.core.benchmark import memory_set, quantize_for_speed

    monkeypatch.delenv("CALIB_CIFAR10_DIR", raising=False)
    monkeypatch.setenv("CALIB_HOME", str(tmp_path / "home"))  # no CIFAR-10 cached: a lookup would fail offline
    q = quantize_for_speed("tiny_cnn", "openvino", memory_set(per_class=2), tmp_path)
    assert Path(q["int8_path"]).is_file() and q["weights_file"] == "random"
