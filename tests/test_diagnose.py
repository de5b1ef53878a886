"""`calib diagnose`: FakeQuantize ranges read from NNCF's IR, judged on real activations computed in PyTorch.

The checks compare with computations that do not go through the code under test: PyTorch forward hooks for
the FP32 activations, numpy's FakeQuantize formula (OpenVINO's op specification) for the quantization error,
and a set of identical images whose extremes are known in advance.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from calib.cli import app
from calib.core.data import LabeledImages, to_model_input, train_splits
from calib.core.diagnose import RankBy, layer_accuracy, plot_heatmaps, rank, run_diagnose
from calib.core.errors import CalibError
from calib.core.sets import write_set
from calib.core.weights import load_model
from tests.conftest import use_test_data

runner = CliRunner()


def _labels(n: int) -> np.ndarray:
    return np.repeat(np.arange(10), n // 10)


@pytest.fixture(scope="module")
def env(tmp_path_factory, cifar_dir, weights_dir):
    """Module-wide environment (the autouse fixture is per test), so sets and quantized models are shared."""
    with pytest.MonkeyPatch.context() as mp:
        use_test_data(mp, tmp_path_factory, cifar_dir, weights_dir)
        yield tmp_path_factory.mktemp("diagnose")


@pytest.fixture(scope="module")
def sets(env, cifar_dir):
    """A real set from the calibration pool, 20 copies of one pool image, and 20 flat grey images."""
    from calib.core.sources import generate_set

    pool = generate_set("cifar10", 2, 0, env / "pool", data_dir=cifar_dir)
    img = train_splits(cifar_dir)["calibration_pool"].images[3]
    ids = [f"{i:03d}" for i in range(20)]
    copies = write_set(env / "copies", np.repeat(img[None], 20, 0), _labels(20), ids, "copies", {})
    grey = write_set(env / "grey", np.full((20, 32, 32, 3), 120, np.uint8), _labels(20), ids, "grey", {})
    return {"pool": pool, "copies": copies, "grey": grey, "image": img}


@pytest.fixture(scope="module")
def diagnosed(env, sets, weights_dir):
    weights = next(weights_dir.glob("cifar10_tiny_cnn-*.pt"))
    r = run_diagnose("tiny_cnn", [sets["pool"], sets["copies"], sets["grey"]], env / "run",
                     record_path=env / "records.jsonl", weights=weights)
    return {"rows": r["rows"], "weights": weights, "written": r["written"], "summary": r["summary"]}


def _row(rows, set_name, node_part):
    found = [r for r in rows if r["set"] == set_name and node_part in r["node"]]
    assert len(found) == 1, (set_name, node_part, [r["node"] for r in rows if r["set"] == set_name])
    return found[0]


def _torch_activations(weights, images: np.ndarray) -> dict[str, np.ndarray]:
    """The FP32 tensors NNCF quantizes in TinyCNN, computed by PyTorch forward hooks."""
    model = load_model("tiny_cnn", weights)
    acts = {}
    hooks = [model.features[i].register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, o.detach().numpy()))
             for i, k in ((2, "features.2"), (6, "features.6"), (7, "features.7"))]
    with torch.no_grad():
        model(torch.from_numpy(to_model_input(images)))
    for h in hooks:
        h.remove()
    return acts


def test_every_activation_quantizer_is_reported_in_network_order(diagnosed):
    rows = [r for r in diagnosed["rows"] if r["set"] == "pool"]
    order = sorted(rows, key=lambda r: r["index"])
    # TinyCNN: the input, both ReLUs and the global average pool are quantized activations (weights are not FQs)
    assert [r["layer"] for r in order][0] == "x"
    assert {r["node"].split("/")[0] for r in order} >= {"x", "__module.features.2", "__module.features.6",
                                                         "__module.features.7"}
    assert sorted(r["rank"] for r in rows) == list(range(1, len(rows) + 1))
    assert all(r["reference"] == "validation" and r["reference_images"] == 1000 for r in rows)


def test_ranges_are_the_extremes_of_identical_calibration_images(diagnosed, sets):
    """With 20 copies of one image, every per-image statistic NNCF averages is that image's own extreme."""
    rows = diagnosed["rows"]
    x = to_model_input(sets["image"][None])
    inp = _row(rows, "copies", "x")
    assert inp["high"] == pytest.approx(np.abs(x).max(), rel=1e-4)
    assert inp["low"] < 0 and abs(inp["low"]) >= inp["high"]  # symmetric signed range
    relu = _row(rows, "copies", "features.2/")
    assert relu["low"] == 0.0
    assert relu["high"] == pytest.approx(_torch_activations(diagnosed["weights"], sets["image"][None])
                                         ["features.2"].max(), rel=1e-3)


def test_clipping_and_range_use_agree_with_pytorch_activations(diagnosed, cifar_dir):
    val = train_splits(cifar_dir)["validation"]
    acts = _torch_activations(diagnosed["weights"], val.images)
    for name in ("features.2", "features.7"):
        for set_name in ("pool", "grey"):
            row = _row(diagnosed["rows"], set_name, f"{name}/")
            a = acts[name]
            clipped = ((a < row["low"]) | (a > row["high"])).mean()
            assert row["clipped_fraction"] == pytest.approx(clipped, abs=2e-4), (name, set_name)
            used = (min(row["high"], a.max()) - max(row["low"], a.min())) / (row["high"] - row["low"])
            assert row["range_used"] == pytest.approx(used, abs=1e-3)
            assert row["ref_max"] == pytest.approx(a.max(), rel=1e-3)


def test_input_quantizer_error_matches_the_fakequantize_formula(diagnosed, cifar_dir):
    """OpenVINO's FakeQuantize spec, in numpy, on the validation images: the SQNR the input quantizer adds."""
    x = to_model_input(train_splits(cifar_dir)["validation"].images).astype(np.float64)
    for set_name in ("pool", "grey"):
        row = _row(diagnosed["rows"], set_name, "x")
        lo, hi, levels = row["low"], row["high"], row["levels"]
        q = np.round((np.clip(x, lo, hi) - lo) / (hi - lo) * (levels - 1)) / (levels - 1) * (hi - lo) + lo
        sqnr = 10 * math.log10((x**2).sum() / ((q - x) ** 2).sum())
        assert row["local_sqnr_db"] == pytest.approx(sqnr, abs=0.05)
        assert row["sqnr_db"] == pytest.approx(sqnr, abs=0.05)  # nothing upstream of the input


def test_per_channel_ranges_count_each_channel_against_its_own_range():
    """NNCF gives some activations (inputs of depthwise convolutions) one range per channel."""
    from calib.core.diagnose import Quantizer, _Stats

    rng = np.random.default_rng(0)
    low = np.zeros((1, 3, 1, 1))
    high = np.array([0.5, 1.0, 4.0]).reshape(1, 3, 1, 1)
    q = Quantizer(0, "fq", "relu", "Relu", low, high, 256)
    stats = _Stats()
    batches = [np.abs(rng.normal(size=(4, 3, 5, 5))).astype(np.float32) for _ in range(3)]
    for a in batches:
        stats.update(q, a, a, np.clip(a, low, high))
    a = np.concatenate(batches)
    row = stats.row(q)
    assert row["clipped_fraction"] == pytest.approx(((a < low) | (a > high)).mean())
    per_channel = [(min(high.flat[c], a[:, c].max()) - max(0, a[:, c].min())) / high.flat[c] for c in range(3)]
    assert row["range_used"] == pytest.approx(np.mean(per_channel))
    assert row["cosine"] < 1 and row["local_sqnr_db"] == pytest.approx(row["sqnr_db"])


def test_a_flat_grey_set_clips_the_input_and_ranks_it_worst(diagnosed):
    rows = diagnosed["rows"]
    assert _row(rows, "grey", "x")["clipped_fraction"] > 0.5
    assert _row(rows, "pool", "x")["clipped_fraction"] < 0.05
    grey = rank([r for r in rows if r["set"] == "grey"], RankBy.clipped)
    assert grey[0]["layer"] == "x" and grey[0]["rank"] == 1
    # the accumulated error at the network's last quantizer is far worse than with real images
    last = max(r["index"] for r in rows)
    sq = {s: next(r for r in rows if r["set"] == s and r["index"] == last)["sqnr_db"] for s in ("pool", "grey")}
    assert sq["grey"] < sq["pool"] - 10


def test_outputs_written(diagnosed, env):
    run = env / "run"
    lines = (run / "rows.jsonl").read_text().splitlines()
    assert len(lines) == len(diagnosed["rows"]) and json.loads(lines[0])["model"] == "tiny_cnn"
    for name in ("ranked-pool.md", "ranked-copies.md", "ranked-grey.md", "compare.md"):
        assert (run / name).read_text().startswith("|")
    with Image.open(run / "layers.png") as im:
        assert im.width > 300 and im.height > 300
    record = json.loads((env / "records.jsonl").read_text().splitlines()[-1])
    assert record["kind"] == "diagnose" and record["quantizers"] == 4
    assert (run / "manifest.json").is_file() and (run / "pool" / "int8.xml").is_file()


@pytest.mark.slow
def test_keeping_the_clipped_input_in_fp32_restores_accuracy(tmp_path, cifar_dir, sets):
    """A TinyCNN trained on the tiny tree: the grey set's input range destroys the colour that tells the classes
    apart; removing that one quantizer brings the validation accuracy most of the way back."""
    import openvino as ov

    from calib.core.data import load_split
    from calib.core.diagnose import activation_quantizers
    from calib.core.pipeline import quantize_with
    from calib.core.sets import read_set
    from calib.core.spec import QuantizeSpec
    from calib.core.zoo import create_model

    train = load_split("train", cifar_dir)
    x, y = torch.from_numpy(to_model_input(train.images)), torch.from_numpy(train.labels)
    torch.manual_seed(0)
    model = create_model("tiny_cnn")
    opt = torch.optim.Adam(model.parameters(), 0.01)
    for _ in range(40):
        idx = torch.randint(0, len(x), (128,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    req = QuantizeSpec(model="tiny_cnn", calib=sets["grey"], weights=tmp_path / "tiny.pt", data_dir=cifar_dir)
    q = quantize_with(req, read_set(sets["grey"]), tmp_path / "q")
    val = train_splits(cifar_dir)["validation"]
    fqs = {fq.layer: fq.fq_name for fq in activation_quantizers(ov.Core().read_model(q["int8_path"]))}
    acc = layer_accuracy(q["fp32_path"], q["int8_path"], [fqs["x"]], val)
    assert acc["fp32"] > 0.8
    assert acc["int8"] < acc["fp32"] - 0.3
    assert acc[fqs["x"]] > acc["int8"] + 0.3


def test_per_layer_accuracy_refuses_other_splits(sets):
    test_like = LabeledImages(np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int64), "test")
    with pytest.raises(CalibError, match="validation"):
        layer_accuracy("a.xml", "b.xml", [], test_like)


def test_heatmaps_one_per_model(tmp_path, diagnosed):
    import pandas as pd

    df = pd.DataFrame(diagnosed["rows"])
    other = df.assign(model="tiny_other")
    paths = plot_heatmaps(pd.concat([df, other]), tmp_path, "clipped_fraction")
    assert sorted(p.name for p in paths) == ["diagnose_clipped_fraction_tiny_cnn.png",
                                             "diagnose_clipped_fraction_tiny_other.png"]
    with pytest.raises(CalibError, match="no column"):
        plot_heatmaps(df, tmp_path, "nonsense")
    # one model with two weight files: one heatmap per file, never an average of both
    again = df.assign(weights="/w/cifar10_tiny_cnn-0000abcd.pt")
    paths = plot_heatmaps(pd.concat([df, again]), tmp_path / "w", "sqnr_db")
    assert len(paths) == 2 and any(p.name.endswith("cifar10_tiny_cnn-0000abcd.png") for p in paths)


def test_cli_diagnose(tmp_path, sets, weights_dir):
    out = tmp_path / "d"
    r = runner.invoke(app, ["diagnose", "--model", "tiny_cnn", "--calib", str(sets["pool"]), "--out", str(out),
                            "--record", str(tmp_path / "rec.jsonl"), "--per-layer-accuracy", "1", "--top", "2",
                            "--quiet"])
    assert r.exit_code == 0, r.output
    assert "tiny_cnn calibrated with pool" in r.output and "worst 2 of 4" in r.output
    assert "Statistics collection" not in r.output  # --quiet also silences NNCF's own bars
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert sum("val_accuracy_layer_fp32" in row for row in rows) == 1
    assert (out / "layers.png").is_file() and not (out / "compare.md").exists()  # one set: nothing to compare


@pytest.mark.parametrize("args, message", [
    (["--reference", "test"], "never looks at the test split"),
])
def test_cli_diagnose_refusals(tmp_path, sets, args, message):
    r = runner.invoke(app, ["diagnose", "--model", "tiny_cnn", "--calib", str(sets["pool"]), "--out",
                            str(tmp_path / "d"), *args])
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "d" / "rows.jsonl").exists()


def test_reference_inside_the_test_folder_is_refused(tmp_path, cifar_dir, sets):
    from calib.core.sets import import_set

    imported = import_set(cifar_dir / "test", tmp_path / "imported", "imagenet")
    r = runner.invoke(app, ["diagnose", "--model", "tiny_cnn", "--calib", str(sets["pool"]), "--reference",
                            str(imported), "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "test split" in r.output


def test_missing_set_is_one_error_line(tmp_path):
    r = runner.invoke(app, ["diagnose", "--model", "tiny_cnn", "--calib", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "is not a folder" in r.output and "Traceback" not in r.output


def test_generate_set_reports_progress(tmp_path):
    from calib.core.sources import _SOURCES, Generated, generate_set, register_source, source_info

    calls = []
    generate_set("noise", 2, 0, tmp_path / "n", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(20, 20)]
    assert "progress" not in json.loads((tmp_path / "n" / "manifest.json").read_text())["options"]

    @register_source("test-progress")
    def reporting(per_class: int, seed: int, progress=None) -> Generated:
        """A source that reports as it goes."""
        n = per_class * 10
        for i in range(0, n, 5):
            progress(i, n)
        return Generated(np.zeros((n, 32, 32, 3), np.uint8), _labels(n), [f"{i}" for i in range(n)])

    try:
        calls.clear()
        assert source_info("test-progress").options == []
        generate_set("test-progress", 2, 0, tmp_path / "p", progress=lambda d, t: calls.append((d, t)))
        assert calls == [(0, 20), (5, 20), (10, 20), (15, 20), (20, 20)]
    finally:
        del _SOURCES["test-progress"]


def test_cli_generate_quiet(tmp_path):
    r = runner.invoke(app, ["generate", "--source", "noise", "--per-class", "1", "--out", str(tmp_path / "s"),
                            "--quiet"])
    assert r.exit_code == 0 and r.output.strip().startswith("wrote 10 images")



def test_grid_option_diagnoses_every_openvino_quantize_cell(tmp_path, cifar_dir, weights_dir):
    """`diagnose = true` in a grid: one file of per-quantizer rows per OpenVINO quantize cell, none for others."""
    from calib.core.runs import read_jsonl
    from calib.study.runner import run_study

    grid = tmp_path / "grid.toml"
    grid.write_text(f'name = "d"\nmodels = ["tiny_cnn"]\nsources = ["noise", "fractal"]\nper_class = 2\n'
                    f'probe_per_class = 2\nseeds = [0]\nengines = ["openvino", "onnxruntime"]\nsubset_sizes = [0]\n'
                    f'benchmark = false\n'
                    f'diagnose = true\ndata_dir = "{cifar_dir}"\nweights_dir = "{weights_dir}"\n'
                    '[source_options.fractal]\nvariants = 2\n')
    run_study(grid, tmp_path / "run", progress=False)
    cells = [r for r in read_jsonl(tmp_path / "run" / "rows.jsonl") if r["kind"] == "quantize"]
    assert len(cells) == 4 and all(r["status"] == "ok" for r in cells), cells
    for r in cells:
        files = list((tmp_path / "run" / "diagnose").glob(f"{r['cell']}/rows.jsonl"))
        if r["engine"] != "openvino":
            assert not files and "diagnose_layers" not in r
            continue
        rows = read_jsonl(files[0])
        assert len(rows) == r["diagnose_layers"] > 0
        assert {x["source"] for x in rows} == {r["source"]}
        assert all(0 <= x["clipped_fraction"] <= 1 for x in rows)


# ---------------------------------------------------------------- readable tables for any exporter's names
class _TopLevelOps(torch.nn.Module):
    """A block in a scope, then functional ops at the top level: torch.onnx names those `/Mul`, `/HardSwish`."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Hardswish())
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        x = self.features(x)
        x = torch.nn.functional.hardswish(x * torch.sigmoid(x))
        return self.fc(x.mean((2, 3)))


def test_onnx_layer_names_keep_their_scope_and_say_what_unscoped_ones_follow(tmp_path):
    """torch.onnx's `/features/features.1/HardSwish` keeps its scope (`features.1/HardSwish`), and a top-level
    `/Mul` says which scoped node it follows; the table also gives each layer's OpenVINO op type."""
    import openvino as ov
    import openvino.opset13 as ops

    from calib.core.diagnose import activation_quantizers, ranked_table, readable

    torch.onnx.export(_TopLevelOps().eval(), torch.zeros(1, 3, 8, 8), str(tmp_path / "m.onnx"),
                      input_names=["images"], dynamo=False)
    model = ov.Core().read_model(str(tmp_path / "m.onnx"))
    by_name = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    for name in ("/features/features.1/HardSwish", "/Mul", "/HardSwish"):  # what NNCF would quantize
        out = by_name[name].output(0)
        targets = list(out.get_target_inputs())
        lo, hi = ops.constant(np.float32(-1)), ops.constant(np.float32(1))
        fq = ops.fake_quantize(out, lo, hi, lo, hi, 256, name=f"{name}/fq_output_0")
        for t in targets:
            t.replace_source_output(fq.output(0))
    shown = {q.layer: q.short for q in activation_quantizers(model)}
    assert shown == {"/features/features.1/HardSwish": "features.1/HardSwish",
                     "/Mul": "Mul after features.1/HardSwish", "/HardSwish": "HardSwish after features.1/HardSwish"}
    assert readable("__module.layer1.0.relu/aten::relu_/Relu_1") == "layer1.0.relu/Relu_1"  # the zoo's, as before
    row = {"rank": 1, "index": 0, "layer": "Mul after features.1/HardSwish", "op_type": "Multiply",
           "per_channel": False, "low": -1.0, "high": 1.0, "ref_min": -0.5, "ref_max": 0.5, "clipped_fraction": 0.0,
           "range_used": 0.5, "local_sqnr_db": 30.0, "sqnr_db": 25.0, "cosine": 0.99}
    assert ranked_table([row])[["layer", "op"]].values.tolist() == [["Mul after features.1/HardSwish", "Multiply"]]


def _stats_row(fp, fq_in, fq_out, low=-1.0, high=1.0):
    from calib.core.diagnose import Quantizer, _Stats

    q = Quantizer(0, "fq", "/Mul", "Multiply", np.asarray(low), np.asarray(high), 256)
    stats = _Stats()
    stats.update(q, *(np.asarray(t, np.float32) for t in (fp, fq_in, fq_out)))
    return {**stats.row(q), "rank": 1, "index": 0, "layer": q.short, "op_type": q.op_type, "per_channel": False,
            "low": low, "high": high}


def test_an_int8_tensor_that_is_all_zero_reads_0_db_and_cosine_0_with_its_reason():
    """Tiny activations (1e-5) under a range far too wide quantize to zero: the error equals the signal (0 dB)
    and the tensors share no direction (cosine 0, not 1); the table says why rather than a bare 0.0 dB."""
    from calib.core.diagnose import ranked_table

    x = np.random.default_rng(0).uniform(1e-6, 1e-5, (4, 3, 5, 5))
    row = _stats_row(x, x, np.zeros_like(x), low=0.0, high=6.0)
    assert row["sqnr_db"] == pytest.approx(0.0) and row["cosine"] == 0.0 and row["sqnr_note"] == "INT8 all zero"
    table = ranked_table([row]).iloc[0]
    assert table["SQNR dB"] == "0.00 (INT8 all zero)" and table["local SQNR dB"] == "0.00 (INT8 all zero)"
    assert table["ref max"] == float(f"{x.max():.4g}") > 0  # four significant digits, never 0.0


def test_tiny_activations_have_the_sqnr_of_large_ones_printed_with_its_decimals():
    """SQNR is a ratio: the same relative error at 1e-5 as at 1 gives the same dB, printed with two decimals
    below 10 dB so that a small SQNR never reads 0.0."""
    from calib.core.diagnose import db_text, ranked_table

    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 5, 5))
    noisy = x * (1 + 0.9 * rng.normal(size=x.shape))
    big, tiny = _stats_row(x, x, noisy), _stats_row(x * 1e-5, x * 1e-5, noisy * 1e-5, -1e-5, 1e-5)
    assert tiny["sqnr_db"] == pytest.approx(big["sqnr_db"], abs=1e-3) and tiny["sqnr_note"] is None
    assert tiny["cosine"] == pytest.approx(big["cosine"], abs=1e-6)
    assert ranked_table([tiny]).iloc[0]["SQNR dB"] == f"{tiny['sqnr_db']:.2f}" != "0.00"
    assert ranked_table([tiny]).iloc[0]["high"] == 1e-5
    assert db_text(0.04) == "0.04" and db_text(23.456) == "23.5" and db_text(None) == "-"


def test_no_signal_and_no_error_say_so_instead_of_a_number():
    from calib.core.diagnose import ranked_table

    zero = np.zeros((2, 3, 4, 4))
    silent = _stats_row(zero, zero, zero)
    assert silent["sqnr_db"] is None and silent["sqnr_note"] == "no signal" and silent["cosine"] == 1.0
    x = np.full((2, 3, 4, 4), 0.5)
    exact = _stats_row(x, x, x)
    assert exact["sqnr_db"] is None and exact["sqnr_note"] == "exact"
    assert ranked_table([silent]).iloc[0]["SQNR dB"] == "n/a (no signal)"
    assert ranked_table([exact]).iloc[0]["SQNR dB"] == "exact"
