"""Parallel execution: a Ray cluster with 2 workers and a pool of 2 local processes give the same rows as one
local process, sets are made once by the driver, and speed is timed with nothing else running."""

import os

import pytest

from calib.core.runs import read_jsonl
from calib.study.rows import newest_rows
from calib.study.runner import run_study

GRID = """
name = "parallel"
models = ["tiny_cnn"]
sources = ["noise", "fractal"]
per_class = 2
probe_per_class = 2
seeds = [0, 1]
algos = ["default"]
subset_sizes = [0]
benchmark = true
benchmark_seconds = 0.1
[benchmark_only]
seed = [0]
source = ["noise"]
[source_options.fractal]
variants = 2
"""
SAME = ("status", "int8_accuracy", "int8_predictions", "fp32_accuracy", "fp32_predictions", "calib_hash",
        "calib_set", "subset_size_images", "timed")


def rows_of(run):
    rows = newest_rows(read_jsonl(run / "rows.jsonl"))
    return {cell: {k: r.get(k) for k in SAME} for cell, r in rows.items()}, list(rows.values())


def assert_speed_was_timed_alone(rows):
    """No cell did any work (nor timed anything) while a timed cell's speed was measured."""
    timed = [r for r in rows if r["timed"]]
    assert len(timed) == 2 and all(r["int8_fps" if r["kind"] == "quantize" else "fp32_fps"] > 0 for r in timed)
    spans = [(r["cell"], r["started_at"], r["work_finished_at"]) for r in rows]
    spans += [(r["cell"] + " speed", r["speed_started_at"], r["finished_at"]) for r in timed]
    for t in timed:
        start, end = t["speed_started_at"], t["finished_at"]
        for name, s, e in spans:
            if name != t["cell"] + " speed":
                assert e <= start or s >= end, (t["cell"], name)


@pytest.mark.slow
def test_ray_and_worker_processes_give_the_same_rows_as_one_process(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    import calib.study.grid

    monkeypatch.setattr(calib.study.grid, "MIN_BENCHMARK_SECONDS", 0.1)  # committed grids: 5 x 1 s at least
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    local = run_study(grid, tmp_path / "local", progress=False)
    assert local["ok"] == local["cells"] == 1 + 2 * 2
    expected, _ = rows_of(tmp_path / "local")
    assert all(r["int8_predictions"] for r in expected.values() if r["calib_set"])  # accuracies, not only speed

    pool = run_study(grid, tmp_path / "pool", jobs=2, progress=False)
    got, rows = rows_of(tmp_path / "pool")
    assert pool["ok"] == 5 and got == expected
    assert_speed_was_timed_alone(rows)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("CALIB_")}})
    try:
        summary = run_study(grid, tmp_path / "ray", executor="ray", progress=False)
    finally:
        ray.shutdown()
    got, rows = rows_of(tmp_path / "ray")
    assert summary["ok"] == 5 and got == expected
    assert_speed_was_timed_alone(rows)
    # every set was made once, by the driver, before the cells ran: no staging folder is left anywhere (four
    # calibration sets and the label-free estimate's probe)
    for run in ("local", "pool", "ray"):
        names = sorted(p.name for p in (tmp_path / run / "sets").iterdir())
        assert len(names) == 5 and not any(n.startswith(".") for n in names)
        assert sum(n.startswith("distylegan-2pc-s") for n in names) == 1
