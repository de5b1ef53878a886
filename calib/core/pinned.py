"""Made data is made with pinned kernels, so a seed gives the same bytes on every CPU.

A generator's float arithmetic follows the instruction set its libraries dispatch to (oneDNN's convolutions above
all): the same DiStyleGAN or inversion seed gave other set bytes on an AVX-512 machine than on an AVX2 one. Every
CPU calib runs on has AVX2, so sources whose images come out of float kernels run in a process with every library
capped at AVX2 (`calib.core.hardware.cap_env`); an AVX2 machine is unchanged by the cap, a newer one reproduces it.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from calib.core.hardware import cap_env, environment

PINNED_ISA = "avx2"
T = TypeVar("T")


def pinned_env() -> dict[str, str]:
    """The environment a pinned process runs with."""
    return cap_env(PINNED_ISA)


def pinned_here() -> bool:
    """Whether this process was started with the pinned environment."""
    return all(os.environ.get(k) == v for k, v in pinned_env().items())


_PROGRESS: Any = None  # the child's end of the progress queue


def _child_init(progress_queue) -> None:
    global _PROGRESS
    _PROGRESS = progress_queue


def _call_with_progress(fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    if _PROGRESS is not None:
        kwargs = {**kwargs, "progress": lambda done, total: _PROGRESS.put((done, total))}
    return fn(*args, **kwargs)


def call_pinned(fn: Callable[..., T], *args, progress: Callable[[int, int], None] | None = None, **kwargs) -> T:
    """`fn(*args, **kwargs)` with pinned kernels: here where this process is pinned, else in a fresh process
    started with the pinned environment (`fn` and its arguments must pickle). `progress(done, total)`, where
    given, is handed to `fn` and forwarded from the child."""
    if pinned_here():
        return fn(*args, **kwargs, **({"progress": progress} if progress is not None else {}))
    ctx = multiprocessing.get_context("spawn")
    updates = ctx.Queue() if progress is not None else None
    with environment(pinned_env()):  # the child is started inside `submit`: pinned from its first instruction
        pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=_child_init, initargs=(updates,))
        future = pool.submit(_call_with_progress, fn, args, kwargs)
    with pool:
        if updates is not None:
            def forward() -> None:
                while not future.done():
                    try:
                        progress(*updates.get(timeout=0.2))
                    except queue.Empty:
                        pass

            thread = threading.Thread(target=forward, daemon=True)
            thread.start()
            result = future.result()
            thread.join()
        else:
            result = future.result()
    return result
