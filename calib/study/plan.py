"""Decisions about a cell that follow from the grid alone: whether it can run here, whether it measures PyTorch,
and the speed protocol (`calib.study.resolve` asks them once per cell)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from calib.study.grid import Cell, Grid, source_options

if TYPE_CHECKING:
    from calib.core.engines import Protocol


def skip_reason(grid: Grid, cell: Cell, weights: Path | None, missing: str) -> str | None:
    """Why a cell cannot run on this machine, or None: a missing teacher, or no trained weights (`missing` says
    why) where accuracy needs them; only speed cells run with random weights."""
    if cell.kind != "quantize":
        return None
    if cell.source == "stylegan2-ada" and not source_options(grid, "stylegan2-ada").get("teacher"):
        return "no StyleGAN2-ADA teacher: set CALIB_STYLEGAN2_PKL to NVIDIA's cifar10.pkl"
    if weights is None and (cell.algo != "default" or not grid.times(cell)):
        return missing
    return None


def measures_pytorch(grid: Grid, cell: Cell) -> bool:
    """PyTorch does not depend on the engine, but on the ISA: its accuracy and speed are measured in the baseline
    of the first engine that runs this ISA."""
    return cell.engine == next(e for e in grid.engines if cell.isa in grid.isas_for(e))


def protocol_of(grid: Grid) -> Protocol:
    """The grid's speed protocol: `benchmark_repeats` runs of `benchmark_seconds`, after a warm-up of as long
    (at most 1 s)."""
    from calib.core.engines import Protocol

    return Protocol(warmup_s=min(1.0, grid.benchmark_seconds), duration_s=grid.benchmark_seconds,
                    repeats=grid.benchmark_repeats)
