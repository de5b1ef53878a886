"""Which cell runs when and on which cores: cells grouped by ISA, long cells started first, and each worker
process kept to its own share of the cores."""

from __future__ import annotations

import os

from calib.core.hardware import NATIVE
from calib.study.grid import Cell


def by_isa(cells: list[Cell]) -> dict[str, list[Cell]]:
    """Cells grouped by their ISA: native first, then each cap in grid order."""
    groups: dict[str, list[Cell]] = {}
    for c in sorted(cells, key=lambda c: c.isa != NATIVE):  # native first, then each cap in grid order
        groups.setdefault(c.isa, []).append(c)
    return groups


def longest_first(cells: list[Cell]) -> list[Cell]:
    """Cells in the order a pool should start them: likely long ones first (accuracy-aware, then OpenVINO, then
    larger models), so that no long cell is left to run alone at the end."""
    from calib.core.zoo import model_info

    def cost(cell: Cell) -> tuple:
        madds = model_info(cell.model).madds_m or 0.0
        return cell.kind != "quantize", cell.algo != "accuracy-aware", cell.engine != "openvino", -madds

    return sorted(cells, key=cost)


def core_shares(workers: int, pin: bool = True) -> list[list[int]]:
    """One disjoint share of this process's cores per worker, when there are enough (else, or without `pin`,
    an empty share each: no pinning)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return [cores[i::workers] if pin and len(cores) >= workers else [] for i in range(workers)]


def pin_worker(shares) -> None:
    """Keep a worker process on its own cores, with as many threads: OpenVINO sizes its pools from the affinity,
    PyTorch is told; otherwise every worker starts threads for all cores and waits on the others' cores.
    `shares` is a queue of `core_shares`: each worker takes one."""
    cores = shares.get()
    if cores:
        import torch

        os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))


class Estimate:
    """Time left in a run, from the cells that finished: each cell left is expected to take what finished cells
    of its kind took (same model, kind, algorithm, engine and ISA; else same kind, algorithm and engine; else
    any), its work shared by `jobs` slots, and each timed cell's speed measured alone at the end. A count of
    cells is no clock here: the longest cells run first and the timing runs last."""

    SPEED_PRIOR = 8.0  # seconds to time one model file (1 s warm-up, 5 x 1 s) before any was timed

    def __init__(self, cells: list[Cell], jobs: int, timed: set[Cell] | None = None):
        self.work_left = list(cells)
        self.speed_left = [c for c in cells if c in (timed or set())]
        self.jobs = jobs
        self.seconds: dict[tuple, list[float]] = {}
        self.speed: list[float] = []

    @staticmethod
    def _keys(cell: Cell) -> list[tuple]:
        return [(cell.model, cell.kind, cell.algo, cell.engine, cell.isa), (cell.kind, cell.algo, cell.engine), ()]

    def _drop(self, cells: list[Cell], cell: Cell) -> bool:
        if cell in cells:
            cells.remove(cell)
            return True
        return False

    def work_done(self, cell: Cell, row: dict) -> None:
        """A cell's work ended (its speed, if timed, is still to come)."""
        if self._drop(self.work_left, cell) and row.get("status") == "ok":
            seconds = float(row.get("wall_seconds") or 0.0) - float(row.get("speed_seconds") or 0.0)
            for key in self._keys(cell):
                self.seconds.setdefault(key, []).append(seconds)

    def row(self, cell: Cell, row: dict) -> None:
        """A cell's row arrived: its work (if not reported already) and its speed are done."""
        self.work_done(cell, row)
        if self._drop(self.speed_left, cell) and isinstance(row.get("speed_seconds"), int | float):
            self.speed.append(float(row["speed_seconds"]))

    def _expected(self, cell: Cell) -> float | None:
        for key in self._keys(cell):
            if self.seconds.get(key):
                return sum(self.seconds[key]) / len(self.seconds[key])
        return None

    def left(self) -> float | None:
        """Seconds left, or None before any cell finished."""
        if not self.seconds:
            return None
        work = sum(self._expected(c) or 0.0 for c in self.work_left) / max(1, min(self.jobs, len(self.work_left)))
        speed = sum(self.speed) / len(self.speed) if self.speed else self.SPEED_PRIOR
        return work + speed * len(self.speed_left)
