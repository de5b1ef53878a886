"""Each misleading case met with your own model gets the line a user needs, before any work where it is a refusal
(no folder, no row), and `-q` leaves stderr empty."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from calib.cli import app
from calib.core import contract as C
from calib.core.errors import OptionError
from tests.test_exporters import CLASSES, Tiny, images

STATED = ["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--input-size", "48"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One tiny model as ONNX (input `images`), IR (48x48, no contract) and TorchScript, a tree with test/ and
    one with val/ only, and a folder of 3 images."""
    import shutil

    import openvino as ov
    from PIL import Image

    root = tmp_path_factory.mktemp("made")
    torch.manual_seed(0)
    net = Tiny().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 48, 48),), str(root / "net.onnx"), input_names=["images"],
                          dynamic_axes={"images": {0: "n"}}, opset_version=17, dynamo=False)
        torch.jit.script(net).save(str(root / "net.pt"))
        ir = ov.convert_model(net, example_input=torch.zeros(1, 3, 48, 48), input=[("images", [-1, 3, 48, 48])])
    ov.save_model(ir, str(root / "net.xml"), compress_to_fp16=False)
    for split in ("test", "train"):
        for c, name in enumerate(CLASSES):
            (root / "data" / split / name).mkdir(parents=True)
            for i, img in enumerate(images(2, 40, 10 * c + (split == "test"))):
                Image.fromarray(img).save(root / "data" / split / name / f"{i}.png")
    shutil.copytree(root / "data" / "train", root / "notest" / "val")
    (root / "three").mkdir()
    for i, img in enumerate(images(3, 30, 99)):
        Image.fromarray(img).save(root / "three" / f"{i}.png")
    return root


def run(args):
    result = CliRunner().invoke(app, args)
    return result, result.stderr.strip()


def refused(args, says, out=None):
    result, err = run(args)
    assert result.exit_code == 2 and len(err.splitlines()) == 1 and says in err, (args, result.output)
    if out is not None:
        assert not out.exists()
    return err


def test_evaluate_without_a_contract_says_so(made):
    for model in ("net.onnx", "net.xml", "net.pt"):  # the IR's 48x48 input is no zoo model's
        err = refused(["evaluate", "--model", str(made / model), "--data-dir", str(made / "data")],
                      f"no input contract for {made / model}")
        assert "--mean, --std and --input-size" in err and f"{model}.calib.toml beside" in err


def test_an_option_overrides_one_field_of_a_card_and_says_so(made, tmp_path):
    card = tmp_path / "card.toml"
    card.write_text('mean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\ninput_size = [32, 32]\n')
    found = C.find(made / "net.pt", {"channel_order": "BGR", "input_size": (48, 48)}, card)
    assert found.contract.bgr and found.contract.input_size == (48, 48) and found.contract.mean == (0.5,) * 3
    assert found.overrides == (f"--bgr overrides channel order RGB of card {card}",
                               f"--input-size 48x48 overrides input size 32x32 of card {card}")
    result, err = run(["evaluate", "--model", str(made / "net.pt"), "--contract", str(card), "--bgr",
                       "--input-size", "48", "--data-dir", str(made / "data"), "--record",
                       str(tmp_path / "rows.jsonl"), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert sorted(err.splitlines()) == sorted(f"note: {line}" for line in found.overrides)
    assert sorted(json.loads(result.stdout)["contract_overrides"]) == sorted(found.overrides)


@pytest.mark.parametrize("values, says", [
    (["--mean", "128,128,128", "--std", "64,64,64"], "are in 0..255 pixel units but the pixel scale is 1/255"),
    (["--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--raw-pixels"], "are in 0..1 units but the pixel scale "
                                                                           "is 1"),
])
def test_mean_and_std_in_the_wrong_units_are_refused(made, tmp_path, values, says):
    refused(["quantize", "--model", str(made / "net.onnx"), "--source", "noise", *values, "--input-size", "48",
             "--out", str(tmp_path / "run")], says, tmp_path / "run")
    C.InputContract((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), (48, 48), scale=1)  # raw pixels, right units


def test_option_checks_come_before_the_folder_check(made, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    refused(["quantize", "--model", str(made / "net.pt"), "--source", "inversion", *STATED, "--out", str(out)],
            "a TorchScript module takes no BatchNorm hooks")
    refused(["quantize", "--model", str(made / "net.xml"), "--source", "noise", *STATED, "--engine", "onnxruntime",
             "--out", str(out)], "--engine onnxruntime does not read")
    refused(["quantize", "--model", str(made / "net.xml"), "--source", "noise", *STATED, "--out", str(out)],
            "already exists")


def test_default_folders_are_named_by_the_condition(made):
    from calib.core.own import OwnRequest, own_folder

    c = C.InputContract((0.5,) * 3, (0.25,) * 3, (48, 48))
    base = OwnRequest(made / "net.onnx", c, "noise", 8)
    names = {own_folder(r) for r in (base, OwnRequest(made / "net.pt", c, "noise", 8),
                                     OwnRequest(made / "net.xml", c, "noise", 8),
                                     OwnRequest(made / "net.onnx", C.InputContract((0.4,) * 3, (0.25,) * 3, (48, 48)),
                                                "noise", 8),
                                     OwnRequest(made / "net.onnx", c, "noise", 8, engine="openvino"),
                                     OwnRequest(made / "net.onnx", c, "fractal", 8))}
    assert len(names) == 6 and own_folder(base) == own_folder(OwnRequest(made / "net.onnx", c, "noise", 8))
    assert own_folder(base).name.startswith("own-net-onnx-onnxruntime-noise-8-s0-")


def test_a_failed_run_writes_no_rows_and_no_folder(made, tmp_path, monkeypatch):
    from calib.core import own

    def broken(*a, **k):
        raise RuntimeError("broken engine")

    monkeypatch.setattr(own, "make_images", broken)
    out, rows = tmp_path / "run", tmp_path / "rows.jsonl"
    result, _ = run(["quantize", "--model", str(made / "net.onnx"), "--source", "noise", *STATED, "--out", str(out),
                     "--record", str(rows)])
    assert result.exit_code != 0 and not out.exists() and not rows.exists()


def test_summary_says_what_was_measured_and_what_the_folder_held(made, tmp_path):
    result, err = run(["quantize", "--model", str(made / "net.onnx"), "--source", "folder", "--folder",
                       str(made / "three"), "--images", "5", *STATED, "--data-dir", str(made / "notest"), "--out",
                       str(tmp_path / "run"), "--record", str(tmp_path / "rows.jsonl"), "-q"])
    assert result.exit_code == 0, result.output
    assert err == ""
    assert "3 folder images (the folder holds 3 of the 5 asked)" in result.stdout
    assert f"{made / 'notest'} has no test/ folder" in result.stdout
    assert json.loads((tmp_path / "run" / "quantize.json").read_text())["images"] == 3
    assert (tmp_path / "run" / "int8.onnx").is_file()  # RUN/int8.<suffix>, as a zoo run writes


def test_zoo_only_options_are_refused_and_marked_in_help(made, tmp_path):
    refused(["quantize", "--model", str(made / "net.onnx"), "--source", "noise", *STATED, "--preset", "mixed"],
            "--preset is for zoo models and --calib sets only")
    for command in (["quantize"], ["diagnose"]):
        result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200, env={"COLUMNS": "200"})
        text = " ".join(result.output.split())
        assert "--subset-size" in text and "Zoo models and --calib sets only: calibration images" in text


@pytest.mark.parametrize("command, kinds", [
    (["quantize"], ".pt/.pth/.ts (TorchScript): openvino (default) or onnxruntime"),
    (["evaluate"], ".pt/.pth/.ts (TorchScript): openvino via OpenVINO's converter"),
    (["diagnose"], ".onnx (ONNX): openvino"),
    (["benchmark", "files"], ".pt2 (torch.export archive): pytorch (default) or openvino"),
])
def test_help_says_which_kinds_each_command_takes_and_which_engine_reads_each(command, kinds):
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0 and kinds in " ".join(result.output.split())


def test_weight_card_and_unknown_model_are_one_line_before_any_data(tmp_path):
    card = tmp_path / "resnet20.json"
    card.write_text("{}")
    refused(["evaluate", "--model", "resnet20", "--weights", str(card)], "is a weight card (JSON)")
    refused(["evaluate", "--model", "no_such_net", "--data-dir", str(tmp_path)],
            "--model no_such_net is neither a model file nor a zoo name")
    refused(["quantize", "--model", "no_such_net", "--calib", str(tmp_path)], "neither a model file nor a zoo name")


def test_onnx_runtime_histogram_progress_never_reaches_stderr(made, tmp_path, capfd):
    from calib.core.engines.onnxruntime import histogram_ranges

    x = C.to_model_input(images(4, 48, 1), C.InputContract((0.5,) * 3, (0.25,) * 3, (48, 48)))
    from onnxruntime.quantization import CalibrationMethod

    histogram_ranges(made / "net.onnx", [x[i : i + 1] for i in range(4)], CalibrationMethod.Entropy,
                     {"num_bins": 64, "num_quantized_bins": 16}, tmp_path / "ranges.json")
    assert "Collecting tensor data" not in capfd.readouterr().err


def test_diagnose_ranges_keep_small_values():
    from calib.core.diagnose import ranked_table

    row = {"rank": 1, "index": 0, "layer": "/HardSwish", "per_channel": False, "low": -1.2e-5, "high": 3.4e-5,
           "ref_min": -1e-5, "ref_max": 2e-5, "clipped_fraction": 0.0, "range_used": 0.9, "local_sqnr_db": 30.0,
           "sqnr_db": 20.0, "cosine": 0.99}
    t = ranked_table([row])
    assert t["low"].iloc[0] == -1.2e-5 and t["ref max"].iloc[0] == 2e-5
    assert np.all(t[["low", "high", "ref min", "ref max"]].to_numpy() != 0)


def test_a_missing_contract_names_the_options_and_the_card():
    with pytest.raises(OptionError, match=r"no input contract for net.onnx \(given --bgr; missing --mean, --std, "
                                          r"--input-size\): pass --mean, --std and --input-size .* or put "
                                          r"net.onnx.calib.toml beside the model"):
        C.find(Path("net.onnx"), {"channel_order": "BGR"})


def test_an_fp16_compressed_ir_is_not_called_fp32(made, tmp_path):
    import openvino as ov

    ov.save_model(ov.Core().read_model(str(made / "net.xml")), str(tmp_path / "half.xml"), compress_to_fp16=True)
    result, _ = run(["quantize", "--model", str(tmp_path / "half.xml"), "--source", "noise", "--images", "4",
                     *STATED, "--out", str(tmp_path / "run"), "--record", str(tmp_path / "rows.jsonl"), "-q"])
    assert result.exit_code == 0, result.output
    assert "MB FP32 graph with FP16-compressed weights (as given) ->" in result.stdout
    assert json.loads((tmp_path / "run" / "quantize.json").read_text())["fp16_weights"] is True


def test_docs_give_the_kinds_of_every_command_as_their_help_does_and_the_run_layout():
    """docs/commands.md quotes the same kind tables the commands' --help quotes, and no doc points your own
    model's INT8 file at RUN/int8/int8.xml (runs write RUN/int8.xml, as zoo runs do)."""
    from calib.core.kinds import readers_text

    docs = Path(__file__).resolve().parents[1] / "docs"
    commands = (docs / "commands.md").read_text()
    assert all(readers_text(use) in commands for use in ("quantize", "diagnose", "run"))
    assert "int8/int8.xml" not in "".join(p.read_text() for p in docs.glob("*.md"))
    assert "runs/quantize/RUN/int8.xml" in (docs / "own-model.md").read_text()


def test_accuracy_aware_that_kept_every_layer_in_fp32_says_why(made, tmp_path, monkeypatch):
    """When NNCF keeps every quantized layer in FP32 (one validation image is worth more than --max-drop), the
    summary says so and what to change; whether NNCF gets there depends on the CPU's INT8 arithmetic, so NNCF's
    report is made to say it kept them all."""
    from calib.core import own

    real = own.quantize_own

    def kept_all(*args, **kwargs):
        row = real(*args, **kwargs)
        ops = row["quantize"].get("aa_quantized_ops") or 5
        row["quantize"] |= {"aa_kept_fp32_count": ops, "aa_quantized_ops": ops}
        return row

    monkeypatch.setattr(own, "quantize_own", kept_all)
    result, _ = run(["quantize", "--model", str(made / "net.xml"), "--source", "noise", "--images", "20", *STATED,
                     "--algo", "accuracy-aware", "--max-drop", "0.01", "--data-dir", str(made / "notest"),
                     "--out", str(tmp_path / "run"), "--record", str(tmp_path / "rows.jsonl")])
    assert result.exit_code == 0, result.output
    assert "every quantized layer was kept in FP32, so the INT8 file is no smaller" in result.stdout
    assert "give more validation images or a larger --max-drop" in result.stdout
