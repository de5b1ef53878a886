"""The study runner: grids, locations, filters, resume and retry, error rows, sets made once, a real SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from calibration.cli import app
from calibration.errors import CalibError
from calibration.runs import read_jsonl
from experiments.grid import expand, load_grid
from experiments.report import write_report
from experiments.runner import newest_rows, run_study
from tests.conftest import REPO

GRID = """
name = "t"
models = ["tiny_cnn"]
sources = ["noise", "fractal", "stylegan2-ada"]
per_class = 2
seeds = [0, 1]
algos = ["default"]
subset_sizes = [0]
benchmark = false
[source_options.fractal]
variants = 2
"""


def write_grid(tmp_path, text=GRID):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


def test_shipped_grids_expand():
    ref = expand(load_grid(REPO / "experiments" / "reference.toml"))
    assert sum(c.kind == "baseline" for c in ref) == 5
    assert sum(c.kind == "quantize" and c.algo == "default" for c in ref) == 5 * 4
    assert {c.model for c in ref if c.algo == "accuracy-aware"} == {"shufflenetv2_x2_0", "repvgg_a2"}
    assert {c.max_drop for c in ref if c.algo == "accuracy-aware"} == {0.02}  # as in the reference study
    ext = expand(load_grid(REPO / "experiments" / "extended.toml"))
    assert {c.seed for c in ext} >= {0, 1, 2} and {c.engine for c in ext} == {"openvino", "onnxruntime"}
    assert {c.fuse for c in ext if c.model == "repvgg_a2"} == {True, False}
    assert {c.fuse for c in ext if c.model == "resnet20"} == {True}


def test_official_grids_expand():
    official = load_grid(REPO / "experiments" / "official.toml")
    cells = expand(official)
    five = {"resnet20", "resnet32", "resnet44", "resnet56", "shufflenetv2_x0_5"}
    assert {c.model for c in cells} == five and {c.seed for c in cells} == {0, 1, 2}
    assert {(c.per_class, c.subset_size) for c in cells if c.kind == "quantize"} == {(30, 300)}
    assert {c.max_drop for c in cells if c.algo == "accuracy-aware"} == {0.02}
    for model in ("resnet20", "resnet56", "shufflenetv2_x0_5"):  # every source, both algorithms, both engines
        mine = {(c.source, c.algo, c.engine) for c in cells if c.model == model and c.kind == "quantize"}
        assert mine == {(s, a, e) for s in official.sources for a, e in
                        (("default", "openvino"), ("accuracy-aware", "openvino"), ("default", "onnxruntime"))}
    assert {c.source for c in cells if c.model == "resnet32" and c.kind == "quantize"} == {"cifar10", "fractal"}
    timed = [c for c in cells if official.times(c) and c.kind == "quantize"]
    assert {(c.seed, c.source) for c in timed} == {(0, "cifar10")} and len(timed) == 5 * 2 + 3
    full = expand(load_grid(REPO / "experiments" / "official-full.toml"))
    assert {c.model for c in full if c.source == "inversion"} == five and len(full) > len(cells)
    assert (official.calibration_batch, official.ranking_subset_size) == (30, 300)


def test_pool_starts_the_long_cells_first():
    from experiments.grid import Cell
    from experiments.runner import longest_first

    cells = [Cell("baseline", "resnet56"), Cell("quantize", "resnet20", "onnxruntime", "noise"),
             Cell("quantize", "resnet20", source="noise"), Cell("quantize", "resnet56", source="noise"),
             Cell("quantize", "resnet20", source="noise", algo="accuracy-aware"),
             Cell("quantize", "resnet56", source="noise", algo="accuracy-aware")]
    assert longest_first(cells) == [cells[i] for i in (5, 4, 3, 2, 1, 0)]


def test_grid_exclude_and_benchmark_only_are_checked(tmp_path):
    grid = load_grid(write_grid(tmp_path, GRID + '[[exclude]]\nsource = ["fractal"]\nseed = [1]\n'))
    assert {(c.source, c.seed) for c in expand(grid) if c.kind == "quantize"} == {
        ("noise", 0), ("noise", 1), ("fractal", 0), ("stylegan2-ada", 0), ("stylegan2-ada", 1)}
    with pytest.raises(CalibError, match="exclude entries map cell axes"):
        load_grid(write_grid(tmp_path, GRID + '[[exclude]]\nsauce = ["fractal"]\n'))
    with pytest.raises(CalibError, match="unknown models or sources"):
        load_grid(write_grid(tmp_path, 'benchmark_only = {source = ["fractl"]}\n' + GRID))


def test_grid_locations_expand_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "w").mkdir()
    text = 'data_dir = "${MY_DATA:-%s}"\nweights_dir = "${MY_WEIGHTS}"\n' % (tmp_path / "missing") + GRID
    grid = load_grid(write_grid(tmp_path, text))
    monkeypatch.delenv("MY_WEIGHTS", raising=False)
    assert grid.weights_path() is None  # unset and no default: the usual order applies
    with pytest.raises(CalibError, match="is not a folder"):
        grid.data_path()
    monkeypatch.setenv("MY_DATA", "w")
    monkeypatch.chdir(tmp_path)  # relative paths are taken from the current directory
    assert grid.data_path() == tmp_path / "w"


def test_run_uses_the_grids_data_and_weights(tmp_path, monkeypatch, cifar_dir, weights_dir):
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("CALIB_CIFAR10_DIR", str(tmp_path / "nothing-here"))
    text = f'data_dir = "{cifar_dir}"\nweights_dir = "{weights_dir}"\n' + (
        GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["cifar10"]').replace("seeds = [0, 1]", "seeds = [0]")
        .replace('algos = ["default"]', 'algos = ["default", "accuracy-aware"]\naccuracy_aware_models = ["tiny_cnn"]\n'
                 'ranking_subset_size = 7\ncalibration_batch = 4'))
    summary = run_study(write_grid(tmp_path, text), tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run" / "rows.jsonl")
    assert summary["ok"] == 3, rows
    # the grid's NNCF options reach the cells
    assert {(r["algo"], r.get("ranking_subset_images"), r["calibration_batch"]) for r in rows
            if r["kind"] == "quantize"} == {("default", None, 4), ("accuracy-aware", 7, 4)}
    assert {r["data_dir"] for r in rows} == {str(cifar_dir)} and all(str(weights_dir) in r["weights"] for r in rows)
    q = next(r for r in rows if r["kind"] == "quantize")
    assert (tmp_path / "run" / q["calib_set"] / "manifest.json").exists()
    assert json.loads((tmp_path / "run" / "test_labels.json").read_text())["images"] == 80


def test_unknown_filter_names_are_one_clear_error(tmp_path):
    grid = write_grid(tmp_path)
    with pytest.raises(CalibError, match="--models tiny_cnnn: not in grid 't'"):
        run_study(grid, tmp_path / "run", models=["tiny_cnnn"], progress=False)
    with pytest.raises(CalibError, match="--sources noize: not in grid"):
        run_study(grid, tmp_path / "run", sources=["noise", "noize"], progress=False)
    assert not (tmp_path / "run").exists()  # nothing written
    result = CliRunner().invoke(app, ["study", "run", str(grid), "--out", str(tmp_path / "run"), "--sources", "noize"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1 and "noize" in result.output


def test_run_skips_missing_teacher_and_retries_skipped_cells(tmp_path):
    grid = write_grid(tmp_path)
    first = run_study(grid, tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run" / "rows.jsonl")
    assert first["cells"] == len(rows) == 1 + 3 * 2
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert {r["source"] for r in skipped} == {"stylegan2-ada"} and "CALIB_STYLEGAN2_PKL" in skipped[0]["reason"]
    second = run_study(grid, tmp_path / "run", progress=False)  # ok cells are done; skipped ones are tried again
    assert second["ran"] == 2 and second["ok"] == first["ok"] and second["skipped"] == 2
    assert read_jsonl(tmp_path / "run" / "rows.jsonl") == rows  # skipped again for the same reason: no new row
    tables = write_report(tmp_path / "run")
    assert any(p.name == "table1_openvino.md" for p in tables)
    assert (tmp_path / "run" / "grid.toml").exists() and list((tmp_path / "run").glob("manifest-*.json"))


def test_cells_without_weights_run_once_weights_appear(tmp_path, monkeypatch, weights_dir):
    grid = write_grid(tmp_path, GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["noise"]'))
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    first = run_study(grid, tmp_path / "run", progress=False)
    assert first["skipped"] == 2 and first["ok"] == 1  # the baseline runs with random weights (speed only)
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(weights_dir))
    second = run_study(grid, tmp_path / "run", progress=False)
    assert second["ran"] == 2 and second["ok"] == 3 and second["skipped"] == 0
    from experiments.report import load_rows

    df = load_rows(tmp_path / "run")  # the newest row of each cell counts
    assert len(df) == 3 and (df.status == "ok").all()


def test_set_generation_is_collision_free(tmp_path):
    """Several workers making the same set at once: one complete set, nothing removed under anyone."""
    from concurrent.futures import ThreadPoolExecutor

    from calibration.sets import read_set
    from experiments.runner import _generate_once

    folder = tmp_path / "sets" / "noise-2pc-s0-x"
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: _generate_once(folder, "noise", 2, 0, {}), range(4)))
    assert made == [folder] * 4 and len(read_set(folder)) == 20
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left behind


def test_failing_cell_records_an_error_row_and_the_run_goes_on(tmp_path, monkeypatch):
    import experiments.runner as runner

    real = runner._quantize_cell

    def flaky(grid, cell, *a, **k):
        if cell.source == "fractal":
            raise RuntimeError("boom")
        return real(grid, cell, *a, **k)

    monkeypatch.setattr(runner, "_quantize_cell", flaky)
    summary = run_study(write_grid(tmp_path), tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run" / "rows.jsonl")
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 2 and all("boom" in r["reason"] for r in errors)
    assert summary["ok"] == 1 + 2  # the baseline and both noise cells still ran


@pytest.mark.slow
def test_sigkill_mid_run_resumes_to_the_same_table(tmp_path):
    grid = write_grid(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "calibration.cli", "study", "run", str(grid), "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_file = tmp_path / "killed" / "rows.jsonl"
    ok = lambda: [r for r in read_jsonl(rows_file) if r["status"] == "ok"]  # noqa: E731
    deadline = time.time() + 120
    while time.time() < deadline and len(ok()) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(ok()) < 5  # killed part-way: a baseline and four quantize cells can be ok
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    run_study(grid, tmp_path / "clean", progress=False)
    key = lambda r: (r["cell"], r["status"], r.get("int8_accuracy"), r.get("int8_predictions"))  # noqa: E731
    killed, clean = read_jsonl(rows_file), read_jsonl(tmp_path / "clean" / "rows.jsonl")
    assert len({r["cell"] for r in ok()}) == len(ok()) == 5  # no ok cell ran twice
    # skipped cells (no teacher) were tried again on resume; the newest row of every cell is the same table
    assert sorted(map(key, newest_rows(killed).values())) == sorted(map(key, clean))


def test_each_models_fp32_file_is_exported_once_and_shared(tmp_path):
    grid = write_grid(tmp_path, GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["noise", "fractal"]')
                      .replace('algos = ["default"]', 'algos = ["default"]\nengines = ["openvino", "onnxruntime"]'))
    run_study(grid, tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run" / "rows.jsonl")
    assert len(rows) == 2 * 5 and all(r["status"] == "ok" for r in rows)
    for suffix in ("xml", "onnx"):
        exported = sorted((tmp_path / "run" / "models").rglob(f"fp32.{suffix}"))
        assert [p.parent.parent.name for p in exported] == ["fp32"]  # one file, in the shared folder
        baseline = next(r for r in rows if r["kind"] == "baseline" and r["model_file"].endswith(suffix))
        assert (tmp_path / "run" / baseline["model_file"]) == exported[0]
    assert not any(p.name.startswith(".") for p in exported[0].parent.parent.iterdir())  # no staging left


def test_torn_last_line_is_repaired(tmp_path):
    from experiments.runner import repair_rows

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"cell": "a"}) + "\n" + '{"cell": "b", "sta')
    repair_rows(path)
    assert read_jsonl(path) == [{"cell": "a"}] and path.read_text().endswith("\n")


def test_report_of_a_run_without_failures(tmp_path):
    import pandas as pd

    from experiments.report import tables

    rows = [dict(kind="baseline", status="ok", model="m", engine="openvino", fp32_accuracy=0.9, fp32_fps=100.0),
            dict(kind="quantize", status="ok", model="m", engine="openvino", source="noise", algo="default",
                 fuse=True, seed=0, subset_size_images=32, fast_bias_correction=True, int8_accuracy=0.8)]
    out = tables(pd.DataFrame(rows))
    assert out["not_ok"].empty and out["long_openvino"].delta_to_fp32.iloc[0] == pytest.approx(-0.1)


def test_models_without_weights_get_speed_cells_only(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    grid = write_grid(tmp_path, GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["noise"]')
                      .replace("seeds = [0, 1]", "seeds = [0]").replace("benchmark = false",
                                                                         "benchmark = true\nbenchmark_seconds = 0.1"))
    run_study(grid, tmp_path / "run", progress=False)
    rows = {r["kind"]: r for r in read_jsonl(tmp_path / "run" / "rows.jsonl")}
    assert rows["quantize"]["status"] == "ok" and rows["quantize"]["int8_fps"] > 0
    assert "int8_accuracy" not in rows["quantize"] and rows["quantize"]["trained_weights"] is False
    assert "fp32_accuracy" not in rows["baseline"] and rows["baseline"]["fp32_fps"] > 0


def test_independent_nncf_check_agrees_with_the_study(tmp_path):
    """`calib study check`: NNCF and OpenVINO called directly on the row's set, subset and options."""
    grid = write_grid(tmp_path, GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["noise"]')
                      .replace("subset_sizes = [0]", "subset_sizes = [15]"))
    run_study(grid, tmp_path / "run", progress=False)
    result = CliRunner().invoke(app, ["study", "check", str(tmp_path / "run"), "--cells", "0"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "run" / "check.csv")
    assert len(table) == 2 and (table.subset_size_images == 15).all()
    assert (table.abs_difference <= 0.003).all() and table.within_tolerance.all()


def test_independent_check_follows_the_cells_calibration_batch(tmp_path):
    """Cells calibrated in items of 5 images are redone the same way (or with batch 1 on request)."""
    grid = write_grid(tmp_path, GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["noise"]')
                      .replace("seeds = [0, 1]", "seeds = [0]").replace("subset_sizes = [0]", "subset_sizes = [15]")
                      .replace('algos = ["default"]', 'algos = ["default"]\ncalibration_batch = 5'))
    run_study(grid, tmp_path / "run", progress=False)
    for flag, batch in (("--as-run", 5), ("--batch-1", 1)):
        out = tmp_path / f"check{flag}.csv"
        result = CliRunner().invoke(app, ["study", "check", str(tmp_path / "run"), "--cells", "0", flag,
                                          "--out", str(out)])
        table = pd.read_csv(out)
        assert len(table) == 1 and table.calibration_batch.tolist() == [batch], result.output
    assert pd.read_csv(tmp_path / "check--as-run.csv").abs_difference.tolist() == [0.0]
