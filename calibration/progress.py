"""One rich progress bar for long steps: drawn on a terminal, silent in pipes, logs, tests and with `--quiet`.

Another live display already on screen (the study runner's bar) also keeps it silent instead of failing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, redirect_stdout
from typing import TypeVar

T = TypeVar("T")


def enabled(quiet: bool = False) -> bool:
    """A bar is drawn only for a person watching: not quiet and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def progress(description: str, total: float | None = None, quiet: bool = False) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, total=None, description=None, completed=None)`; `total=None` shows a spinner.

    `completed` sets the count instead of adding `n` (for callbacks that report `(done, total)`).
    """
    from rich.console import Console
    from rich.errors import LiveError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(stderr=True), transient=True, disable=not enabled(quiet))
    task = bar.add_task(description, total=total)

    def advance(n: float = 1, total: float | None = None, description: str | None = None,
                completed: float | None = None) -> None:
        fields = {"total": total, "description": description, "completed": completed}
        bar.update(task, advance=None if completed is not None else n,
                   **{k: v for k, v in fields.items() if v is not None})

    try:
        bar.start()
    except LiveError:  # another live display is on screen: stay silent rather than fail
        bar.disable = True
    try:
        yield advance
    finally:
        bar.stop()


@contextmanager
def others_quiet(quiet: bool = False) -> Iterator[None]:
    """Silence other libraries' bars (NNCF draws its own on stdout) unless a person is watching."""
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
