"""Output for people and pipes, and folders calib never clobbers, as typer's CliRunner (no terminal) sees them.

stdout carries the result alone (json.loads reads it and it equals the row on disk); progress and other libraries'
output go to stderr or the run's calib.log; default folders carry every condition, an existing one is refused,
--overwrite replaces only calib's files, and a failed run leaves nothing.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from calib.cli import app
from calib.core.runs import read_jsonl

runner = CliRunner()


@pytest.fixture
def noise_set(tmp_path):
    from calib.core.sources import generate_set

    return generate_set("noise", 2, 0, tmp_path / "noise-set")


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- stdout is the result
def test_zoo_list_is_whole_in_a_pipe_in_every_format():
    from calib.core.zoo import list_models

    names = list_models()
    text = invoke("zoo", "list")
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    for name in names:  # every name whole, on one line of its own
        assert sum(f" {name} " in line for line in lines) == 1, name
    rows = json.loads(invoke("zoo", "list", "--format", "json").stdout)
    assert [r["model"] for r in rows] == names and all(isinstance(r["params"], int) for r in rows)
    table = list(csv.DictReader(io.StringIO(invoke("zoo", "list", "--format", "csv").stdout)))
    assert [r["model"] for r in table] == names


def test_quantize_json_is_the_recorded_row_and_nothing_else(tmp_path, noise_set):
    record = tmp_path / "r.jsonl"
    result = invoke("quantize", "--model", "tiny_cnn", "--calib", noise_set, "--out", tmp_path / "q", "--record",
                    record, "--format", "json", "--evaluate")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)  # stdout is one JSON document: no NNCF bar or log line in it
    assert row == read_jsonl(record)[-1]
    assert row["int8_path"] == str(tmp_path / "q" / "int8.xml") and "int8_accuracy" in row
    assert json.loads((tmp_path / "q" / "quantize.json").read_text())["int8_path"] == row["int8_path"]
    assert "Statistics collection" not in result.output  # NNCF's bars went to the run's log
    assert "Statistics collection" in (tmp_path / "q" / "calib.log").read_text()
    from calib.core.drop import load_fit  # the label-free estimate, by the shipped fit
    from tests.conftest import TEST_PROBE_PER_CLASS

    fit = load_fit()
    assert row["probe_images"] == row["probe_per_class"] * 10 == TEST_PROBE_PER_CLASS * 10
    assert row["drop_fit"] == fit.id
    assert row["estimated_drop"] == pytest.approx(fit.intercept + fit.coef[0] * row["probe_kl"], abs=1e-5)


def test_quantize_text_is_a_short_summary_and_verbose_shows_nncf_on_stderr(tmp_path, noise_set):
    result = invoke("quantize", "--model", "tiny_cnn", "--calib", noise_set, "--out", tmp_path / "q", "--record",
                    tmp_path / "r.jsonl", "--verbose")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) <= 4 and "int8.xml" in result.stdout
    assert "estimated top-1 drop without labels" in result.stdout
    assert "Statistics collection" in result.stderr and "Statistics collection" not in result.stdout


def test_evaluate_and_zoo_eval_json_equal_the_rows_on_disk(tmp_path, noise_set):
    record = tmp_path / "r.jsonl"
    assert invoke("quantize", "--model", "tiny_cnn", "--calib", noise_set, "--out", tmp_path / "q", "--record",
                  record).exit_code == 0
    for args in (["evaluate", "--model", tmp_path / "q" / "int8.xml"], ["zoo", "eval", "--model", "tiny_cnn"]):
        result = invoke(*args, "--record", record, "--format", "json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == read_jsonl(record)[-1]
    text = invoke("evaluate", tmp_path / "q" / "int8.xml", "--record", record)  # the model by position still works
    assert text.exit_code == 0 and len(text.stdout.splitlines()) == 1
    assert "accuracy 0." in text.stdout  # the word and its value on one line


def test_sets_validate_formats(noise_set):
    row = json.loads(invoke("sets", "validate", noise_set, "--format", "json").stdout)
    assert row["images"] == 20 and row["per_class"]["cat"] == 2 and row["source"] == "noise"
    assert invoke("sets", "validate", noise_set).stdout.strip().endswith("role synthetic")


def test_help_never_cuts_option_names():
    import typer

    from tests.test_cli_help import ALL

    assert " eval " in invoke("zoo", "--help").stdout  # the group names its commands as they are called
    for path, cmd in ALL:
        result = runner.invoke(app, [*path, "--help"], terminal_width=60, env={"COLUMNS": "60"})
        assert result.exit_code == 0
        for param in cmd.params:
            if param.param_type_name == "option" and not param.hidden:
                assert all(opt in result.stdout for opt in param.opts), (path, param.opts)
    assert typer  # the tree comes from typer's click objects


# ---------------------------------------------------------------- progress
def test_progress_prints_a_line_every_few_seconds_off_a_terminal(monkeypatch, capsys):
    from calib.core import progress

    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.05)
    with progress.progress("work", 10) as advance:
        advance(4)
        time.sleep(0.3)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("work: 4/10 (40 %), ") and "elapsed" in line for line in lines)
    assert "left" in lines[-1]
    with progress.progress("quiet work", 10, quiet=True):
        time.sleep(0.2)
    assert capsys.readouterr().err == ""


def test_a_logged_step_ends_its_log_with_its_end_and_a_short_step_stays_silent(monkeypatch, capsys):
    from calib.core import progress

    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.05)
    with progress.progress("work", 10) as advance:
        time.sleep(0.2)
        advance(10)
    assert capsys.readouterr().err.splitlines()[-1].startswith("work: 10/10 (100 %), ")
    monkeypatch.setattr(progress, "HEARTBEAT_S", 60.0)
    with progress.progress("short", 10) as advance:
        advance(10)
    assert capsys.readouterr().err == ""


GRID = """
name = "out"
models = ["tiny_cnn"]
sources = ["noise"]
per_class = 2
probe_per_class = 2
seeds = [0, 1]
algos = ["default"]
subset_sizes = [0]
benchmark = false
"""


def test_study_run_shows_counts_one_line_per_error_and_a_summary(tmp_path, monkeypatch):
    import calib.study.cells as study_cells

    def boom(rc, out):
        if rc.cell.seed == 1:
            raise RuntimeError("boom in seed 1")
        return real(rc, out)

    real = study_cells.quantize_cell
    monkeypatch.setattr(study_cells, "quantize_cell", boom)
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    result = invoke("study", "run", grid, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: cell")]
    assert len(errors) == 1 and "boom in seed 1" in errors[0] and "tiny_cnn" in errors[0]
    assert "1 errors" in result.stdout and "2 ok" in result.stdout and len(result.stdout.splitlines()) <= 4
    fake = tmp_path / "not-a-folder"
    fake.write_text("x")
    refused = invoke("study", "run", grid, "--out", fake)
    assert refused.exit_code == 2 and "is a file" in refused.stderr


# ---------------------------------------------------------------- folders
def test_quantize_default_folder_names_every_condition_and_is_never_clobbered(tmp_path, monkeypatch, noise_set):
    monkeypatch.chdir(tmp_path)
    record = tmp_path / "r.jsonl"
    first = invoke("quantize", "--model", "tiny_cnn", "--calib", noise_set, "--record", record, "--format", "json")
    assert first.exit_code == 0, first.output
    out = Path(json.loads(first.stdout)["out"])
    assert out.parent == Path("runs/quantize")
    assert out.name.startswith("tiny_cnn-openvino-default-") and "-all-s0-" in out.name
    again = invoke("quantize", "--model", "tiny_cnn", "--calib", noise_set, "--record", record)
    assert again.exit_code == 2 and "already exists" in again.stderr and len(read_jsonl(record)) == 1
    other = invoke("quantize", "--model", "tiny_cnn", "--calib", noise_set, "--record", record, "--seed", "1",
                   "--subset-size", "10", "--no-fast-bias-correction", "--format", "json")
    name = Path(json.loads(other.stdout)["out"]).name
    assert "-n10-s1-" in name and name != out.name


def test_overwrite_replaces_only_what_calib_wrote(tmp_path, noise_set):
    out = tmp_path / "q"
    args = ["quantize", "--model", "tiny_cnn", "--calib", noise_set, "--out", out, "--record", tmp_path / "r.jsonl"]
    assert invoke(*args).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"int8.xml", "quantize.json", "manifest.json"} <= set(manifest["written"])
    (out / "notes.txt").write_text("mine")  # a user's file
    (out / "stale.json").write_text("{}")  # a file an earlier calib run wrote and this one does not
    manifest["written"].append("stale.json")
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert invoke(*args, "--overwrite").exit_code == 0
    assert (out / "notes.txt").read_text() == "mine" and not (out / "stale.json").exists()
    assert (out / "int8.xml").is_file()
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    refused = invoke("quantize", "--model", "tiny_cnn", "--calib", noise_set, "--out", stranger, "--overwrite")
    assert refused.exit_code == 2 and "not made by calib" in refused.stderr
    assert [p.name for p in stranger.iterdir()] == ["keep.txt"]


def test_a_failed_overwrite_gives_the_earlier_run_back(tmp_path, noise_set):
    from calib.core.folders import run_folder

    out = tmp_path / "run"
    with run_folder(out) as folder:
        (folder / "manifest.json").write_text("{}")
        (folder / "result.txt").write_text("first")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError), run_folder(out, overwrite=True) as folder:
        assert not (folder / "result.txt").exists()  # calib's files moved aside while the run works
        (folder / "result.txt").write_text("half")
        raise RuntimeError("killed")
    assert (out / "result.txt").read_text() == "first" and (out / "notes.txt").read_text() == "mine"
    with pytest.raises(RuntimeError), run_folder(tmp_path / "new") as folder:
        (folder / "manifest.json").write_text("{}")
        raise RuntimeError("failed")
    assert not (tmp_path / "new").exists()


def test_generate_overwrite_keeps_user_files_and_inversion_clash_is_found_before_any_image(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("generate", "--source", "noise", "--per-class", "1", "--out", "s").exit_code == 0
    (tmp_path / "s" / "README.txt").write_text("mine")
    refused = invoke("generate", "--source", "noise", "--per-class", "1", "--out", "s", "--overwrite")
    assert refused.exit_code == 2 and "README.txt" in refused.stderr
    assert (tmp_path / "s" / "README.txt").read_text() == "mine"

    from calib.core.sources import default_set_folder

    folder = default_set_folder("inversion", 1, 0, model="tiny_cnn", iterations=2)
    assert folder.name.startswith("inversion-tiny_cnn-1pc-s0-")
    assert default_set_folder("inversion", 1, 0).name == "inversion-resnet20-1pc-s0"
    folder.mkdir(parents=True)
    monkeypatch.setattr("calib.core.sources.inversion.invert_batch",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("images were made")))
    clash = invoke("generate", "--source", "inversion", "--per-class", "1", "--model", "tiny_cnn", "--iterations",
                   "2")
    assert clash.exit_code == 2 and "already exists" in clash.stderr


def test_show_has_a_default_out_and_no_padding_tiles(tmp_path, monkeypatch):
    from calib.core.sets import write_set

    monkeypatch.chdir(tmp_path)
    images = np.zeros((3, 32, 32, 3), np.uint8)  # black images: padding would be indistinguishable from them
    path = write_set(tmp_path / "few", images, np.array([0, 0, 1]), ["a", "b", "c"], "test", {})
    result = invoke("show", path, "--per-class", "4")
    assert result.exit_code == 0, result.output
    png = tmp_path / "runs" / "show" / "few.png"
    assert png.is_file() and str(png.relative_to(tmp_path)) in result.stdout
    with Image.open(png) as im:
        grid = np.asarray(im.convert("L"))
    from calib.core.show import GAP, HEADER, MARGIN

    step = 64 + 2 * GAP
    tile = lambda row, col: grid[HEADER + row * step: HEADER + row * step + 64,  # noqa: E731
                                 MARGIN + col * step: MARGIN + col * step + 64]
    assert (tile(0, 1) == 0).all()  # class 0 has two images
    assert (tile(1, 1) == 255).all() and (tile(2, 0) == 255).all()  # no image there: white, not a black tile
    assert invoke("show", path).exit_code == 2  # the default file exists now: refused, not replaced
