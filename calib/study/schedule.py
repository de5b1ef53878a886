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
