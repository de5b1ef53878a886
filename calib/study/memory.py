"""Peak memory of a run: this process and all its worker processes together, sampled in a thread that pauses
while speed is timed."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator


def peak_rss_mib() -> float:
    """Largest resident set of this process or any finished child, in MiB (ru_maxrss is in KiB on Linux)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def _pss_or_rss(proc) -> int:
    """Proportional set size (a page shared by n processes counts 1/n in each, so a sum over processes counts
    shared libraries once), or the resident set size where the system gives no PSS."""
    try:
        return proc.memory_full_info().pss
    except Exception:  # noqa: BLE001 - AccessDenied, or no smaps on this system
        return proc.memory_info().rss


class PeakMemory:
    """Peak memory of this process and all its descendants together (worker pools, Ray), sampled: the largest
    sum of their proportional set sizes (see `_pss_or_rss`). `paused()` stops sampling (timing runs alone)."""

    def __init__(self, interval_s: float = 0.5):
        import threading

        self.interval_s, self.peak_bytes = interval_s, 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # held by a sample, or by `paused` for as long as timing runs
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        total = _pss_or_rss(me)
        for child in me.children(recursive=True):
            try:
                total += _pss_or_rss(child)
            except psutil.Error:
                pass  # ended between listing and reading
        self.peak_bytes = max(self.peak_bytes, total)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                if not self._stop.is_set():
                    self._sample()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No sample is taken inside this block (the sampler waits on the lock, using no CPU)."""
        with self._lock:
            yield

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def mib(self) -> float:
        return max(self.peak_bytes / 2**20, peak_rss_mib())  # never below the largest single process
