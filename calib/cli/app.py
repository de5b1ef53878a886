"""What every command shares: the `App`/`Group` classes (-q/-v on every command, one-line errors), the run's
state (quiet, library log), and the output helpers (`emit`, `print_json`, `result_table`, `say`).

Nothing heavy is imported here: library modules are imported inside the helpers that need them.
"""

from __future__ import annotations

import csv
import functools
import inspect
import io
import json
import sys
from collections.abc import Callable
from contextvars import ContextVar
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from calib.core.errors import CalibError

console = Console()  # results: bound to the command's stdout while it runs
err_console = Console(stderr=True)
HELP_WIDTH = 120  # help text wraps at this width (or the terminal's, if narrower); option names never shorten
PIPE_WIDTH = 100_000  # a result printed to a pipe or file is never wrapped or cut
# click's exception base, whichever click typer runs on (its own copy, or click itself)
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_RUN: ContextVar[dict] = ContextVar("calib_run")  # this command's --quiet and library log


def print_error(message: str) -> None:
    """A problem as one line on stderr with calib's one prefix, `error: `, whoever found it (click's parser,
    typer's validation, or calib): the message's own line breaks and runs of spaces become single spaces."""
    err_console.print(f"[red]error:[/red] {escape(' '.join(str(message).split()))}", highlight=False, emoji=False,
                      soft_wrap=True)


class Group(TyperGroup):
    """Usage errors (unknown option, wrong type, value out of range) as one line on stderr, exit code 2; a group
    called without a command prints its help on stderr (exit code 2), as click does, not as an error line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # no command given: the help, as it is
                print(e.format_message(), file=sys.stderr)
                sys.exit(e.exit_code)
            where = f" (see {e.ctx.command_path} --help)" if getattr(e, "ctx", None) is not None else ""
            print_error(f"{e.format_message()}{where}")
            sys.exit(e.exit_code)
        except CalibError as e:  # raised while options are parsed (a callback), before the command runs
            print_error(str(e))
            sys.exit(e.exit_code)
        except typer.Abort:
            print("aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr (a bar on a terminal, a line "
                                                           "every 10 s elsewhere).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show other libraries' logs and bars (NNCF, "
                                                               "OpenVINO) on stderr instead of the run's log.")]


def _with_common_options(fn: Callable) -> tuple[Callable, bool]:
    """`fn`'s signature plus `--quiet` (unless it has one) and `--verbose`; returns (signature holder, has quiet)."""
    sig = inspect.signature(fn, eval_str=True)
    params = list(sig.parameters.values())
    has_quiet = "quiet" in sig.parameters
    extra = [] if has_quiet else [inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False,
                                                    annotation=Quiet)]
    extra.append(inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Verbose))
    return sig.replace(parameters=[*params, *extra]), has_quiet


class App(typer.Typer):
    """A Typer whose commands all take `--quiet` and `--verbose`, keep stdout for their result, and turn
    `CalibError` into one red line (exit code 1, or 2 for `OptionError`), never a traceback."""

    def __init__(self, **kw):
        super().__init__(cls=Group, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                         rich_markup_mode=None, context_settings={"max_content_width": HELP_WIDTH}, **kw)

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def deco(fn):
            signature, has_quiet = _with_common_options(fn)

            @functools.wraps(fn)
            def wrapped(*a, **k):
                from calib.core.progress import library_output

                quiet = k["quiet"] if has_quiet else k.pop("quiet")
                verbose = k.pop("verbose")
                stdout = sys.stdout
                console.file = stdout
                console.width = PIPE_WIDTH if not stdout.isatty() else None
                run = {"quiet": quiet, "log": None}
                token = _RUN.set(run)
                try:
                    with library_output(verbose) as log:
                        run["log"] = log
                        return fn(*a, **k)
                except CalibError as e:
                    print_error(str(e))
                    raise typer.Exit(e.exit_code) from None
                except KeyboardInterrupt:
                    err_console.print("[red]interrupted[/red]")
                    raise typer.Exit(130) from None
                finally:
                    _RUN.reset(token)
                    console.file = None
                    console.width = None

            wrapped.__signature__ = signature
            wrapped.__annotations__ = {**getattr(fn, "__annotations__", {}), "verbose": Verbose,
                                       **({} if has_quiet else {"quiet": Quiet})}
            return register(wrapped)

        return deco


def is_quiet() -> bool:
    """Whether the running command was given --quiet."""
    return bool(_RUN.get({}).get("quiet", False))


def run_log():
    """Where other libraries' output goes during this command (None with --verbose: it goes to stderr)."""
    return _RUN.get({}).get("log")


def spinner(description: str):
    """A spinner with the time elapsed for a step that reports no counts (a line every 10 s off a terminal)."""
    from calib.core.progress import progress

    return progress(description, None, is_quiet())


def keep_log(folder: Path) -> None:
    """Keep what other libraries said during this command in `<folder>/calib.log` (nothing with --verbose)."""
    log = run_log()
    if log is not None and folder.is_dir():
        log.save(folder / "calib.log")


class Format(str, Enum):
    text = "text"
    json = "json"
    csv = "csv"


OutputFormat = Annotated[Format, typer.Option("--format", help="text: a short summary for people; json or csv: "
                                                                "the result rows, as recorded.")]


def _stdout():
    return console.file


def print_json(obj) -> None:
    """One JSON document on stdout: coloured on a terminal, plain text in a pipe."""
    from calib.core.runs import to_jsonable

    text = json.dumps(to_jsonable(obj), indent=1)
    if console.is_terminal:
        console.print_json(text)
    else:
        _stdout().write(text + "\n")


def records(df) -> list[dict]:
    """A DataFrame's rows as plain dicts, missing values as None (JSON null)."""
    return df.astype(object).where(df.notna(), None).to_dict("records")


def _csv_value(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, dict | list) else ("" if v is None else v)


def emit(rows: dict | list[dict], fmt: Format, text: Callable[[], None]) -> None:
    """The command's result: `text()` for people, or the rows as JSON (one object, or a list) or CSV."""
    from calib.core.runs import to_jsonable

    if fmt == Format.text:
        text()
        return
    data = to_jsonable(rows)
    if fmt == Format.json:
        _stdout().write(json.dumps(data, indent=1) + "\n")
        return
    data = [data] if isinstance(data, dict) else data
    columns = list(dict.fromkeys(k for r in data for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_value(r.get(k)) for k in columns} for r in data)
    _stdout().write(buf.getvalue())


def result_table(*headers: str, caption: str | None = None, title: str | None = None) -> Table:
    """A rich table whose cells never wrap or shorten (in a pipe the console is as wide as the table)."""
    from rich.table import Column

    return Table(*(Column(h, no_wrap=True) for h in headers), caption=caption, title=title)


def say(text: str) -> None:
    """One line of result text for people, printed as it is."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)
