"""Each engine takes only the options it has: the rest are refused in one line, before any work and without a
trace in any record, and what an engine records is what it used (ONNX Runtime's reduce_range by the CPU's
VNNI, as its documentation advises; entropy ranges that really are entropy's)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from calib.cli import app
from calib.core.engines import get_engine, list_engines
from calib.core.errors import CalibError, OptionError
from calib.core.pipeline import quantize_with, run_quantize
from calib.core.sets import read_set
from calib.core.sources import generate_set
from calib.core.spec import (
    ACCURACY_AWARE_ONLY,
    QUANTIZATION_OPTIONS,
    Algo,
    CalibMethod,
    DropType,
    OverflowFix,
    Preset,
    QuantizeSpec,
    option_text,
)

runner = CliRunner()

# a value other than "not given" for every quantization option, and how a user types it
GIVEN = {"algo": Algo.accuracy_aware, "subset_size": 7, "preset": Preset.mixed, "fast_bias_correction": False,
         "max_drop": 0.05, "drop_type": DropType.relative, "seed": 3, "calibrate_method": CalibMethod.minmax,
         "ranking_subset_size": 9, "overflow_fix": OverflowFix.enable, "reduce_range": True, "calibration_batch": 4}
TYPED = {"algo": "--algo accuracy-aware", "fast_bias_correction": "--no-fast-bias-correction",
         "max_drop": "--max-drop 0.05", "drop_type": "--drop-type relative", "ranking_subset_size":
         "--ranking-subset-size 9", "overflow_fix": "--overflow-fix enable", "reduce_range": "--reduce-range"}


@pytest.fixture(scope="module")
def noise_set(tmp_path_factory):
    return generate_set("noise", 3, 0, tmp_path_factory.mktemp("sets") / "noise")


def test_every_field_has_a_given_value_here():
    assert set(GIVEN) == set(QUANTIZATION_OPTIONS)
    assert QuantizeSpec("tiny_cnn", Path(".")).given() == {}


@pytest.mark.parametrize("engine", list_engines(int8=True))
@pytest.mark.parametrize("field", sorted(GIVEN))
def test_an_option_the_engine_lacks_is_refused_in_its_own_words(engine, field):
    """Every engine, every field: accepted where the engine declares it, else one line naming the option as
    typed (never a Python repr such as `<DropType.relative: 'relative'>`)."""
    e = get_engine(engine)

    # an accuracy-aware option goes with --algo accuracy-aware where the engine has that
    aa = {"algo": Algo.accuracy_aware} if field in ACCURACY_AWARE_ONLY and "algo" in e.options else {}

    def spec():
        return QuantizeSpec("tiny_cnn", Path("."), engine=engine, **{field: GIVEN[field], **aa})

    if field in e.options:
        e.check_options(spec())
        return
    with pytest.raises(OptionError) as err:  # refused when the spec is made, before any work
        spec()
    text = str(err.value)
    assert option_text(field, GIVEN[field]) in text and len(text.splitlines()) == 1
    assert TYPED.get(field, "--") in text and "<" not in text and "Enum" not in text
    assert not re.search(r"'[\w.-]+'", text)  # no quoted repr of a value


def test_onnx_runtime_has_none_of_nncfs_options_and_nncf_none_of_onnx_runtimes():
    ort, ov = get_engine("onnxruntime"), get_engine("openvino")
    assert not ort.options & {"algo", "fast_bias_correction", "max_drop", "drop_type", "ranking_subset_size",
                              "overflow_fix"}
    assert "reduce_range" not in ov.options
    for engine, method, others in ((ort, "nncf", "minmax, entropy, percentile"), (ov, "entropy", "nncf, minmax"),
                                   (ov, "percentile", "nncf, minmax")):
        with pytest.raises(OptionError, match=f"no --calibrate-method {method}: it calibrates with {others}$"):
            QuantizeSpec("tiny_cnn", Path("."), engine=engine.name, calibrate_method=CalibMethod(method))


@pytest.mark.parametrize("args", [["--no-fast-bias-correction"], ["--max-drop", "0.05"], ["--drop-type", "relative"],
                                  ["--ranking-subset-size", "5"], ["--algo", "accuracy-aware"],
                                  ["--overflow-fix", "enable"], ["--calibrate-method", "nncf"]])
def test_cli_refuses_nncf_options_for_onnx_runtime_before_any_work(tmp_path, noise_set, args):
    out, rec = tmp_path / "q", tmp_path / "r.jsonl"
    result = runner.invoke(app, ["quantize", "--model", "tiny_cnn", "--calib", str(noise_set), "--engine",
                                 "onnxruntime", "--out", str(out), "--record", str(rec), *args])
    text = result.output.strip()
    assert result.exit_code != 0 and len(text.splitlines()) == 1 and args[0] in text, text
    assert "Traceback" not in text and not out.exists() and not rec.exists()


def test_onnx_runtime_row_records_what_it_used_and_nothing_it_lacks(tmp_path, noise_set):
    row = run_quantize(QuantizeSpec(model="tiny_cnn", calib=noise_set, engine="onnxruntime"), tmp_path / "q",
                       record_path=tmp_path / "r.jsonl")
    for key in ("fast_bias_correction", "max_drop", "drop_type", "overflow_fix", "ranking_subset_images"):
        assert key not in row
    stored = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[-1])
    assert stored["reduce_range"] in (True, False) and stored["reduce_range_reason"].startswith("default: ")


def _int8_weights(onnx_path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return [a for a in map(numpy_helper.to_array, onnx.load(str(onnx_path)).graph.initializer)
            if a.dtype == np.int8 and a.size > 1]


@pytest.mark.parametrize("vnni", [False, True])
def test_reduce_range_follows_the_cpus_vnni_unless_given(tmp_path, noise_set, monkeypatch, vnni):
    """ONNX Runtime's guidance for x86 CPUs: reduce_range without VNNI, not with it; checked in the weights
    ONNX Runtime wrote (7-bit: |w| <= 64) and in the row; the option overrides either way."""
    import calib.core.hardware

    monkeypatch.setattr(calib.core.hardware, "has_vnni", lambda flags=None: vnni)
    cset = read_set(noise_set)

    def run(name, **kw):
        q = quantize_with(QuantizeSpec(model="tiny_cnn", calib=noise_set, engine="onnxruntime", pretrained=False,
                                          **kw), cset, tmp_path / name)
        return q, max(int(np.abs(w.astype(int)).max()) for w in _int8_weights(q["int8_path"]))

    q, largest = run("default")
    assert q["reduce_range"] is (not vnni) and (largest <= 64) is (not vnni)
    assert q["reduce_range_reason"] == f"default: {'VNNI' if vnni else 'no VNNI'} on this CPU"
    q, largest = run("given", reduce_range=vnni)  # the opposite of the default
    assert q["reduce_range"] is vnni and q["reduce_range_reason"] == "option" and (largest <= 64) is vnni


def _activation_scales(onnx_path) -> dict[str, float]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {n.input[0]: float(init[n.input[1]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and init[n.input[1]].size == 1}


def test_onnx_runtime_entropy_searches_its_thresholds_and_records_its_bins(tmp_path, noise_set, monkeypatch):
    """Entropy's KL search (ONNX Runtime's own calibrator) clips where min-max does not: narrower ranges on some
    activations, none wider; the bins it searched are recorded. (A smaller histogram than the default keeps
    this quick; the row states the one used.)"""
    from calib.core.engines import onnxruntime as ort_engine

    monkeypatch.setitem(ort_engine.HISTOGRAM, "entropy", {"num_bins": 512, "num_quantized_bins": 128})
    cset = read_set(noise_set)
    runs = {m: quantize_with(QuantizeSpec(model="tiny_cnn", calib=noise_set, engine="onnxruntime",
                                             calibrate_method=m, pretrained=False), cset, tmp_path / m)
            for m in ("minmax", "entropy")}
    minmax, entropy = (_activation_scales(runs[m]["int8_path"]) for m in ("minmax", "entropy"))
    assert minmax.keys() == entropy.keys() and len(minmax) >= 5
    assert all(entropy[k] <= minmax[k] * (1 + 1e-6) for k in minmax)
    assert sum(entropy[k] < minmax[k] * 0.95 for k in minmax) >= 2
    assert runs["entropy"]["calibrate_method"] == "entropy"
    assert (runs["entropy"]["calib_num_bins"], runs["entropy"]["calib_num_quantized_bins"]) == (512, 128)
    assert "calib_num_bins" not in runs["minmax"]


def test_an_invalid_value_is_one_clear_line():
    with pytest.raises(CalibError, match="^--drop-type must be one of absolute, relative, not sideways$"):
        QuantizeSpec(model="tiny_cnn", calib=".", drop_type="sideways")
    with pytest.raises(CalibError, match="^--subset-size must be at least 1, not 0$"):
        QuantizeSpec(model="tiny_cnn", calib=".", subset_size=0)
