"""The study runner: expansion, resume, error rows, a real SIGKILL, and the Ray executor."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from calibration.runs import read_jsonl
from experiments.grid import expand, load_grid
from experiments.report import write_report
from experiments.runner import run_study
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
    ext = expand(load_grid(REPO / "experiments" / "extended.toml"))
    assert {c.seed for c in ext} >= {0, 1, 2} and {c.engine for c in ext} == {"openvino", "onnxruntime"}
    assert {c.fuse for c in ext if c.model == "repvgg_a2"} == {True, False}
    assert {c.fuse for c in ext if c.model == "resnet20"} == {True}


def test_run_skips_missing_teacher_and_resumes_without_duplicates(tmp_path):
    grid = write_grid(tmp_path)
    first = run_study(grid, tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run" / "rows.jsonl")
    assert first["cells"] == len(rows) == 1 + 3 * 2
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert {r["source"] for r in skipped} == {"stylegan2-ada"} and "CALIB_STYLEGAN2_PKL" in skipped[0]["reason"]
    second = run_study(grid, tmp_path / "run", progress=False)
    assert second["ran"] == 0 and len(read_jsonl(tmp_path / "run" / "rows.jsonl")) == len(rows)
    tables = write_report(tmp_path / "run")
    assert any(p.name == "table1_openvino.md" for p in tables)
    assert (tmp_path / "run" / "grid.toml").exists() and list((tmp_path / "run").glob("manifest-*.json"))


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
    deadline = time.time() + 120
    while time.time() < deadline and len(read_jsonl(rows_file)) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(read_jsonl(rows_file)) < 7  # killed part-way
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    run_study(grid, tmp_path / "clean", progress=False)
    key = lambda r: (r["cell"], r["status"], r.get("int8_accuracy"))  # noqa: E731
    killed, clean = read_jsonl(rows_file), read_jsonl(tmp_path / "clean" / "rows.jsonl")
    assert len({r["cell"] for r in killed}) == len(killed) == 7
    assert sorted(map(key, killed)) == sorted(map(key, clean))


def test_torn_last_line_is_repaired(tmp_path):
    from experiments.runner import repair_rows

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"cell": "a"}) + "\n" + '{"cell": "b", "sta')
    repair_rows(path)
    assert read_jsonl(path) == [{"cell": "a"}] and path.read_text().endswith("\n")


@pytest.mark.slow
def test_ray_executor_runs_two_cells(tmp_path):
    ray = pytest.importorskip("ray")
    grid = write_grid(tmp_path, GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["noise"]')
                      .replace("seeds = [0, 1]", "seeds = [0]"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("CALIB_")},
                          "working_dir": None})
    try:
        summary = run_study(grid, tmp_path / "ray", executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert summary["cells"] == 2 and summary["ok"] == 2


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
