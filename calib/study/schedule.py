"""Which cell runs when and on which cores: cells grouped by ISA, long cells started first, and each worker
process kept to its own share of the cores."""

from __future__ import annotations

import os
import threading
import time

from calib.core.hardware import NATIVE
from calib.study.grid import Cell


def by_isa(cells: list[Cell]) -> dict[str, list[Cell]]:
    """Cells grouped by their ISA: native first, then each cap in grid order."""
    groups: dict[str, list[Cell]] = {}
    for c in sorted(cells, key=lambda c: c.isa != NATIVE):  # native first, then each cap in grid order
        groups.setdefault(c.isa, []).append(c)
    return groups


def longest_first(cells: list[Cell]) -> list[Cell]:
    """Cells in the order slots should start them: likely long ones first (accuracy-aware, then OpenVINO, then
    larger models), so no long cell is left alone at the end; but one cell of every (model, kind) pair before
    the second of any, so the time-left estimate has seen every pair early."""
    from calib.core.zoo import model_info

    def cost(cell: Cell) -> tuple:
        madds = model_info(cell.model).madds_m or 0.0
        return cell.kind != "quantize", cell.algo != "accuracy-aware", cell.engine != "openvino", -madds

    ordered = sorted(cells, key=cost)
    seen: set[tuple] = set()
    first = [c for c in ordered if (c.model, kind_of(c)) not in seen and not seen.add((c.model, kind_of(c)))]
    return first + [c for c in ordered if c not in set(first)]


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


# Relative seconds of a cell's work by kind (kind, algorithm, engine), from the study's committed rows: before
# any cell of a kind has finished, it is expected to take its prior times what finished cells took per unit of
# prior. Accuracy-aware search is several default quantizations; ONNX Runtime and baselines are lighter.
PRIOR = {("quantize", "accuracy-aware", "openvino"): 5.0, ("quantize", "default", "openvino"): 1.0,
         ("quantize", "default", "onnxruntime"): 0.6, ("baseline", "default", "openvino"): 0.6,
         ("baseline", "default", "onnxruntime"): 0.35}


def kind_of(cell: Cell) -> tuple:
    """What a cell's cost depends on besides its model: its kind, algorithm, engine and whether it is capped."""
    return cell.kind, cell.algo, cell.engine, cell.isa != NATIVE


def prior(cell: Cell) -> float:
    return PRIOR.get(kind_of(cell)[:3], 1.0)


def _geomean(values: list[float]) -> float:
    import math

    values = [max(v, 1e-3) for v in values]
    return math.exp(sum(map(math.log, values)) / len(values))


def fit_factors(seconds: dict[tuple, float]) -> tuple[dict, dict]:
    """Model and kind factors with `seconds[(model, kind)] ~ model_factor[model] * kind_factor[kind]`, fitted by
    alternating geometric means over the (model, kind) pairs seen."""
    models = {m: 1.0 for m, _ in seconds}
    kinds = {k: PRIOR.get(k[:3], 1.0) for _, k in seconds}
    for _ in range(20):
        models = {m: _geomean([t / kinds[k] for (mm, k), t in seconds.items() if mm == m]) for m in models}
        kinds = {k: _geomean([t / models[m] for (m, kk), t in seconds.items() if kk == k]) for k in kinds}
    return models, kinds


class Estimate:
    """Time left in a run, from the cells that finished. A cell left is expected to take what finished cells of
    its model and kind took; a pair not seen yet, its model's factor times its kind's (`fit_factors` over the
    pairs seen; the probes `longest_first` starts with see every model and kind early), else its `prior` in the
    seconds finished cells took per unit of prior. The work is shared by `jobs` slots, and each timed cell's speed
    is measured alone at the end. A count of cells is no clock here: long cells run first, timing runs last."""

    SPEED_PRIOR = 8.0  # seconds to time one model file (1 s warm-up, 5 x 1 s) before any was timed

    def __init__(self, cells: list[Cell], jobs: int, timed: set[Cell] | None = None):
        self.work_left = list(cells)
        self.speed_left = [c for c in cells if c in (timed or set())]
        self.jobs = jobs
        self.seconds: dict[tuple, list[float]] = {}  # (model, kind) -> seconds of its finished cells
        self.speed: list[float] = []
        self.running: dict[Cell, float] = {}  # cell -> when its work started (time.time())
        self.lock = threading.RLock()  # the runner reports while the progress line asks

    def started(self, cell: Cell, at: float | None = None) -> None:
        """A cell's work started (in a slot): from then on its elapsed time counts against what it is expected
        to take."""
        with self.lock:
            self.running[cell] = time.time() if at is None else at

    def _drop(self, cells: list[Cell], cell: Cell) -> bool:
        if cell in cells:
            cells.remove(cell)
            return True
        return False

    def work_done(self, cell: Cell, row: dict) -> None:
        """A cell's work ended (its speed, if timed, is still to come)."""
        with self.lock:
            self.running.pop(cell, None)
            if self._drop(self.work_left, cell) and row.get("status") == "ok":
                seconds = float(row.get("wall_seconds") or 0.0) - float(row.get("speed_seconds") or 0.0)
                self.seconds.setdefault((cell.model, kind_of(cell)), []).append(seconds)

    def row(self, cell: Cell, row: dict) -> None:
        """A cell's row arrived: its work (if not reported already) and its speed are done."""
        with self.lock:
            self.work_done(cell, row)
            if self._drop(self.speed_left, cell) and isinstance(row.get("speed_seconds"), int | float):
                self.speed.append(float(row["speed_seconds"]))

    def left(self, now: float | None = None) -> float | None:
        """Seconds left at `now` (time.time()), or None before any cell finished. A running cell has its expected
        time less what it has run left; one that has run longer than expected, a third as long again (the longer
        an accuracy-aware search has run, the more it is likely still to restore)."""
        with self.lock:
            return self._left(time.time() if now is None else now)

    def _left(self, now: float) -> float | None:
        if not self.seconds:
            return None
        means = {pair: sum(v) / len(v) for pair, v in self.seconds.items()}
        aa = {pair: t for pair, t in means.items() if pair[1][1] == "accuracy-aware"}
        # accuracy-aware time depends on how much NNCF restores, not only on the model: factors from the rest
        models, kinds = fit_factors({p: t for p, t in means.items() if p not in aa} or means)
        typical_model = _geomean(list(models.values()))
        for kind in {k for _, k in aa} - set(kinds):
            kinds[kind] = _geomean([t / models.get(m, typical_model) for (m, k), t in aa.items() if k == kind])
        unit = _geomean([kinds[k] / PRIOR.get(k[:3], 1.0) for k in kinds])  # seconds per unit of prior

        def expected(cell: Cell) -> float:
            kind = kind_of(cell)
            if (cell.model, kind) in means:
                return means[cell.model, kind]
            return models.get(cell.model, typical_model) * kinds.get(kind, prior(cell) * unit)

        def remaining(cell: Cell) -> float:
            if cell not in self.running:
                return expected(cell)
            ran = max(0.0, now - self.running[cell])
            return expected(cell) - ran if ran < expected(cell) else 0.3 * ran

        times = [remaining(c) for c in self.work_left]
        work = max(sum(times) / max(1, min(self.jobs, len(times))), max(times, default=0.0))
        speed = sum(self.speed) / len(self.speed) if self.speed else self.SPEED_PRIOR
        return work + speed * len(self.speed_left)


def simulate(rows: list[dict], jobs: int) -> list[tuple[float, float | None, float]]:
    """A finished run's cells scheduled again, as `longest_first` orders them, on `jobs` slots, each taking the
    seconds its row took, and fed to `Estimate` as they end: (elapsed, estimated seconds left, seconds actually
    left) after each. What the estimate would have said of that run, from its own rows."""
    fields = set(Cell.__dataclass_fields__)
    done = {Cell(**{k: v for k, v in r.items() if k in fields}): r for r in rows if r.get("status") == "ok"}
    work = {c: float(r["wall_seconds"]) - float(r.get("speed_seconds") or 0.0) for c, r in done.items()}
    estimate = Estimate(list(done), jobs)
    free = [0.0] * jobs
    ends = []
    for cell in longest_first(list(done)):
        slot = free.index(min(free))
        free[slot] += work[cell]
        ends.append((free[slot], cell))
    end = max(free)
    out = []
    for t, cell in sorted(ends, key=lambda e: e[0]):
        estimate.work_done(cell, done[cell])
        out.append((t, estimate.left(), end - t))
    return out
