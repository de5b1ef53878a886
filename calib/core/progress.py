"""Progress for people and for pipes, and where other libraries' output goes while calib works.

- On a terminal (stderr a TTY): a rich bar on stderr, gone when the step ends.
- Anywhere else (pipes, files, CI), unless `--quiet`: one plain line on stderr about every `HEARTBEAT_S` seconds
  with the same counts, so a slow step is never silent for long.
- Bars share one console: a bar started inside another's step is drawn below it (older rich: kept silent).
- `library_output`: while a command works, whatever libraries print to stdout (NNCF's bars) and the "nncf"
  logger go to stderr with `--verbose`, else into a temporary log that a command may keep in its run folder.
  stdout then carries the command's result alone.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")
HEARTBEAT_S = 10.0  # seconds between progress lines when stderr is not a terminal
LIBRARY_LOGGERS = ("nncf",)  # loggers whose handlers are routed with the library output


def enabled(quiet: bool = False) -> bool:
    """A bar is drawn only for a person watching: not quiet and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`: for progress lines and summaries."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _Heartbeat:
    """A thread that writes one line about a step every `HEARTBEAT_S` seconds to a stream that is no terminal, and
    after any, one more when the step ends well: a log then says when it ended, not only when it was last asked
    (a step too short for a line stays silent)."""

    def __init__(self, line: Callable[[], str], stream: IO[str]):
        self.line, self.stream, self.stop_event = line, stream, threading.Event()
        self.wrote = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="calib-progress")

    def _write(self) -> bool:
        """One line; False where the stream was closed under us (nothing more to say)."""
        try:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
        except (ValueError, OSError):
            return False
        self.wrote = True
        return True

    def _run(self) -> None:
        while not self.stop_event.wait(HEARTBEAT_S):
            if not self._write():
                return

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, kind, *exc) -> None:
        self.stop_event.set()
        self.thread.join()
        if kind is None and self.wrote:
            self._write()


def status_line(description: str, completed: float, total: float | None, elapsed: float,
                left: float | None = None) -> str:
    """`quantize: 120/300 (40 %), 12 s elapsed, about 18 s left`; without a total, the elapsed time only."""
    parts = [description + ":"]
    if total:
        parts.append(f"{completed:g}/{total:g} ({100 * completed / total:.0f} %),")
    parts.append(f"{duration(elapsed)} elapsed")
    if left is not None and total and completed < total:
        parts[-1] += f", about {duration(left)} left"
    return " ".join(parts)


@functools.cache
def stderr_console():
    """One console for every bar, so that a bar inside another's step is drawn with it, not over it."""
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def progress(description: str, total: float | None = None, quiet: bool = False,
             left: Callable[[], float | None] | None = None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, total=None, description=None, completed=None)`; `total=None` shows a spinner.

    `completed` sets the count instead of adding `n` (for callbacks that report `(done, total)`). `left()`, where
    given, is the seconds left (for work whose items take unequal times); else the count's rate says it.
    """
    from rich.errors import LiveError
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    remaining = TextColumn("{task.fields[left]}") if left is not None else TimeRemainingColumn()
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), remaining, console=stderr_console(), transient=True,
                   disable=not enabled(quiet))
    task = bar.add_task(description, total=total, left="")

    def left_text() -> str:
        seconds = left() if left is not None else None
        return f"about {duration(seconds)} left" if seconds is not None else ""
    t0 = time.perf_counter()
    first: list[float] = []  # the count when counting began (a resumed study starts above 0)

    def advance(n: float = 1, total: float | None = None, description: str | None = None,
                completed: float | None = None) -> None:
        if not first:
            first.append(completed if completed is not None else 0.0)
        fields = {"total": total, "description": description, "completed": completed}
        bar.update(task, advance=None if completed is not None else n,
                   **{k: v for k, v in fields.items() if v is not None}, left=left_text())

    def line() -> str:
        t = bar.tasks[0]
        elapsed = time.perf_counter() - t0
        done_now = t.completed - (first[0] if first else 0.0)
        if left is not None:
            seconds = left()
        else:
            seconds = (t.total - t.completed) * elapsed / done_now if t.total and done_now > 0 else None
        return status_line(t.description, t.completed, t.total, elapsed, seconds)

    def note(text: str) -> None:
        """One line on stderr (above the bar on a terminal), also with `quiet`: for errors worth seeing."""
        if bar.disable:
            print(text, file=sys.stderr, flush=True)
        else:
            bar.console.print(text, highlight=False, markup=False, soft_wrap=True)

    advance.note = note  # type: ignore[attr-defined]

    try:
        bar.start()
    except LiveError:  # another live display is on screen: stay silent rather than fail
        bar.disable = True
        quiet = True
    try:
        if quiet or not bar.disable:
            yield advance
        else:
            with _Heartbeat(line, sys.stderr):
                yield advance
    finally:
        bar.stop()


@contextmanager
def others_quiet(quiet: bool = False) -> Iterator[None]:
    """Silence other libraries' bars on stdout unless a person is watching (for library callers; the CLI routes
    them with `library_output`)."""
    if enabled(quiet):
        yield
        return
    with open(os.devnull, "w") as sink, redirect_stdout(sink):
        yield


def track(items: Iterable[T], description: str, total: int | None = None, quiet: bool = False) -> Iterator[T]:
    """Iterate with a bar (see `progress`)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(description, total, quiet) as advance:
        for item in items:
            yield item
            advance()


class LibraryLog:
    """Where other libraries' output goes during a command: stderr (`verbose`) or a temporary file."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.file: IO[str] | None = None if verbose else tempfile.TemporaryFile("w+", encoding="utf-8")

    @property
    def stream(self) -> IO[str]:
        return sys.stderr if self.file is None else self.file

    def save(self, path: Path) -> Path | None:
        """Append what the libraries said so far to `path` (e.g. `<run>/calib.log`); nothing with `verbose`."""
        if self.file is None:
            return None
        self.file.flush()
        self.file.seek(0)
        text = self.file.read()
        self.file.seek(0, os.SEEK_END)
        if text:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
        return path

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@contextmanager
def library_output(verbose: bool = False) -> Iterator[LibraryLog]:
    """Route stdout and the library loggers (`LIBRARY_LOGGERS`) to stderr (`verbose`) or a temporary log while
    the block runs; afterwards everything points where it did, or at the real stdout for handlers made meanwhile
    (NNCF binds its handler to whatever `sys.stdout` is when it is first imported)."""
    log = LibraryLog(verbose)
    stdout = sys.stdout
    ours = logging.StreamHandler(log.stream)
    ours.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    saved = {}
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate)
        logger.handlers = [ours]
        logger.propagate = False
        logger.setLevel(logging.INFO)
    try:
        with redirect_stdout(log.stream):
            yield log
    finally:
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            added = [h for h in logger.handlers if h is not ours and h not in handlers]
            for h in added:  # made during the block (a first import): bound to our stream, point them at stdout
                if isinstance(h, logging.StreamHandler) and h.stream is log.stream:
                    h.setStream(stdout)
            logger.handlers = handlers + added
            logger.setLevel(level)
            logger.propagate = propagate
        log.close()


@contextmanager
def fd_stdout(stream: IO[str]) -> Iterator[None]:
    """Point file descriptor 1 at `stream` while the block runs, so child processes (a study's workers) that
    print to their stdout write there too; a no-op when this process's stdout is not descriptor 1 (tests)."""
    try:
        real = sys.__stdout__.fileno() if sys.__stdout__ is not None else -1
        target = stream.fileno()
    except (OSError, ValueError, AttributeError):
        real, target = -1, -1
    if real != 1 or target < 0:
        yield
        return
    sys.__stdout__.flush()
    saved = os.dup(1)
    os.dup2(target, 1)
    try:
        yield
    finally:
        sys.__stdout__.flush()
        os.dup2(saved, 1)
        os.close(saved)
