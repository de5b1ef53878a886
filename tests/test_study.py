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

from calib.cli import app
from calib.core.errors import CalibError
from calib.core.runs import read_jsonl
from calib.study.grid import Cell, Selection, expand, load_grid
from calib.study.report import write_report
from calib.study.rows import newest_rows
from calib.study.runner import run_study
from tests.conftest import REPO

GRID = """
name = "t"
models = ["tiny_cnn"]
sources = ["noise", "fractal", "stylegan2-ada"]
per_class = 2
probe_per_class = 2
seeds = [0, 1]
algos = ["default"]
subset_sizes = [0]
benchmark = false
[source_options.fractal]
variants = 2
"""


QUICK_SPEED = "benchmark = true\nbenchmark_seconds = 0.05\nbenchmark_repeats = 5"


def quick_speed(monkeypatch):
    """Let a test grid time in 5 x 0.05 s (committed grids keep to the 5 x 1 s floor)."""
    import calib.study.grid

    monkeypatch.setattr(calib.study.grid, "MIN_BENCHMARK_SECONDS", 0.05)


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
    # per model: NNCF default (native and AVX2-capped) and ONNX Runtime; accuracy-aware for three of them
    assert {(c.seed, c.source) for c in timed} == {(0, "cifar10")} and len(timed) == 5 * 3 + 3
    assert {c.isa for c in cells if c.engine == "openvino"} == {"native", "avx2"}
    assert {c.isa for c in cells if c.algo == "accuracy-aware" or c.engine == "onnxruntime"} == {"native"}
    full = expand(load_grid(REPO / "experiments" / "official-full.toml"))
    assert {c.model for c in full if c.source == "inversion"} == five and len(full) > len(cells)
    assert (official.calibration_batch, official.ranking_subset_size) == (30, 300)


def test_pool_starts_the_long_cells_first():
    from calib.study.schedule import longest_first

    cells = [Cell("baseline", "resnet56"), Cell("quantize", "resnet20", "onnxruntime", "noise"),
             Cell("quantize", "resnet20", source="noise"), Cell("quantize", "resnet56", source="noise"),
             Cell("quantize", "resnet20", source="noise", algo="accuracy-aware"),
             Cell("quantize", "resnet56", source="noise", algo="accuracy-aware")]
    assert longest_first(cells) == [cells[i] for i in (5, 4, 3, 2, 1, 0)]


def test_select_keeps_baselines_and_refuses_values_the_grid_lacks():
    from calib.study.grid import select

    grid = load_grid(REPO / "experiments" / "families.toml")
    every = expand(grid)
    some = select(grid, Selection(models=("repvgg_a0",), algos=("default",), seeds=(0,)))
    baselines = [c for c in every if c.kind == "baseline" and c.model == "repvgg_a0"]
    assert [c for c in some if c.kind == "baseline"] == baselines
    assert {(c.algo, c.seed) for c in some if c.kind == "quantize"} == {("default", 0)}
    assert len([c for c in some if c.kind == "quantize"]) == 2 * len(grid.sources)  # fused and unfused
    with pytest.raises(CalibError, match="--seeds 7: not in grid"):
        select(grid, Selection(seeds=(7,)))


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
    (tmp_path / "v").mkdir()
    monkeypatch.setenv("MY_WEIGHTS", os.pathsep.join(["w", "v"]))  # several folders, searched in order
    assert grid.weights_path() == [tmp_path / "w", tmp_path / "v"]
    monkeypatch.setenv("MY_WEIGHTS", os.pathsep.join(["w", "nowhere"]))
    with pytest.raises(CalibError, match="nowhere.*is not a folder"):
        grid.weights_path()


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


def test_a_cell_is_its_content_not_where_its_data_and_weights_live(tmp_path, cifar_dir, weights_dir):
    """Moving the data tree or the weight files makes no new cell; changing what they hold does."""
    import shutil

    from calib.study.condition import resolve_context
    from calib.study.grid import select
    from calib.study.resolve import resolve_cells
    from calib.study.runner import resolve_grid

    def ids(data, weights) -> dict:
        grid_text = GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["cifar10", "inversion"]')
        text = f'data_dir = "{data}"\nweights_dir = "{weights}"\n' + grid_text.replace("seeds = [0, 1]", "seeds = [0]")
        grid = resolve_grid(load_grid(write_grid(tmp_path, text)), None)
        ctx = resolve_context(grid, data)
        return {rc.cell.id: rc.id for rc in resolve_cells(grid, select(grid), tmp_path / "run", ctx)}

    here = ids(cifar_dir, weights_dir)
    moved_data, moved_weights = tmp_path / "elsewhere" / "data", tmp_path / "elsewhere" / "weights"
    shutil.copytree(cifar_dir, moved_data)
    shutil.copytree(weights_dir, moved_weights)
    assert ids(moved_data, moved_weights) == here and len(here) == 3
    a, b = sorted(moved_data.glob("train/*/*"))[:2]
    shutil.copy(b, a)  # one train image changed
    changed = ids(moved_data, moved_weights)
    assert {k for k in here if changed[k] != here[k]} == set(here)  # the data's hashes are in every condition


def test_unknown_filter_names_are_one_clear_error(tmp_path):
    grid = write_grid(tmp_path)
    with pytest.raises(CalibError, match="--models tiny_cnnn: not in grid 't'"):
        run_study(grid, tmp_path / "run", selection=Selection(models=("tiny_cnnn",)), progress=False)
    with pytest.raises(CalibError, match="--sources noize: not in grid"):
        run_study(grid, tmp_path / "run", selection=Selection(sources=("noise", "noize")), progress=False)
    assert not (tmp_path / "run").exists()  # nothing written
    result = CliRunner().invoke(app, ["study", "run", str(grid), "--out", str(tmp_path / "run"), "--sources", "noize"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "noize" in result.output


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
    # the baseline's weights changed (random -> trained): it is another condition and runs again
    assert second["ran"] == 3 and second["ok"] == 3 and second["skipped"] == 0
    from calib.study.report import load_rows, tables

    df = load_rows(tmp_path / "run")  # the newest row of each cell per weights counts
    assert len(df) == 4 and (df.status == "ok").all()
    assert sorted(df[df.kind == "baseline"].weights_id.map(lambda w: w == "random")) == [False, True]
    cells = tables(df)["cells_openvino"]  # INT8 is paired with the trained baseline, not the random one
    assert len(cells) == 2 and cells.fp32_accuracy.notna().all() and cells.verdict.ne("").all()


def test_set_generation_is_collision_free(tmp_path):
    """Several workers making the same set at once: one complete set, nothing removed under anyone."""
    from concurrent.futures import ThreadPoolExecutor

    from calib.core.sets import read_set
    from calib.study.artifacts import generate_once

    folder = tmp_path / "sets" / "noise-2pc-s0-x"
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: generate_once(folder, "noise", 2, 0, {}), range(4)))
    assert made == [folder] * 4 and len(read_set(folder)) == 20
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left behind


def test_failing_cell_records_an_error_row_and_the_run_goes_on(tmp_path, monkeypatch):
    import calib.study.cells as study_cells

    real = study_cells.quantize_cell

    def flaky(rc, out):
        if rc.cell.source == "fractal":
            raise RuntimeError("boom")
        return real(rc, out)

    monkeypatch.setattr(study_cells, "quantize_cell", flaky)
    summary = run_study(write_grid(tmp_path), tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run" / "rows.jsonl")
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 2 and all("boom" in r["reason"] for r in errors)
    assert summary["ok"] == 1 + 2  # the baseline and both noise cells still ran


@pytest.mark.slow
def test_sigkill_mid_run_resumes_to_the_same_table(tmp_path):
    grid = write_grid(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "calib.cli", "study", "run", str(grid), "--out", str(tmp_path / "killed")]
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
    from calib.study.rows import repair_rows

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"cell": "a"}) + "\n" + '{"cell": "b", "sta')
    repair_rows(path)
    assert read_jsonl(path) == [{"cell": "a"}] and path.read_text().endswith("\n")


def test_report_of_a_run_without_failures(tmp_path):

    from calib.study.report import tables

    rows = [dict(kind="baseline", status="ok", model="m", engine="openvino", fp32_accuracy=0.9, fp32_fps=100.0),
            dict(kind="quantize", status="ok", model="m", engine="openvino", source="noise", algo="default",
                 fuse=True, seed=0, subset_size_images=32, fast_bias_correction=True, int8_accuracy=0.8)]
    out = tables(pd.DataFrame(rows))
    assert out["not_ok"].empty and out["long_openvino"].delta_to_fp32.iloc[0] == pytest.approx(-0.1)


def test_models_without_weights_get_speed_cells_only(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    quick_speed(monkeypatch)
    grid = write_grid(tmp_path, GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["noise"]')
                      .replace("seeds = [0, 1]", "seeds = [0]").replace("benchmark = false", QUICK_SPEED))
    run_study(grid, tmp_path / "run", progress=False)
    rows = {r["kind"]: r for r in read_jsonl(tmp_path / "run" / "rows.jsonl")}
    assert rows["quantize"]["status"] == "ok" and rows["quantize"]["int8_fps"] > 0
    assert "int8_accuracy" not in rows["quantize"] and rows["quantize"]["trained_weights"] is False
    assert "fp32_accuracy" not in rows["baseline"] and rows["baseline"]["fp32_fps"] > 0


BASE_GRID = {"name": '"v"', "models": '["tiny_cnn"]', "sources": '["noise"]', "per_class": "2", "seeds": "[0]",
             "benchmark": "false"}


@pytest.mark.parametrize("change, message", [
    ({"engines": '["openvino", "tensorrt"]'}, "unknown engines ['tensorrt']"),
    ({"algos": '["default", "magic"]'}, "unknown algos ['magic']"),
    ({"seeds": "[]"}, "seeds must be a non-empty list of non-negative integers, not []"),
    ({"seeds": "0"}, "seeds must be a non-empty list of non-negative integers, not 0"),
    ({"seeds": "[-1]"}, "seeds must be a non-empty list of non-negative integers, not [-1]"),
    ({"seeds": "[0, 0]"}, "seeds lists a value twice"),
    ({"per_class": "0"}, "per_class must be a positive integer, not 0"),
    ({"per_class": '"2"'}, "per_class must be a positive integer, not '2'"),
    ({"subset_sizes": '["all"]'}, "subset_sizes must be a non-empty list"),
    ({"fuse": '["yes"]'}, "fuse must be a non-empty list of true or false"),
    ({"max_drop": "2"}, "max_drop must be a number between 0 and 1"),
    ({"benchmark": "true", "benchmark_seconds": "0.25"}, "at least 5 repeats of at least 1 s"),
    ({"benchmark": "true", "benchmark_repeats": "3"}, "at least 5 repeats of at least 1 s"),
    ({"isas": '["avx9"]'}, "unknown ISA 'avx9'"),
    ({"source_options": "{fractl = {variants = 2}}"}, "unknown models or sources ['fractl']"),
])
def test_a_bad_grid_is_one_line_before_any_work(tmp_path, change, message):
    grid = tmp_path / "grid.toml"
    grid.write_text("".join(f"{k} = {v}\n" for k, v in (BASE_GRID | change).items()))
    result = CliRunner().invoke(app, ["study", "run", str(grid), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert message in result.output and not (tmp_path / "run").exists()


def test_an_isa_above_this_cpu_is_refused_before_any_work(tmp_path, monkeypatch):
    from calib.core import hardware

    def grid_with(isas: str):
        return write_grid(tmp_path, GRID.replace("benchmark = false", f"benchmark = false\nisas = {isas}"))

    # this machine: the first oneDNN level it does not run (none on a CPU with everything)
    above = [isa for isa in hardware.ISA_LEVELS if isa not in hardware.supported_isas()]
    if above:
        with pytest.raises(CalibError, match=f"ISA {above[0]} is above this CPU's"):
            run_study(grid_with(f'["native", "{above[0]}"]'), tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()
    # a CPU like this study's (AVX2, no VNNI): avx2 runs, avx512_core_vnni is refused in one line
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"sse4_1", "avx", "avx2", "fma"}))
    assert [c.isa for c in expand(load_grid(grid_with('["native", "avx2"]'))) if c.kind == "baseline"] == [
        "native", "avx2"]
    result = CliRunner().invoke(app, ["study", "run", str(grid_with('["native", "avx512_core_vnni"]')),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "ISA avx512_core_vnni is above this CPU's (avx2" in result.output and not (tmp_path / "run").exists()


def test_onnxruntime_cells_run_natively_only():
    from calib.study.grid import Grid

    grid = Grid("g", ("tiny_cnn",), ("noise",), engines=("openvino", "onnxruntime"), isas=("native", "avx2"))
    cells = expand(grid)
    assert {(c.kind, c.engine, c.isa) for c in cells} == {
        (k, "openvino", i) for k in ("baseline", "quantize") for i in ("native", "avx2")} | {
        ("baseline", "onnxruntime", "native"), ("quantize", "onnxruntime", "native")}
    assert len({c.id for c in cells}) == len(cells)  # the ISA is part of a cell's identity


# what OpenVINO computes with ONEDNN_MAX_CPU_ISA set by hand: plain OpenVINO, image by image, and its kernels
BY_HAND = """
import json, sys
import numpy as np
import openvino as ov
from calib.core.data import load_split

test = load_split("test")
x = (test.images.astype(np.float32) / 255.0 - np.array([0.4914, 0.4822, 0.4465], np.float32)) \\
    / np.array([0.2023, 0.1994, 0.2010], np.float32)
x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
out = {}
for path in sys.argv[1:]:
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    pred = [int(np.argmax(compiled(x[i : i + 1])[compiled.output(0)])) for i in range(len(x))]
    kernels = sorted({op.get_rt_info()["primitiveType"].astype(str) for op in compiled.get_runtime_model().get_ops()
                      if op.get_rt_info()["layerType"].astype(str) == "Convolution"})
    out[path] = {"predictions": "".join(map(str, pred)), "kernels": kernels}
print(json.dumps(out))
"""


def test_a_capped_isa_cell_computes_what_openvino_computes_with_the_cap_set_by_hand(tmp_path, monkeypatch):
    """An sse41 cell runs (and is timed) in a worker started with every library capped at SSE4.1, in a slot
    beside native cells: a separate Python with ONEDNN_MAX_CPU_ISA=SSE41 set by hand reads the cell's IRs and
    predicts the same classes with the same kernels, and those kernels are not the native ones; the libraries'
    own reports in the row say the caps held."""
    from calib.core import hardware

    quick_speed(monkeypatch)
    grid = write_grid(tmp_path, GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["noise"]')
                      .replace("seeds = [0, 1]", "seeds = [0]")
                      .replace("benchmark = false", QUICK_SPEED + '\nisas = ["native", "sse41"]'))
    summary = run_study(grid, tmp_path / "run", progress=False, jobs=2)  # both ISAs share two slots
    rows = {(r["kind"], r["isa"]): r for r in read_jsonl(tmp_path / "run" / "rows.jsonl")}
    assert summary["ok"] == len(rows) == 4, rows
    capped = [rows["baseline", "sse41"], rows["quantize", "sse41"]]
    assert {(r["onednn_max_cpu_isa"], r["isa_effective"]) for r in capped} == {("SSE41", "sse41")}
    assert rows["quantize", "native"]["onednn_max_cpu_isa"] == ""
    assert all(r["cpu_caps"] == hardware.cap_env("sse41") for r in capped)  # every library capped, and said so
    assert all(r["torch_cpu_capability"] not in ("AVX2", "AVX512") for r in capped)
    assert not [t for r in capped for t in r["numpy_simd"] if t.startswith(("X86_V3", "X86_V4", "AVX"))]
    assert capped[0]["hardware_key"].endswith(f"{capped[0]['isa_native']} capped to sse41") and capped[0][
        "condition"] != rows["baseline", "native"]["condition"]
    files = [str(tmp_path / "run" / r["model_file"]) for r in capped]
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="SSE41")
    done = subprocess.run([sys.executable, "-c", BY_HAND, *files], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    by_hand = json.loads(done.stdout.strip().splitlines()[-1])
    for row, path, prec in zip(capped, files, ("fp32", "int8")):
        on = row_test_indices(tmp_path / "run", row)  # the images the row's accuracy is on
        assert "".join(by_hand[path]["predictions"][i] for i in on) == row[f"{prec}_predictions"]
        convs = [k.split(":", 1)[1].split(" x")[0] for k in row["ov_kernels"].split(", ") if k.startswith("Conv")]
        assert sorted(set(convs)) == by_hand[path]["kernels"] and all("sse42" in k for k in convs)
    native = rows["quantize", "native"]["ov_kernels"]
    assert "sse42" not in native and native != capped[1]["ov_kernels"]  # the cap changed the kernels
    # each timing was taken by a process of the cell's ISA (the key holds that process's own hardware_key)
    timings = read_jsonl(tmp_path / "run" / "speed.jsonl")
    assert {(t["key"]["isa"], t["key"]["hardware_key"].split(" | ", 1)[1]) for t in timings} == {
        ("native", capped[0]["isa_native"]), ("sse41", f"{capped[0]['isa_native']} capped to sse41")}
    assert all(r["int8_fps" if r["kind"] == "quantize" else "fp32_fps"] > 0 for r in rows.values())
    assert rows["baseline", "sse41"]["pytorch_fps"] > 0  # PyTorch (oneDNN too) timed under the cap as well


def test_other_weights_rerun_every_cell_and_nothing_is_paired_across_weights(tmp_path, monkeypatch, weights_dir):
    import hashlib

    import calib.study.cells as study_cells
    from calib.study.report import cell_table, load_rows, tables
    from tests.conftest import save_weights

    grid = write_grid(tmp_path, GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["noise"]'))
    first = run_study(grid, tmp_path / "run", progress=False)
    assert first["ok"] == first["cells"] == 3
    new = save_weights("tiny_cnn", tmp_path / "other-weights", seed=1)
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(new.parent))
    real = study_cells.quantize_cell
    monkeypatch.setattr(study_cells, "quantize_cell", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    second = run_study(grid, tmp_path / "run", progress=False)
    assert second["ran"] == 3  # no ok row of the old weights counts as done
    assert (second["ok"], second["errors"]) == (1, 2)  # only the new baseline is in; the INT8 rows are the old ones
    rows = read_jsonl(tmp_path / "run" / "rows.jsonl")
    base = {r["weights_sha256"]: r for r in rows if r["kind"] == "baseline"}
    files = (next(weights_dir.glob("cifar10_tiny_cnn-*.pt")), new)
    assert set(base) == {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}  # the files' own sha256
    assert len({b["fp32_predictions"] for b in base.values()}) == 2  # two different models
    cells = cell_table(load_rows(tmp_path / "run"), LABELS_OF(tmp_path / "run"))
    assert len(cells) == 2  # the old weights' INT8 rows, each with its own weights' baseline
    for c in cells.to_dict("records"):
        old = next(b for sha, b in base.items() if sha.startswith(c["weights_id"]))
        assert c["fp32_predictions"] == old["fp32_predictions"] and c["fp32_accuracy"] == old["fp32_accuracy"]
    monkeypatch.setattr(study_cells, "quantize_cell", real)
    third = run_study(grid, tmp_path / "run", progress=False)
    assert (third["ran"], third["ok"]) == (2, 3)  # the new baseline is done
    long = tables(load_rows(tmp_path / "run"))["long_openvino"]
    assert len(long) == 2 and (long.seeds == 2).all()  # one condition per weights: never pooled
    assert long.weights_id.nunique() == 2 and long.fp32_accuracy.notna().all()


def row_test_indices(run, row) -> list[int]:
    """Indices into the test split of the images a row's predictions are of (the run keeps any part of it)."""
    part = run / "test_indices" / f"{row['test_indices_sha256']}.json"
    if part.exists():
        return json.loads(part.read_text())["indices"]
    return list(range(row["test_images"]))


def LABELS_OF(run):  # noqa: N802 - reads like the constant it stands for
    from calib.study.report import load_test_labels

    return load_test_labels(run)


def test_accuracy_aware_table_tells_fused_from_unfused_and_judges_the_promise():

    from calib.study.report import accuracy_aware_table

    base = {"model": "repvgg_a0", "source": "noise", "isa": "native", "seed": 0, "algo": "accuracy-aware",
            "max_drop": 0.02, "validation_source": "train_validation_split", "validation_images": 1000,
            "aa_fp32_validation_accuracy": 0.9, "aa_int8_validation_accuracy": 0.89, "aa_kept_fp32_count": 0,
            "fp32_accuracy": 0.90}
    # standard error of 0.9 on 1,000 images: sqrt(0.09 / 1000) = 0.0095, so 1.96 se = 0.0186
    cells = pd.DataFrame([{**base, "fuse": True, "int8_accuracy": 0.88},      # drop 0.02: kept
                          {**base, "fuse": False, "int8_accuracy": 0.87}])    # drop 0.03 < 0.02 + 0.0186
    table = accuracy_aware_table(cells)
    assert list(zip(table.fuse, table.max_drop_kept)) == [(False, "within validation sampling error"),
                                                          (True, "yes")]


def test_time_left_from_kinds_beats_a_count_of_cells_on_the_committed_main_run():
    """The main job's committed cells scheduled again as the slots order them, each taking the seconds its row
    took, the estimate told of cells as they end: after a quarter of the run its errors are smaller than those of
    the count of cells left times the time per cell so far (the old estimate). Neither is within a fifth of the
    truth throughout: an accuracy-aware cell's time depends on what NNCF restores (results/timing)."""
    import statistics

    from calib.core.runs import read_jsonl
    from calib.study.schedule import simulate

    points = simulate(read_jsonl(REPO / "results" / "study" / "main" / "rows.jsonl"), jobs=2)
    end, total = points[-1][0], len(points)
    ours, counted = [], []
    for done, (t, left, actual) in enumerate(points, 1):
        if t >= end / 4 and actual >= 30 and left is not None:
            ours.append(abs(left - actual) / actual)
            counted.append(abs((total - done) * t / done - actual) / actual)
    assert ours and statistics.median(ours) < statistics.median(counted)


def test_a_grid_that_times_nothing_pairs_with_one_that_times_by_the_accuracy_condition(tmp_path, monkeypatch):
    """The main job is a smaller grid than the whole study and times less: its rows pair with the whole grid's by
    the part of the condition that decides accuracy, and every accuracy and prediction must be equal."""
    quick_speed(monkeypatch)
    text = GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["noise"]')
    timed = tmp_path / "timed"
    timed.mkdir()
    run_study(write_grid(timed, text.replace("benchmark = false", QUICK_SPEED)), timed / "run", progress=False)
    untimed = tmp_path / "untimed"
    untimed.mkdir()
    run_study(write_grid(untimed, text.replace("seeds = [0, 1]", "seeds = [1]")), untimed / "run", progress=False)
    by_accuracy = CliRunner().invoke(app, ["study", "compare", str(timed / "run"), str(untimed / "run"), "--by",
                                           "accuracy"])
    assert by_accuracy.exit_code == 0, by_accuracy.output
    assert "paired 2 cells" in by_accuracy.output and "identical in every compared field" in by_accuracy.output
    by_condition = CliRunner().invoke(app, ["study", "compare", str(timed / "run"), str(untimed / "run")])
    assert by_condition.exit_code == 1 and "paired 0 cells" in by_condition.output  # timed: another condition


@pytest.mark.slow
def test_a_cell_reruns_when_calibs_code_changes_and_only_then(tmp_path):
    """A row carries the fingerprint of the code that made it: edit one module that computes results in a copy of
    the package, resume, and every cell reruns (the run says how many); edit a report module, and none does."""
    import shutil

    shutil.copytree(REPO / "calib", tmp_path / "pkg" / "calib", ignore=shutil.ignore_patterns("__pycache__"))
    grid = write_grid(tmp_path, GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["noise"]')
                      .replace("seeds = [0, 1]", "seeds = [0]"))
    script = ("import json, sys; from pathlib import Path; from calib.study.runner import run_study; notes = []; "
              "s = run_study(Path(sys.argv[1]), Path(sys.argv[2]), progress=False, on_note=notes.append); "
              "print(json.dumps({'summary': s, 'notes': notes}))")

    def resume() -> dict:
        env = dict(os.environ, PYTHONPATH=str(tmp_path / "pkg"))
        done = subprocess.run([sys.executable, "-c", script, str(grid), str(tmp_path / "run")], env=env,
                              capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = resume()["summary"]
    assert first["ran"] == first["cells"] == 2 and first["ok"] == 2
    assert resume()["summary"]["ran"] == 0  # same code: nothing to do
    with open(tmp_path / "pkg" / "calib" / "study" / "report.py", "a") as f:
        f.write("\n# a report edit computes nothing\n")
    assert resume()["summary"]["ran"] == 0
    with open(tmp_path / "pkg" / "calib" / "core" / "quantize.py", "a") as f:
        f.write("\n# any edit of the code that computes a cell\n")
    again = resume()
    assert again["summary"]["ran"] == again["summary"]["rerun_code_changed"] == 2
    assert again["notes"] == [f"2 cells rerun: calib's code changed since their rows were made "
                              f"(code {again['summary']['code_fingerprint']})"]
    rows = read_jsonl(tmp_path / "run" / "rows.jsonl")
    assert len({r["code_fingerprint"] for r in rows}) == 2 and len({r["code_free_condition"] for r in rows}) == 2
    assert first["code_fingerprint"] != again["summary"]["code_fingerprint"]


def test_a_run_folder_takes_its_grid_again_with_other_comments_but_not_other_values(tmp_path):
    text = GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["stylegan2-ada"]').replace("seeds = [0, 1]",
                                                                                             "seeds = [0]")
    run_study(write_grid(tmp_path, text), tmp_path / "run", progress=False)
    commented = write_grid(tmp_path, "# the same grid, explained\n" + text)
    assert run_study(commented, tmp_path / "run", progress=False)["ran"] == 1  # the skipped cell retries
    assert (tmp_path / "run" / "grid.toml").read_text() == commented.read_text()
    with pytest.raises(CalibError, match="holds a run of another grid"):
        run_study(write_grid(tmp_path, text.replace("per_class = 2", "per_class = 3")), tmp_path / "run",
                  progress=False)


def test_the_worker_decides_nothing_about_what_a_cell_is(tmp_path, monkeypatch):
    """Once the driver resolved the cells (`calib.study.resolve.resolve_cells`), every function that decides what
    a cell is (its condition, set plan, spec, skip reason, weights lookup, validation and test images) fails if
    called: the cells still run, here in this process, so the worker used only what it was shipped."""
    import calib.core.data
    import calib.core.pipeline
    import calib.core.weights
    import calib.study.artifacts
    import calib.study.condition
    import calib.study.grid
    import calib.study.plan
    import calib.study.resolve
    import calib.study.runner

    text = (GRID.replace('["noise", "fractal", "stylegan2-ada"]', '["noise"]').replace("seeds = [0, 1]", "seeds = [0]")
            .replace('algos = ["default"]', 'algos = ["default", "accuracy-aware"]\n'
                     'accuracy_aware_models = ["tiny_cnn"]\nmax_drop = 0.9'))
    real_resolve, real_lookup = calib.study.resolve.resolve_cells, calib.core.weights.resolve_weights

    def forbidden(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"{name} called after the cells were resolved")
        return fail

    def lookup_only_given(name, weights=None, *args, **kwargs):  # a path given is checked, never looked up
        if weights is None:
            raise AssertionError("weights looked up after the cells were resolved")
        return real_lookup(name, weights, *args, **kwargs)

    def resolve_then_forbid(*args, **kwargs):
        resolved = real_resolve(*args, **kwargs)
        for module, name in ((calib.study.condition, "condition"), (calib.study.resolve, "condition"),
                             (calib.study.artifacts, "set_plan"), (calib.study.resolve, "set_plan"),
                             (calib.study.grid, "quantize_spec"), (calib.study.resolve, "quantize_spec"),
                             (calib.study.plan, "skip_reason"), (calib.study.resolve, "skip_reason"),
                             (calib.core.data, "evaluation_split"), (calib.core.pipeline, "evaluation_split"),
                             (calib.core.data, "final_test"), (calib.core.pipeline, "final_test")):
            monkeypatch.setattr(module, name, forbidden(f"{module.__name__}.{name}"))
        monkeypatch.setattr(calib.core.weights, "resolve_weights", lookup_only_given)
        return resolved

    monkeypatch.setattr(calib.study.runner, "resolve_cells", resolve_then_forbid)
    summary = run_study(write_grid(tmp_path, text), tmp_path / "run", progress=False)
    rows = read_jsonl(tmp_path / "run" / "rows.jsonl")
    assert summary["ok"] == 3 and summary["errors"] == 0, [r.get("reason") for r in rows]
    assert {(r["kind"], r["algo"]) for r in rows} == {("baseline", "default"), ("quantize", "default"),
                                                     ("quantize", "accuracy-aware")}
    aware = next(r for r in rows if r["algo"] == "accuracy-aware")
    assert aware["validation_indices_sha256"] and aware["test_indices_sha256"]  # shipped, not decided here
