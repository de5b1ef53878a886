"""Which cell runs when and on which cores: cells grouped by ISA, long cells started first, and each worker
process kept to its own share of the cores."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

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
    the second of any, so the time-left estimate has seen every pair early, those first cells taking the
    sources in turn (a pair's first cell stands for all of its sources)."""
    from calib.core.zoo import model_info

    def cost(cell: Cell) -> tuple:
        madds = model_info(cell.model).madds_m or 0.0
        return cell.kind != "quantize", cell.algo != "accuracy-aware", cell.engine != "openvino", -madds

    ordered = sorted(cells, key=cost)
    by_pair: dict[tuple, list[Cell]] = {}
    for c in ordered:
        by_pair.setdefault((c.model, kind_of(c)), []).append(c)
    sources = sorted({c.source for c in ordered if c.kind == "quantize"})
    first, turn = [], 0
    for pair in by_pair.values():
        have = {c.source: c for c in reversed(pair)}  # each source's first cell of the pair
        pick = next((have[sources[(turn + i) % len(sources)]] for i in range(len(sources))
                     if sources[(turn + i) % len(sources)] in have), pair[0])
        turn += pick.kind == "quantize"
        first.append(pick)
    chosen = set(first)
    return first + [c for c in ordered if c not in chosen]


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
# prior. ONNX Runtime and baselines are lighter than OpenVINO's default INT8; accuracy-aware search has its own
# prior (`aa_factor`).
PRIOR = {("quantize", "accuracy-aware", "openvino"): 5.0, ("quantize", "default", "openvino"): 1.0,
         ("quantize", "default", "onnxruntime"): 0.6, ("baseline", "default", "openvino"): 0.6,
         ("baseline", "default", "onnxruntime"): 0.35}
AA_PRIOR_WEIGHT = 4.0  # the accuracy-aware prior counts as this many finished cells of the model
PAST_DUE = 0.1  # a cell running past its expected time is expected to need this fraction of it again
# Cells with a time from an earlier run (`earlier_times`) are expected to take it times their kind's pace in this
# run (`kind_of`): the seconds its finished cells took over the seconds they took then (the run's pace while a kind
# has none). The pace moves with the machine's load and by engine (on one machine, a day's OpenVINO cells took 0.7
# of an earlier day's, its ONNX Runtime cells the same), so it is learned, not assumed; on the same machine kind it
# starts at 1, counting as `EARLIER_TRUST` seconds of earlier work, and a kind's counts its first `KIND_TRUST`
# seconds at the run's pace, so one short cell does not swing it.
EARLIER_TRUST = 10.0
KIND_TRUST = 5.0
REUSED_SPEED = 0.3  # seconds a timed cell takes when all its timings are there: its file found and read
PACE_CELLS = 8  # the run's pace: the last this many finished cells of a (model, kind) pair seen before


def kind_of(cell: Cell) -> tuple:
    """What a cell's cost depends on besides its model: its kind, algorithm, engine and whether it is capped."""
    return cell.kind, cell.algo, cell.engine, cell.isa != NATIVE


def prior(cell: Cell) -> float:
    return PRIOR.get(kind_of(cell)[:3], 1.0)


def aa_factor(model: str) -> float:
    """An accuracy-aware cell's expected time in default cells of its model, before its own finished: NNCF ranks
    and restores layers until the drop is within bounds, which takes longer the more layers a model has (in the
    official grid's committed rows they took 2.4 default cells for ResNet20, 3.0 for ShuffleNetV2 x0.5 and 5.1
    for ResNet56): one default cell plus one per 25 M multiply-adds, at most 8."""
    from calib.core.zoo import model_info

    try:
        madds = model_info(model).madds_m or 50.0
    except Exception:  # noqa: BLE001 - a model outside the zoo: a middling size
        madds = 50.0
    return min(8.0, 1.0 + madds / 25.0)


def speed_prior(grid, cell: Cell, pairs: bool = True) -> float:
    """Seconds to time a cell alone before any cell was timed: each file's throughput and latency, each a
    warm-up and the repeats; a baseline that also times PyTorch has two files; a quantize cell also times its
    FP32 and INT8 files in turns for its speed-up (`calib.study.timing.speedup_fields`: two warm-ups, twice the
    repeats), unless `pairs` is off (rows made before that pair was timed)."""
    from calib.study.plan import measures_pytorch, protocol_of

    protocol = protocol_of(grid)
    once = protocol.warmup_s + protocol.repeats * protocol.duration_s
    if cell.kind == "quantize":
        return 2 * once + (2 * once if pairs else 0.0)
    files = 2 if measures_pytorch(grid, cell) else 1
    return files * 2 * once


def timings(folder: Path) -> dict[tuple[str, str], float]:
    """Each timing a run folder holds (`speed.jsonl`), as (model computation, the rest of its key as JSON: machine,
    ISA, protocol, versions), with when it was taken: a cell that makes such a file under the same rest reuses
    it (`calib.study.timing.timed`)."""
    from calib.core.runs import read_jsonl
    from calib.study.timing import SPEED

    known: dict[tuple[str, str], float] = {}
    for e in read_jsonl(folder / SPEED):
        key = dict(e.get("key", {}))
        known.setdefault((key.pop("what", ""), json.dumps(key, sort_keys=True)), float(e.get("time", 0.0)))
    return known


def timing_context(row: dict, protocol: dict, versions: dict) -> str:
    """The rest of a timing's key (`calib.study.timing.timed`) for a finished cell's row under `protocol`."""
    return json.dumps({"hardware_key": row.get("hardware_key"), "isa": row.get("isa"), "protocol": protocol,
                       "versions": versions}, sort_keys=True)


def reuses_timing(known: dict[tuple[str, str], float], fingerprint: str | None, context: str, quantize: bool,
                  at: float = float("inf")) -> bool:
    """Whether a finished cell whose model file has `fingerprint` finds all its timings among `known` under
    `context` (taken before `at`): the file's, and for a quantize cell its FP32-INT8 pair's too."""
    if not fingerprint or known.get((fingerprint, context), at) >= at:
        return False
    return not quantize or any(w.startswith("pair:") and w.endswith(f":{fingerprint}") and c == context and t < at
                               for (w, c), t in known.items())


def row_versions(row: dict) -> dict:
    """The library versions a row recorded (`version_<name>` fields), as a timing's key holds them."""
    return {k.removeprefix("version_"): v for k, v in row.items() if k.startswith("version_")}


def note_reuse(estimate: Estimate, known: dict, cell: Cell, row: dict, fingerprint: str | None, protocol: dict,
               versions: dict, at: float = float("inf")) -> None:
    """Tell `estimate` whether a cell whose work just ended (`row`, its file's `fingerprint`) will reuse all its
    timings (`reuses_timing` among `known`, taken before `at`)."""
    context = timing_context(row, protocol, versions)
    estimate.speed_reused(cell, reuses_timing(known, fingerprint, context, cell.kind == "quantize", at))


def expected_reuse(folder: Path, protocol: dict, versions: dict, before: float | None = None) -> set[str]:
    """Ids of the cells expected to reuse a timing before any of them runs: a cell whose earlier row in the
    folder (finished before `before`) has a file whose timings are all there under today's protocol, versions,
    machine and ISA: run again, it makes the same file. `Estimate.speed_reused` corrects the guess when the
    cell's work is done."""
    from calib.core.runs import read_jsonl

    known = timings(folder)
    if before is not None:
        known = {k: t for k, t in known.items() if t < before}
    out = set()
    for r in read_jsonl(folder / "rows.jsonl"):
        if r.get("status") != "ok" or (before is not None and r.get("finished_at", before) >= before):
            continue
        fingerprint = r.get("int8_model_fingerprint") or r.get("fp32_model_fingerprint")
        if reuses_timing(known, fingerprint, timing_context(r, protocol, versions), r.get("kind") == "quantize"):
            out.add(r.get("cell"))
    return out


def work_seconds(row: dict) -> float:
    """A finished cell's work: its wall time less its speed measurement and its one-off FP32 export."""
    steps = row.get("step_seconds") or {}
    return max(0.0, float(row.get("wall_seconds") or 0.0) - float(row.get("speed_seconds") or 0.0)
               - float(steps.get("export", 0.0)))


def cell_hardware_key(cell: Cell) -> str:
    """The `hardware_key` a cell's row gets on this machine."""
    from calib.core.hardware import cpu_model, hardware_key, native_isa

    native = native_isa()
    return hardware_key(cpu_model(), native if cell.isa == NATIVE else cell.isa, native)


def earlier_times(folders: Path | list[Path], cells: list[Cell], key=cell_hardware_key
                  ) -> tuple[dict[Cell, float], bool]:
    """Each cell's work seconds when it last ran in earlier runs' folders (their `rows.jsonl`): the newest ok row
    of the cell on this machine kind (`key(cell)`), else the newest on any. Cells keep their time from run to run
    far better than any model of them does (an accuracy-aware search takes as long as it restores layers, and
    the same set restores the same layers), so the estimate starts from these and scales them by the pace of
    this run (`Estimate`). Also whether every one of them ran on this machine kind."""
    from calib.core.runs import read_jsonl

    wanted = {c.id: c for c in cells}
    here = {c.id: key(c) for c in cells}  # once per cell, not per row
    newest: dict[str, tuple[bool, float, float]] = {}
    folders = [folders] if isinstance(folders, Path) else folders
    rows = (r for folder in folders if (folder / "rows.jsonl").is_file() for r in read_jsonl(folder / "rows.jsonl"))
    for r in rows:
        cell = wanted.get(r.get("cell"))
        if cell is None or r.get("status") != "ok" or not r.get("wall_seconds"):
            continue
        rank = (r.get("hardware_key") == here[cell.id], float(r.get("finished_at") or 0.0), work_seconds(r))
        newest[cell.id] = max(newest.get(cell.id, rank), rank)
    return {wanted[i]: t for i, (_, _, t) in newest.items()}, all(same for same, _, _ in newest.values())


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


def _pace(seconds: dict[Cell, float]) -> float:
    """How fast the run goes now against its past: the geometric mean, over the last `PACE_CELLS` finished cells
    whose (model, kind) pair had finished before, of each one's seconds over the mean of those earlier ones
    (within 1/2 and 2). Cells started later share the machine with other work, other sources, a warmer cache:
    the first cell of a pair alone says little of the last."""
    pairs: dict[tuple, list[float]] = {}
    ratios = []
    for cell, t in seconds.items():  # in the order they finished
        pair = pairs.setdefault((cell.model, kind_of(cell)), [])
        if pair:
            ratios.append(t / max(1e-3, sum(pair) / len(pair)))
        pair.append(t)
    if not ratios:
        return 1.0
    return min(2.0, max(0.5, _geomean(ratios[-PACE_CELLS:])))


def _as_default(cell: Cell) -> Cell:
    return replace(cell, algo="default", max_drop=0.01)


class Estimate:
    """Time left in a run: the work of the cells left, shared by `jobs` slots, then each timed cell's speed
    measured alone.

    - A cell that ran in an earlier run (`earlier`, from `earlier_times`) is expected to take its time there
      times this run's pace (`EARLIER_TRUST`, `KIND_TRUST`): with every cell known so, there is an estimate
      from the start.
    - Any other cell is expected to take what finished cells of its model and kind took (less the one-off FP32 export);
      a pair not seen yet, its model's factor times its kind's (`fit_factors`), else its kind's `PRIOR` in
      seconds per unit of prior. `longest_first` starts one cell of every pair early.
    - An accuracy-aware cell is expected to take `aa_factor` default cells of its model, weighed as
      `AA_PRIOR_WEIGHT` cells against its model's finished accuracy-aware cells: how long NNCF searches depends
      on what it restores, and the first cells (real images) restore least.
    - A running cell has its expected time less what it has run left, at least `PAST_DUE` of it.
    - The slots are simulated: running cells first, then the rest in `longest_first` order, each to the slot
      that frees first; the run's work ends when the last slot does.
    - Speed: each timed cell's `speed` prior, scaled by what the timed cells so far took against theirs, one
      after another in the order the runner times them; the one being timed counts its elapsed time.
    """

    def __init__(self, cells: list[Cell], jobs: int, speed: dict[Cell, float] | None = None,
                 earlier: dict[Cell, float] | None = None, same_machine: bool = False):
        self.work_left = list(cells)
        self.earlier = dict(earlier or {})  # cell -> its work seconds in an earlier run (`earlier_times`)
        self.same_machine = same_machine  # whether all of those ran on this machine kind
        speed = speed or {}
        self.speed_prior = {c: speed[c] for group in by_isa(list(cells)).values() for c in group if c in speed}
        self.speed_left = list(self.speed_prior)  # in the order the runner times them
        self.reused: set[Cell] = set()  # timed cells whose timings are all there already (`speed_reused`)
        self.jobs = jobs
        self.seconds: dict[Cell, float] = {}  # finished cells' work seconds
        self.speed_seconds: dict[Cell, float] = {}
        self.running: dict[Cell, float] = {}  # cell -> when its work started (time.time())
        self.last_end: float | None = None  # when the last work or speed ended (the next speed starts then)
        self.lock = threading.RLock()  # the runner reports while the progress line asks

    def started(self, cell: Cell, at: float | None = None) -> None:
        """A cell's work started (in a slot): from then on its elapsed time counts against what it is expected
        to take."""
        with self.lock:
            self.running[cell] = time.time() if at is None else at

    def work_done(self, cell: Cell, row: dict, at: float | None = None) -> None:
        """A cell's work ended (its speed, if timed, is still to come)."""
        with self.lock:
            self.running.pop(cell, None)
            if cell not in self.work_left:
                return
            self.work_left.remove(cell)
            self.last_end = time.time() if at is None else at
            if row.get("status") == "ok":
                self.seconds[cell] = work_seconds(row)

    def speed_reused(self, cell: Cell, reused: bool = True) -> None:
        """Whether a cell's file has all its timings already (`timings`): then its speed takes `REUSED_SPEED`."""
        with self.lock:
            if cell in self.speed_prior:
                (self.reused.add if reused else self.reused.discard)(cell)

    def row(self, cell: Cell, row: dict, at: float | None = None) -> None:
        """A cell's row arrived: its work (if not reported already) and its speed are done."""
        with self.lock:
            self.work_done(cell, row, at)
            if cell in self.speed_left:
                self.speed_left.remove(cell)
                self.last_end = time.time() if at is None else at
                if isinstance(row.get("speed_seconds"), int | float):
                    self.speed_seconds[cell] = float(row["speed_seconds"])

    def left(self, now: float | None = None) -> float | None:
        """Seconds left at `now` (time.time()), or None before any cell finished (unless every cell left has an
        earlier time)."""
        with self.lock:
            return self._left(time.time() if now is None else now)

    def _expected(self):
        """A function: the seconds a cell is expected to take, from the cells finished so far."""
        plain = {c: t for c, t in self.seconds.items() if c.algo != "accuracy-aware"}
        if not plain:  # only accuracy-aware cells finished: their default cells from them
            plain = {_as_default(c): t / aa_factor(c.model) for c, t in self.seconds.items()}
        pairs: dict[tuple, list[float]] = {}
        for c, t in plain.items():
            pairs.setdefault((c.model, kind_of(c)), []).append(t)
        means = {pair: sum(v) / len(v) for pair, v in pairs.items()}
        pace = _pace(plain)
        models, kinds = fit_factors(means)
        typical_model = _geomean(list(models.values())) if models else 1.0
        unit = _geomean([kinds[k] / PRIOR.get(k[:3], 1.0) for k in kinds]) if kinds else 1.0  # s per unit of prior
        searched: dict[str, list[float]] = {}
        for c, t in self.seconds.items():
            if c.algo == "accuracy-aware":
                searched.setdefault(c.model, []).append(t)

        def default(cell: Cell) -> float:
            kind = kind_of(cell)
            if (cell.model, kind) in means:
                return means[cell.model, kind] * pace
            return models.get(cell.model, typical_model) * kinds.get(kind, prior(cell) * unit) * pace

        again = [c for c in self.seconds if c in self.earlier]
        trust = EARLIER_TRUST if self.same_machine else 0.0
        overall = ((sum(self.seconds[c] for c in again) + trust) / (sum(self.earlier[c] for c in again) + trust)
                   if again or trust else 1.0)
        by_kind: dict[tuple, list[Cell]] = {}
        for c in again:
            by_kind.setdefault(kind_of(c), []).append(c)
        scale = {k: (sum(self.seconds[c] for c in v) + KIND_TRUST * overall)
                 / (sum(self.earlier[c] for c in v) + KIND_TRUST) for k, v in by_kind.items()}

        def expected(cell: Cell) -> float:
            if cell in self.earlier:
                return self.earlier[cell] * scale.get(kind_of(cell), overall)
            if cell.algo != "accuracy-aware":
                return default(cell)
            seen = searched.get(cell.model, [])
            guess = default(_as_default(cell)) * aa_factor(cell.model)
            return (AA_PRIOR_WEIGHT * guess + sum(seen)) / (AA_PRIOR_WEIGHT + len(seen))

        return expected

    def _left(self, now: float) -> float | None:
        if not self.seconds and not all(c in self.earlier for c in self.work_left):
            return None
        expected = self._expected()

        def remaining(expect: float, since: float) -> float:
            return max(expect - max(0.0, now - since), PAST_DUE * expect)

        slots = sorted(remaining(expected(c), t) for c, t in self.running.items() if c in self.work_left)
        slots += [0.0] * max(0, self.jobs - len(slots))
        for cell in longest_first([c for c in self.work_left if c not in self.running]):
            slots[slots.index(min(slots))] += expected(cell)
        work = max(slots, default=0.0)
        timed = [c for c in self.speed_prior if c in self.speed_seconds and c not in self.reused]
        scale = (sum(self.speed_seconds[c] for c in timed) / max(1e-9, sum(self.speed_prior[c] for c in timed))
                 if timed else 1.0)
        speed = [REUSED_SPEED if c in self.reused else self.speed_prior[c] * scale for c in self.speed_left]
        if speed and not self.work_left and self.last_end is not None:
            speed[0] = remaining(speed[0], self.last_end)  # being timed now
        return work + sum(speed)


def simulate(rows: list[dict], jobs: int) -> list[tuple[float, float | None, float]]:
    """A finished run's cells scheduled again, as `longest_first` orders them, on `jobs` slots, each taking the
    seconds its row took, and fed to `Estimate` as they end: (elapsed, estimated seconds left, seconds actually
    left) after each. What the estimate would have said of that run, from its own rows."""
    done = {_cell(r): r for r in rows if r.get("status") == "ok"}
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
        estimate.work_done(cell, done[cell], at=t)
        out.append((t, estimate.left(now=t), end - t))
    return out


def _cell(row: dict) -> Cell:
    fields = set(Cell.__dataclass_fields__)
    return Cell(**{k: v for k, v in row.items() if k in fields})


def replay(rows: list[dict], jobs: int, speed: dict[Cell, float] | None = None, start: float | None = None,
           every: float = 10.0, known: dict | None = None, protocol: dict | None = None,
           reused: set[str] | None = None, earlier: tuple[dict[Cell, float], bool] | None = None
           ) -> list[tuple[float, float | None, float]]:
    """A finished run's rows fed to `Estimate` as they happened (each cell's start, end of work and row) and asked
    every `every` seconds, as the progress line asks: (elapsed, estimated seconds left, seconds actually left).
    Elapsed counts from `start` (when the run began; default the first cell's start). `speed`: each timed cell's
    prior seconds (`speed_prior`); `known`, `protocol`: the folder's `timings` and the grid's protocol, to tell
    the cells whose timings were there already when their work ended; `reused`: the ids of those expected to
    reuse theirs from the start (`expected_reuse`); `earlier`: the cells' times in an earlier run
    (`earlier_times`)."""
    cells = [(_cell(r), r) for r in rows if "started_at" in r and "finished_at" in r]
    if not cells:
        return []
    estimate = Estimate([c for c, _ in cells], jobs, speed, *(earlier or ()))
    for cell, _ in cells:
        if cell.id in (reused or ()):
            estimate.speed_reused(cell)
    events = sorted([(r["started_at"], 0, i) for i, (_, r) in enumerate(cells)]
                    + [(r.get("work_finished_at", r["finished_at"]), 1, i) for i, (_, r) in enumerate(cells)]
                    + [(r["finished_at"], 2, i) for i, (_, r) in enumerate(cells)])
    start = min(events[0][0], start) if start is not None else events[0][0]
    end = max(r["finished_at"] for _, r in cells)
    out, pos, t = [], 0, start + every
    while t < end:
        while pos < len(events) and events[pos][0] <= t:
            at, what, i = events[pos]
            cell, row = cells[i]
            if what == 0:
                estimate.started(cell, at)
            elif what == 1:
                estimate.work_done(cell, row, at)
                fingerprint = row.get("int8_model_fingerprint") or row.get("fp32_model_fingerprint")
                note_reuse(estimate, known or {}, cell, row, fingerprint, protocol or {}, row_versions(row), at)
            else:
                estimate.row(cell, row, at)
            pos += 1
        out.append((t - start, estimate.left(t), end - t))
        t += every
    return out


_PROGRESS = re.compile(r"(?P<done>\d+)/(?P<total>\d+) \(\d+ %\), (?P<elapsed>.+?) elapsed(?:, about (?P<left>.+?) "
                       r"left)?$")
_UNIT = re.compile(r"(\d+(?:\.\d+)?) (h|min|s)\b")


def _seconds(text: str) -> float:
    return sum(float(n) * {"h": 3600, "min": 60, "s": 1}[u] for n, u in _UNIT.findall(text))


def log_points(text: str) -> list[tuple[float, float | None, float]]:
    """(elapsed, said left, actually left) of each progress line a `calib study run` wrote when piped (one every
    10 s); the last line is the run's end."""
    points = [(_seconds(m["elapsed"]), _seconds(m["left"]) if m["left"] else None)
              for line in text.splitlines() if (m := _PROGRESS.search(line.strip()))]
    end = points[-1][0] if points else 0.0
    return [(elapsed, left, end - elapsed) for elapsed, left in points]


def worst_error(points: list[tuple[float, float | None, float]], floor: float = 30.0) -> float | None:
    """The largest |said - actual| / actual of a run's time-left estimates after a quarter of the run, while at
    least `floor` seconds were left (closer to the end a few seconds are a large share); None without any."""
    if not points:
        return None
    end = points[-1][0] + points[-1][2]
    errors = [abs(left - actual) / actual for elapsed, left, actual in points
              if left is not None and elapsed >= end / 4 and actual >= floor]
    return max(errors, default=None)


def replay_run(rows_path: Path, hardware: str | None = None, jobs: int | None = None,
               every: float = 10.0, earlier: Path | None = None) -> list[tuple[float, float | None, float]]:
    """`replay` of a run folder's newest run (the rows that started after its newest manifest; of those whose
    `hardware_key` contains `hardware`), from when that run began, with the speed priors of its grid and its
    summary's jobs; with `earlier` (another run's folder), each cell's time there (`earlier_times`, preferring
    rows of the replayed row's machine kind)."""
    from calib.core.runs import read_jsonl
    from calib.study.grid import load_grid

    folder = rows_path.parent
    rows = [r for r in read_jsonl(rows_path) if hardware is None or hardware in str(r.get("hardware_key", ""))]
    rows = [r for r in rows if "started_at" in r and "finished_at" in r]
    if not rows:
        return []
    if jobs is None:
        summary = folder / "summary.json"
        jobs = int(json.loads(summary.read_text()).get("jobs", 2)) if summary.is_file() else 2
    speed, protocol = {}, None
    if (folder / "grid.toml").is_file():
        from dataclasses import asdict

        from calib.study.plan import protocol_of

        grid = load_grid(folder / "grid.toml")
        protocol = asdict(protocol_of(grid))
        pairs = any("int8_speedup" in r for r in rows)  # rows from before the speed-up pair took no time for it
        speed = {_cell(r): speed_prior(grid, _cell(r), pairs) for r in rows if r.get("timed")}
    began = sorted(int(p.stem.split("-")[-1]) for p in folder.glob("manifest-*.json")
                   if p.stem.split("-")[-1].isdigit())
    first = min(r["started_at"] for r in rows)
    start = max((t for t in began if t <= first), default=None)
    if began and began[-1] > first:  # a folder resumed or rerun later: the newest run's cells alone
        rows = [r for r in rows if r["started_at"] >= began[-1]]
        start = began[-1]
    known = timings(folder)
    reused = None
    if protocol is not None and start is not None:
        reused = expected_reuse(folder, protocol, row_versions(rows[0]), start)
    before = None
    if earlier is not None:
        keys = {r["cell"]: r.get("hardware_key") for r in rows}
        before = earlier_times(earlier, [_cell(r) for r in rows], key=lambda c: keys.get(c.id))
    return replay(rows, jobs, speed, start, every, known, protocol, reused, before)
