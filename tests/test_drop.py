"""The label-free estimate (`calib.core.drop`): its signals against SciPy's, its fit against NumPy's, and a study
cell's signals measured on probe images its calibration set never held."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calib.core import drop


def test_signals_are_what_scipy_says():
    from scipy.special import softmax
    from scipy.stats import entropy

    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(200, 10)) * 3
    int8 = fp32 + rng.normal(size=fp32.shape) * 0.5
    found = drop.compare_outputs(fp32, int8)
    kl = entropy(softmax(fp32, axis=1), softmax(int8, axis=1), axis=1)  # KL(p || q) per image
    assert found["probe_kl"] == pytest.approx(kl.mean(), rel=1e-9)
    assert found["probe_flip"] == pytest.approx(np.mean(fp32.argmax(1) != int8.argmax(1)))
    noise = np.sum((fp32 - int8) ** 2)
    assert found["probe_sqnr_db"] == pytest.approx(10 * np.log10(np.sum(fp32**2) / noise), abs=1e-3)
    assert drop.compare_outputs(fp32, fp32)["probe_kl"] == pytest.approx(0, abs=1e-12)


def test_the_probe_never_takes_a_calibration_sets_own_seed():
    assert drop.probe_seed("distylegan", drop.PROBE_SEED) != drop.PROBE_SEED
    assert drop.probe_seed("noise", drop.PROBE_SEED) == drop.PROBE_SEED  # another source: other images
    assert drop.probe_seed("distylegan", 0) == drop.PROBE_SEED


def test_the_fit_is_least_squares_and_its_interval_the_residual_quantiles(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 0.5, (300, 1))
    y = 0.002 + 0.08 * x[:, 0] + rng.normal(0, 0.003, 300)
    fit = drop.DropFit.fit(x, y, "synthetic", features=("probe_kl",))
    slope, intercept = np.polyfit(x[:, 0], y, 1)
    assert fit.coef[0] == pytest.approx(slope) and fit.intercept == pytest.approx(intercept)
    residuals = y - (intercept + slope * x[:, 0])
    assert (fit.residual_low, fit.residual_high) == pytest.approx(tuple(np.quantile(residuals, [0.05, 0.95])))
    path = tmp_path / "fit.json"
    path.write_text(fit.to_json())
    loaded = drop.load_fit(path)
    assert loaded == fit
    e = drop.estimate({"probe_kl": 0.25}, loaded)
    assert e["estimated_drop"] == pytest.approx(intercept + slope * 0.25, abs=1e-5)
    assert e["estimated_drop_low"] < e["estimated_drop"] < e["estimated_drop_high"] and e["drop_fit"] == fit.id
    assert drop.estimate({"probe_kl": 0.25}, None if drop.load_fit() is None else drop.DropFit(
        ("probe_other",), (1.0,), 0.0, 0.0, 0.0, 0.9, "-", 1))["estimated_drop"] is None


def test_a_study_cell_measures_its_drop_without_labels_on_images_its_set_never_held(tmp_path):
    from calib.core.data import image_hashes
    from calib.core.sets import read_set
    from calib.study.runner import run_study

    grid = tmp_path / "grid.toml"
    grid.write_text('name = "t"\nmodels = ["tiny_cnn"]\nsources = ["distylegan"]\nper_class = 1\n'
                    f'seeds = [0, {drop.PROBE_SEED}]\nbenchmark = false\nprobe_per_class = 2\n')
    run_study(grid, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "rows.jsonl").read_text().splitlines()]
    cells = [r for r in rows if r["kind"] == "quantize"]
    assert len(cells) == 2 and all(r["status"] == "ok" for r in cells)
    for r in cells:
        assert r["probe_images"] == 20 and 0 <= r["probe_flip"] <= 1 and r["probe_kl"] >= 0
        assert r["probe_sources"] == "distylegan" and r["probe_per_class"] == 2
        probe = next((tmp_path / "run" / "sets").glob(f"distylegan-2pc-s{r['probe_seed']}-*"))
        held = set(image_hashes(read_set(tmp_path / "run" / r["calib_set"]).images).tolist())
        assert not held & set(image_hashes(read_set(probe).images).tolist())
    clash = next(r for r in cells if r["source"] == "distylegan" and r["seed"] == drop.PROBE_SEED)
    assert clash["probe_seed"] == drop.PROBE_SEED + 1


def test_choosing_by_the_estimate_is_judged_against_the_best_source_by_its_paired_interval():
    """Per group of cells that differ only by data-free source: the pick is the lowest estimate, the best the
    highest test accuracy, and a source is within the best when their paired interval holds 0."""
    import pandas as pd

    from calib.study.dropfit import choices

    rng = np.random.default_rng(0)
    truth = rng.random(900) < 0.9
    close = truth.copy()
    close[:3] = ~close[:3]  # three images differ: inside the interval
    far = truth & (rng.random(900) < 0.9)  # about 80 images lost: outside it
    group = {"model": "m", "engine": "openvino", "algo": "default", "isa": "native", "fuse": True, "seed": 0,
             "hardware_key": "cpu", "weights_id": "w"}
    cells = pd.DataFrame([group | {"source": s, "probe_kl": kl, "correct": c, "int8_accuracy": c.mean()}
                          for s, kl, c in [("inversion", 0.3, far), ("fractal", 0.1, close), ("noise", 0.2, truth),
                                           ("cifar10", 0.0, truth)]])
    fit = drop.DropFit(("probe_kl",), (0.1,), 0.0, -0.01, 0.01, 0.9, "-", 3)
    (row,) = choices(cells, fit).to_dict("records")
    assert row["best"] == "noise" and row["pick"] == "fractal" and row["sources"] == 3  # cifar10 is not data-free
    assert row["pick_within"] and row["fractal_within"] and not row["inversion_within"]


def test_the_shipped_fit_is_the_one_the_committed_official_cells_give():
    """calib/core/drop_fit.json is generated: fitting the committed official rows again gives it to the byte."""
    from pathlib import Path

    from calib.study.blocks import OFFICIAL
    from calib.study.dropfit import drop_cells, fit_on, fitted_on

    cells = drop_cells(Path(__file__).resolve().parents[1] / OFFICIAL)
    assert fit_on(cells, fitted_on("official", cells)).to_json() == drop.FIT_FILE.read_text()
