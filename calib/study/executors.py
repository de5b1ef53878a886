"""Where cells run: in this process, in local worker processes, or as Ray tasks; the driver alone writes rows.

A cell with an ISA cap (`isa` other than native) runs in a process started with `ONEDNN_MAX_CPU_ISA` in its
environment, so the cap holds before OpenVINO or PyTorch is imported. Speed is always timed with nothing else
running, after the rest of the work (`calib.study.timing`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from calib.core.errors import CalibError
from calib.core.hardware import NATIVE, environment, isa_env
from calib.study.cells import run_cell
from calib.study.grid import Cell
from calib.study.resolve import Resolved
from calib.study.rows import append_row, error_row, failure_fields
from calib.study.schedule import by_isa, core_shares, longest_first, pin_worker
from calib.study.timing import add_speed

if TYPE_CHECKING:
    from calib.study.memory import PeakMemory


def isa_environment(isa: str) -> contextlib.AbstractContextManager[None]:
    """This process's environment holds every library's cap for `isa` (none for native) inside the block, so
    worker processes started inside it have them from their first instruction. The driver itself runs no kernels
    meanwhile (it only waits on its workers), and the libraries already loaded here are unaffected."""
    return environment(isa_env(isa))


@contextlib.contextmanager
def worker_pool(isa: str, workers: int, pin: bool = True):
    """A pool of `workers` fresh (spawned) processes that run `isa`; with `pin`, each keeps to its own share of
    the cores."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    shares = context.Queue()
    for share in core_shares(workers, pin):
        shares.put(share)
    with isa_environment(isa), ProcessPoolExecutor(workers, mp_context=context, initializer=pin_worker,
                                                   initargs=(shares,)) as pool:
        yield pool


def _alone(memory: PeakMemory | None) -> contextlib.AbstractContextManager[None]:
    """Nothing else of this process samples while a timing runs: the memory sampler pauses."""
    return memory.paused() if memory is not None else contextlib.nullcontext()


class Slots:
    """`jobs` slots, each one share of the cores with one worker process per ISA, started the first time that
    slot runs a cell of that ISA (with the ISA's caps from its first instruction). A slot runs one cell at a
    time, so cells of every ISA share one longest-first queue and no two cells ever share a core."""

    def __init__(self, jobs: int, pin: bool = True):
        self.shares = core_shares(jobs, pin)
        self.pools: dict[tuple[int, str], object] = {}
        self.lock = threading.Lock()  # pools start under it: os.environ holds one ISA's caps at a time

    def pool(self, slot: int, isa: str):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with self.lock:
            if (slot, isa) not in self.pools:
                context = multiprocessing.get_context("spawn")
                share = context.Queue()
                share.put(self.shares[slot])
                with isa_environment(isa):
                    pool = ProcessPoolExecutor(1, mp_context=context, initializer=pin_worker, initargs=(share,))
                    pool.submit(int).result()  # the worker starts here, inside the ISA's environment
                self.pools[(slot, isa)] = pool
            return self.pools[(slot, isa)]

    def forget(self, slot: int, isa: str) -> None:
        """Drop a slot's worker of an ISA (it died): the next cell starts a fresh one."""
        with self.lock:
            pool = self.pools.pop((slot, isa), None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown()


def _work_in_slots(resolved: list[Resolved], out: Path, jobs: int, finish: Callable[[Resolved, dict], None],
                   on_start: Callable[[Cell, float], None] | None = None) -> None:
    """Every cell's work in `jobs` slots (`Slots`), longest first across all ISAs; `on_start(cell, time)` and
    `finish(cell, row)` are called in this thread as cells start and end."""
    of = {rc.cell: rc for rc in resolved}
    order = deque(of[c] for c in longest_first(list(of)))
    taken = threading.Lock()
    events: queue.Queue = queue.Queue()
    slots = Slots(jobs)

    def work(slot: int) -> None:
        while True:
            with taken:
                if not order:
                    return
                rc = order.popleft()
            events.put(("start", rc, time.time()))
            try:
                row = slots.pool(slot, rc.cell.isa).submit(run_cell, rc, out, False).result()
            except Exception as e:  # noqa: BLE001 - a worker died (killed, out of memory)
                slots.forget(slot, rc.cell.isa)
                row = error_row(rc, f"worker process failed: {type(e).__name__}: {e}")
            events.put(("done", rc, row))

    threads = [threading.Thread(target=work, args=(slot,), daemon=True) for slot in range(min(jobs, len(resolved)))]
    try:
        for t in threads:
            t.start()
        ended = 0
        while ended < len(resolved):
            what, rc, detail = events.get()
            if what == "start":
                if on_start is not None:
                    on_start(rc.cell, detail)
                continue
            finish(rc, detail)
            ended += 1
        for t in threads:
            t.join()
    finally:
        slots.close()


def run_local(name: str, resolved: list[Resolved], out: Path, rows_path: Path, jobs: int, progress: bool,
              memory: PeakMemory | None = None, on_row: Callable[[dict], None] | None = None,
              on_work: Callable[[Cell, dict], None] | None = None,
              on_start: Callable[[Cell, float], None] | None = None) -> None:
    """Every cell's work, then the speed of the timed cells, one at a time with nothing else running (a timed
    cell's row is written only once its speed is in, so a run killed before that redoes the cell). With `jobs`
    1, native cells work in this process and each capped ISA in a process of its own; with more, in `jobs` slots
    that take the longest cells first whatever their ISA (`Slots`). Each capped ISA's speed is timed in one fresh
    process of that ISA. `on_work(cell, row)` is told when a cell's work is done (a timed one's row comes later)."""
    from concurrent.futures import as_completed

    from calib.core.progress import progress as progress_bar

    pending: dict[Cell, dict] = {}
    of = {rc.cell: rc for rc in resolved}
    groups = by_isa(list(of))
    with progress_bar(f"study {name}", len(resolved), quiet=not progress) as advance:

        def finish(rc: Resolved, row: dict) -> None:
            if on_work is not None:
                on_work(rc.cell, row)
            if row.pop("speed_pending", False):
                pending[rc.cell] = row
                return
            append_row(rows_path, row, on_row)
            advance()

        if jobs > 1:
            advance(0, description=f"{len(resolved)} cells in {jobs} slots")
            _work_in_slots(resolved, out, jobs, finish, on_start)
        for isa, group in groups.items() if jobs == 1 else ():
            if isa == NATIVE:
                for cell in group:
                    advance(0, description=f"{cell.kind} {cell.model} {cell.engine} {cell.source} {cell.algo}")
                    if on_start is not None:
                        on_start(cell, time.time())
                    finish(of[cell], run_cell(of[cell], out, False))
                continue
            with worker_pool(isa, 1) as pool:
                futures = {pool.submit(run_cell, of[c], out, False): of[c] for c in longest_first(group)}
                advance(0, description=f"{len(futures)} cells ({isa}) in 1 process")
                for future in as_completed(futures):
                    rc = futures[future]
                    try:
                        row = future.result()
                    except Exception as e:  # noqa: BLE001 - a worker died (killed, out of memory)
                        row = error_row(rc, f"worker process failed: {type(e).__name__}: {e}")
                    finish(rc, row)
        for isa, group in groups.items():
            timed_cells = [c for c in group if c in pending]
            if not timed_cells:
                continue
            advance(0, description=f"speed ({isa}), {len(timed_cells)} cells")
            with _alone(memory), (worker_pool(isa, 1, pin=False) if isa != NATIVE
                                       else contextlib.nullcontext()) as pool:
                for cell in timed_cells:
                    if pool is None:
                        row = add_speed(of[cell], pending[cell], out)
                    else:
                        try:
                            row = pool.submit(add_speed, of[cell], pending[cell], out).result()
                        except Exception as e:  # noqa: BLE001 - the worker died
                            row = pending[cell] | failure_fields(e)
                    append_row(rows_path, row, on_row)
                    advance()


def run_ray(resolved: list[Resolved], out: Path, rows_path: Path, address: str | None,
            memory: PeakMemory | None = None, on_row: Callable[[dict], None] | None = None) -> None:
    """Cells that measure no speed run as parallel Ray tasks; then every timed cell runs alone, one at a time.
    A capped-ISA cell runs in a Ray worker started with the cap in its environment (its own runtime_env). The
    driver alone writes rows; a task that dies (a killed worker) becomes an error row."""
    try:
        import ray
    except ImportError:
        raise CalibError("the ray executor needs `pip install 'calib[ray]'`") from None
    calib_env = {k: v for k, v in os.environ.items() if k.startswith("CALIB_")}
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": calib_env})
    remote = ray.remote(run_cell)

    def submit(rc: Resolved):
        task = remote if not rc.caps else remote.options(runtime_env={"env_vars": calib_env | rc.caps})
        return task.remote(rc, out, True)

    def collect(pending: dict) -> None:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            rc = pending.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - e.g. the worker process was killed
                row = error_row(rc, f"Ray task failed: {type(e).__name__}: {str(e)[:300]}")
            append_row(rows_path, row, on_row)

    try:
        collect({submit(rc): rc for rc in resolved if not rc.timed})
        with memory.paused() if memory is not None else contextlib.nullcontext():
            for rc in resolved:
                if rc.timed:
                    collect({submit(rc): rc})
    finally:
        if started:
            ray.shutdown()
