"""Benchmark commands: every engine under one protocol in one table, source speed, the evaluate/benchmark_app
ratio at equal settings, and the per-image predictions the study rows carry."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from calib.cli import app
from calib.core.benchmark import benchmark_models, benchmark_sources, compare_engines, evaluate_vs_benchmark_app
from calib.core.engines import Protocol, list_engines
from calib.core.runs import predictions_from_str, read_jsonl
from calib.core.sources import generate_set
from calib.core.speed import ratio_interval

runner = CliRunner()
FAST = Protocol(warmup_s=0.05, duration_s=0.1, repeats=3)


@pytest.fixture(scope="module")
def noise_set(tmp_path_factory):
    return generate_set("noise", 2, 0, tmp_path_factory.mktemp("sets") / "noise")


def test_compare_engines_puts_every_engine_in_one_table_under_one_protocol(tmp_path, noise_set, cifar_dir):
    rows = compare_engines("tiny_cnn", noise_set, FAST, tmp_path, data_dir=cifar_dir,
                           record_path=tmp_path / "r.jsonl")
    assert [r["engine"] for r in rows] == list_engines()
    assert len({r["protocol_text"] for r in rows}) == 1
    assert "latency: one synchronous batch-1" in rows[0]["protocol_text"]
    # the same FP32 weights under every engine: identical test accuracy
    assert len({round(r["fp32_accuracy"], 6) for r in rows}) == 1
    for r in rows:
        assert r["fp32_fps"] > 0 and r["fp32_latency_fps"] > 0 and len(r["fp32_fps_runs"]) == 3
        if r["engine"] in list_engines(int8=True):
            assert r["int8_fps"] > 0 and r["int8_latency_fps"] > 0 and 0 <= r["int8_agreement"] <= 1
            assert r["speedup"] == pytest.approx(r["int8_fps"] / r["fp32_fps"]) and r["subset_size_images"] == 20
        else:
            assert "int8_accuracy" not in r and "int8_fps" not in r
    assert len(read_jsonl(tmp_path / "r.jsonl")) == len(rows)


def test_benchmark_models_times_pytorch_under_the_same_protocol(tmp_path):
    rows = benchmark_models(["tiny_cnn"], list_engines(), FAST, tmp_path, record_path=tmp_path / "r.jsonl")
    assert {r["engine"] for r in rows} == set(list_engines())
    for r in rows:
        assert r["protocol"]["repeats"] == 3 and len(r["fp32_fps_runs"]) == 3 and r["fp32_fps"] > 0
        assert r["pytorch_fps"] > 0 and r["pytorch_latency_fps"] > 0
        if r["engine"] in list_engines(int8=True):
            assert r["int8_fps"] > 0 and r["int8_bytes"] > 0
            assert r["speedup_low"] <= r["speedup"] <= r["speedup_high"] and len(r["speedup_runs"]) == 3


def test_a_ratio_of_paired_repeats_is_the_median_ratio_with_a_bootstrap_interval():
    """Closed forms: equal ratios leave no interval; the median of the per-repeat ratios is the ratio; one slow
    repeat of both (a slow spell of the machine, hitting both turns) moves neither."""
    same = ratio_interval([100, 200, 400], [200, 400, 800])
    assert (same["ratio"], same["ratio_low"], same["ratio_high"]) == (2.0, 2.0, 2.0)
    mixed = ratio_interval([100, 100, 100, 100, 100], [150, 200, 200, 250, 200])
    assert mixed["ratio"] == 2.0 and mixed["ratio_low"] <= 2.0 <= mixed["ratio_high"]
    assert mixed["ratio_runs"] == [1.5, 2.0, 2.0, 2.5, 2.0] and 1.5 <= mixed["ratio_low"] and mixed["ratio_high"] <= 2.5
    assert ratio_interval([100, 10, 100], [200, 20, 200])["ratio"] == 2.0


def test_benchmark_sources_records_the_images_it_made(tmp_path):
    r = benchmark_sources(fractal_images=20, inversion_images=10, inversion_iterations=1, model="tiny_cnn",
                          record_path=tmp_path / "r.jsonl")
    assert r["fractal_images"] == 20 and r["inversion_images"] == r["inversion_batch"] == 10
    assert r["fractal_images_per_s"] > 0 and r["inversion_s_per_image"] > 0


@pytest.mark.slow
def test_evaluate_vs_benchmark_app_compares_like_with_like(tmp_path, cifar_dir):
    """benchmark_app reports the device configuration it compiled with; it must equal the evaluator's."""
    r = evaluate_vs_benchmark_app("tiny_cnn", tmp_path, cifar_dir, seconds=1, batch=8, repeats=1,
                                  record_path=tmp_path / "r.jsonl")
    assert r["ratio"] == pytest.approx(r["eval_fps"] / r["benchmark_app_fps"], rel=1e-3)  # one repeat
    assert r["ratio_low"] == r["ratio"] == r["ratio_high"]
    assert r["benchmark_app_fps"] > 0 and r["eval_fps"] > 0 and r["batch"] == 8
    assert "-b 8" in r["benchmark_app_command"] and f"-nireq {r['requests']}" in r["benchmark_app_command"]
    assert r["INFERENCE_PRECISION_HINT"] == "f32" and int(r["NUM_STREAMS"]) >= 1


@pytest.mark.slow
def test_benchmark_engines_command_states_which_number_is_which(tmp_path, noise_set, cifar_dir):
    result = runner.invoke(app, ["benchmark", "engines", "--calib", str(noise_set), "--model", "tiny_cnn",
                                 "--duration", "0.5", "--repeats", "3", "--out", str(tmp_path / "e"),
                                 "--data-dir", str(cifar_dir), "--record", str(tmp_path / "r.jsonl")],
                           env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for engine in list_engines():
        assert engine in text
    assert "throughput:" in text and "latency: one synchronous batch-1 request" in text


def quick_speed(monkeypatch):
    """Let a test grid time in 5 x 0.05 s (committed grids keep to the 5 x 1 s floor)."""
    import calib.study.grid

    monkeypatch.setattr(calib.study.grid, "MIN_BENCHMARK_SECONDS", 0.05)


def test_study_rows_carry_per_image_predictions(tmp_path, cifar_dir, monkeypatch):
    from calib.core.data import load_split
    from calib.study.runner import run_study

    quick_speed(monkeypatch)
    grid = tmp_path / "grid.toml"
    grid.write_text('name = "p"\nmodels = ["tiny_cnn"]\nsources = ["noise"]\nper_class = 2\nprobe_per_class = 2\n'
                    'seeds = [0]\n'
                    'benchmark = true\nbenchmark_seconds = 0.05\n')
    run_study(grid, tmp_path / "run", progress=False)
    rows = {r["kind"]: r for r in read_jsonl(tmp_path / "run" / "rows.jsonl")}
    assert rows["baseline"]["status"] == "ok" and rows["quantize"]["status"] == "ok", json.dumps(rows)[:2000]
    from tests.test_study import row_test_indices

    all_labels = load_split("test", cifar_dir).labels
    for kind, prec in (("baseline", "fp32"), ("quantize", "int8")):
        row = rows[kind]
        preds = predictions_from_str(row[f"{prec}_predictions"])
        labels = all_labels[row_test_indices(tmp_path / "run", row)]  # the images the model is tested on
        assert row["test_images"] == len(preds) == len(labels)
        assert row[f"{prec}_accuracy"] == pytest.approx(float(np.mean(preds == labels)))
    assert rows["baseline"]["test_indices_sha256"] == rows["quantize"]["test_indices_sha256"]
    base = rows["baseline"]
    assert base["pytorch_fps"] > 0 and base["pytorch_latency_fps"] > 0 and "throughput:" in base["speed_protocol"]


def test_equal_models_share_one_timing_taken_alone(tmp_path, monkeypatch):
    """Default and accuracy-aware INT8 that NNCF returned as the same model (same predictions) are timed once;
    every timing has 5 repeats with median, min, max and spread; the memory sampler takes no sample while a
    timing runs."""
    import time

    import calib.study.runner as runner
    from calib.study.report import load_rows, tables

    quick_speed(monkeypatch)
    samples = []

    class Watched(runner.PeakMemory):
        def __init__(self):
            super().__init__(interval_s=0.01)

        def _sample(self):
            samples.append(time.time())
            super()._sample()

    monkeypatch.setattr(runner, "PeakMemory", Watched)
    grid = tmp_path / "grid.toml"
    grid.write_text('name = "s"\nmodels = ["tiny_cnn"]\nsources = ["noise"]\nper_class = 2\nprobe_per_class = 2\n'
                    'seeds = [0]\n'
                    'algos = ["default", "accuracy-aware"]\naccuracy_aware_models = ["tiny_cnn"]\nmax_drop = 0.9\n'
                    'benchmark = true\nbenchmark_seconds = 0.05\nbenchmark_repeats = 5\n')
    summary = runner.run_study(grid, tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run" / "rows.jsonl")
    assert summary["ok"] == len(rows) == 3, rows
    default, aware = (next(r for r in rows if r.get("algo") == a and r["kind"] == "quantize")
                      for a in ("default", "accuracy-aware"))
    assert default["int8_predictions"] == aware["int8_predictions"]  # NNCF kept the default model
    assert default["int8_model_fingerprint"] == aware["int8_model_fingerprint"]
    assert default["speed_timed_by"] == aware["speed_timed_by"] and default["int8_fps"] == aware["int8_fps"]
    timings = read_jsonl(tmp_path / "run" / "speed.jsonl")
    fp32_fingerprint = next(r for r in rows if r["kind"] == "baseline")["fp32_model_fingerprint"]
    assert sorted(t["key"]["what"].split(":")[0] for t in timings) == sorted(
        ["pytorch", default["int8_model_fingerprint"], fp32_fingerprint, "pair"])  # one INT8 model: timed once
    pair = next(t for t in timings if t["key"]["what"].startswith("pair:"))
    assert pair["key"]["what"] == f"pair:{fp32_fingerprint}:{default['int8_model_fingerprint']}"
    for r in (default, aware):  # the speed-up: FP32 and INT8 timed in turns, an interval over the repeat pairs
        assert r["int8_speedup_repeats"] == len(r["int8_speedup_runs"]) == 5
        assert r["int8_speedup_low"] <= r["int8_speedup"] <= r["int8_speedup_high"]
        assert r["int8_speedup"] == pytest.approx(sorted(
            i / f for f, i in zip(pair["result"]["fp32_runs"], pair["result"]["int8_runs"]))[2], abs=1e-3)
    for r in rows:
        for prefix in [p for p in ("fp32", "int8", "pytorch") if f"{p}_fps" in r]:
            for unit in ("fps", "latency_fps"):
                runs, med = r[f"{prefix}_{unit}_runs"], r[f"{prefix}_{unit}"]
                assert len(runs) == 5 and r[f"{prefix}_{unit}_min"] <= med <= r[f"{prefix}_{unit}_max"]
                assert r[f"{prefix}_{unit}_spread"] == pytest.approx((max(runs) - min(runs)) / med, abs=1e-3)
    spans = [(r["speed_started_at"], r["finished_at"]) for r in rows]
    assert len(samples) > 10  # the sampler ran during the work
    assert not [t for t in samples for a, b in spans if a <= t <= b]  # and never while timing
    speed = tables(load_rows(tmp_path / "run"))["speed_openvino"]
    assert len(speed) == 2 and speed.cells.tolist() == [1, 2]  # FP32 once, the shared INT8 timing for two cells
    assert speed.fps_spread.notna().all() and (speed.repeats == 5).all()
