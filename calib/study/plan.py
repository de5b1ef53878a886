"""What a cell needs, decided from the grid before it runs: its weight file, whether it can run here, the test
images its accuracy is on, and the speed protocol.

Each model's weights are looked up once per `run_study` (`weights_looked_up_once`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calib.core.errors import CalibError
from calib.study.grid import Cell, Grid, source_options

if TYPE_CHECKING:
    from calib.core.data import LabeledImages
    from calib.core.engines import Protocol


def skip_reason(grid: Grid, cell: Cell) -> str | None:
    """Why a cell cannot run on this machine (a missing teacher), or None."""
    if cell.source == "stylegan2-ada" and not source_options(grid, "stylegan2-ada").get("teacher"):
        return "no StyleGAN2-ADA teacher: set CALIB_STYLEGAN2_PKL to NVIDIA's cifar10.pkl"
    return None


_WEIGHTS_MEMO: dict | None = None  # within one `run_study`: each model's weights are looked up once


def weights_or_reason(model: str, grid: Grid | None = None) -> tuple[Path | None, str | None]:
    """The model's weight file: the grid's `weights_dir`, else `CALIB_WEIGHTS_DIR`, else the official release."""
    from calib.core.weights import resolve_weights

    key = (model, grid.weights_dir if grid else None, os.environ.get("CALIB_WEIGHTS_DIR"))
    if _WEIGHTS_MEMO is not None and key in _WEIGHTS_MEMO:
        return _WEIGHTS_MEMO[key]
    try:
        found = resolve_weights(model, weights_dir=grid.weights_path() if grid else None), None
    except CalibError as e:
        found = None, str(e)
    if _WEIGHTS_MEMO is not None:
        _WEIGHTS_MEMO[key] = found
    return found


@contextlib.contextmanager
def weights_looked_up_once() -> Iterator[None]:
    """Inside the block, `weights_or_reason` looks each model's weights up once."""
    global _WEIGHTS_MEMO
    _WEIGHTS_MEMO = {}
    try:
        yield
    finally:
        _WEIGHTS_MEMO = None


def plan_cell(grid: Grid, cell: Cell) -> tuple[str | None, Path | None, str | None]:
    """(skip reason, weight file, note on missing weights) of a cell, decided before it runs."""
    weights, missing = weights_or_reason(cell.model, grid)
    if cell.kind == "quantize":
        reason = skip_reason(grid, cell)
        if reason is None and weights is None and (cell.algo != "default" or not grid.times(cell)):
            reason = missing  # accuracy needs trained weights; only speed cells run with random ones
        if reason:
            return reason, weights, missing
    return None, weights, missing


def measures_pytorch(grid: Grid, cell: Cell) -> bool:
    """PyTorch does not depend on the engine, but on the ISA: its accuracy and speed are measured in the baseline
    of the first engine that runs this ISA."""
    return cell.engine == next(e for e in grid.engines if cell.isa in grid.isas_for(e))


def test_for(weights: Path | None, data_dir: Path | None = None) -> LabeledImages:
    """The test images a model's final accuracy is computed on (role test, with `indices` into the test split):
    the one place that decides it, for baselines and quantize cells alike, so an FP32 and an INT8 accuracy of
    one model are always on the same images. Rows record `test_images` and `test_indices_sha256`: the whole
    test split, or the rest of it where accuracy-aware validation takes a slice of test for weights that saw
    all of train (`calib.core.data.final_test`)."""
    from calib.core.data import final_test

    test = final_test(data_dir, weights)
    return test if test.indices is not None else test.subset(np.arange(len(test)), role="test")


def protocol_of(grid: Grid) -> Protocol:
    """The grid's speed protocol: `benchmark_repeats` runs of `benchmark_seconds`, after a warm-up of as long
    (at most 1 s)."""
    from calib.core.engines import Protocol

    return Protocol(warmup_s=min(1.0, grid.benchmark_seconds), duration_s=grid.benchmark_seconds,
                    repeats=grid.benchmark_repeats)
