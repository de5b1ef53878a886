"""`calib study`: run a grid (resumable), check cells against NNCF and OpenVINO, report, plot."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from calib.cli.app import App, Format, OutputFormat, Quiet, emit, err_console, records, run_log, say, spinner
from calib.cli.options import DataDir
from calib.core.errors import CalibError, OptionError

app = App(help="Study grids: run (resumable), check, report tables, plot heatmaps.")


class Executor(str, Enum):
    local = "local"
    ray = "ray"


@app.command("run")
def study_run(grid: Annotated[Path, typer.Argument(help="Grid TOML file.")],
              out: Annotated[Path | None, typer.Option(help="Run folder; default runs/study/<grid name>. A rerun "
                                                            "into it runs only the cells without an ok row.")]
              = None,
              executor: Annotated[Executor, typer.Option()] = Executor.local,
              address: Annotated[str | None, typer.Option(help="Ray cluster address (ray executor).")] = None,
              models: Annotated[str | None, typer.Option(help="Only these models (comma-separated).")] = None,
              sources: Annotated[str | None, typer.Option(help="Only these sources (comma-separated).")] = None,
              algos: Annotated[str | None, typer.Option(help="Only these algorithms (comma-separated).")] = None,
              seeds: Annotated[str | None, typer.Option(help="Only these seeds (comma-separated).")] = None,
              data_dir: DataDir = None,
              jobs: Annotated[int, typer.Option(min=1, help="Local worker processes for cells that time nothing; "
                                                            "timed cells always run alone.")] = 1,
              times_from: Annotated[Path | None, typer.Option(
                  help="An earlier run's folder: the time-left estimate starts from each cell's time there; "
                       "default results/study/<grid name> beside the grid's folder, where it is, and --out.")]
              = None,
              quiet: Quiet = False) -> None:
    """Run a grid; a rerun runs every cell without an ok row (so a killed run resumes, skipped cells retry).

    One progress bar (cells done of all, ok / skipped / errors, time left), one line per error, a summary."""
    from calib.core.progress import duration, fd_stdout, progress
    from calib.study.grid import Selection, load_grid, select
    from calib.study.runner import run_study
    from calib.study.schedule import Estimate, earlier_times, expected_reuse, note_reuse, speed_prior, timings

    if not grid.is_file():
        raise OptionError(f"grid file {grid} does not exist")
    split = lambda v: tuple(x.strip() for x in v.split(",") if x.strip()) if v else None  # noqa: E731
    try:  # the grid's fields and --models/--sources/... are options too: refused before any work, exit code 2
        seed_list = tuple(int(x) for x in split(seeds)) if seeds else None
    except ValueError:
        raise OptionError(f"--seeds {seeds}: give whole numbers joined by commas, e.g. 0,1") from None
    selection = Selection(split(models), split(sources), split(algos), seed_list)
    try:
        g = load_grid(grid)
        total = len(select(g, selection))
    except OptionError:
        raise
    except CalibError as e:
        raise OptionError(str(e)) from None
    out = out or Path("runs/study") / g.name
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file; give a folder for the run")
    if times_from is not None and not (times_from / "rows.jsonl").is_file():
        raise OptionError(f"--times-from {times_from} holds no rows.jsonl; give a study run's folder")
    earlier = [times_from] if times_from else [grid.resolve().parent.parent / "results" / "study" / g.name, out]
    counts = {"ok": 0, "skipped": 0, "error": 0}
    log = run_log()
    cells = {c.id: c for c in select(g, selection)}
    estimate = Estimate(list(cells.values()), jobs, {c: speed_prior(g, c) for c in cells.values() if g.times(c)},
                        *earlier_times(earlier, list(cells.values())))
    known = timings(out)  # files timed before: a cell that makes one again reuses its timing
    if known:
        from dataclasses import asdict

        from calib.core.runs import versions
        from calib.study.plan import protocol_of

        protocol, now = asdict(protocol_of(g)), versions()
        for cell_id in expected_reuse(out, protocol, now) & set(cells):
            estimate.speed_reused(cells[cell_id])

    def on_work(cell, row: dict) -> None:
        estimate.work_done(cell, row)
        if known and g.times(cell) and row.get("model_file") and (out / row["model_file"]).is_file():
            from calib.core.speed import model_fingerprint

            note_reuse(estimate, known, cell, row, model_fingerprint(out / row["model_file"]), protocol, now)

    with progress(f"study {g.name}", total, quiet, left=estimate.left) as advance:

        def on_row(row: dict) -> None:  # every cell's row: those done before first, then each as it is written
            if row.get("cell") in cells:
                estimate.row(cells[row["cell"]], row)
            status = row.get("status", "error")
            counts[status] = counts.get(status, 0) + 1
            advance(description=f"study {g.name}: {counts['ok']} ok, {counts['skipped']} skipped, "
                                f"{counts['error']} errors")
            if status == "error":
                what = " ".join(str(row.get(k)) for k in ("kind", "model", "engine", "source", "algo")
                                if row.get(k) not in (None, ""))
                advance.note(f"error: cell {row.get('cell')} ({what}): {row.get('reason', '')}")

        with fd_stdout(log.stream if log is not None else sys.stderr):
            s = run_study(grid, out, executor.value, address, data_dir, selection, jobs=jobs, progress=False,
                          on_row=on_row, on_work=on_work, on_start=estimate.started,
                          on_note=advance.note)
    if log is not None:
        log.save(out / "calib.log")
    say(f"{out}: {s['cells']} cells ({s['ran']} run now, {s['skipped_done']} already done); "
        f"{s['ok']} ok, {s['skipped']} skipped, {s['errors']} errors")
    say(f"wall time {duration(s['wall_seconds'])}, CPU {s['cpu_percent']:.0f} % of the {100 * s['cpu_count']} % "
        f"{s['cpu_count']} cores offer; peak resident memory {s['peak_rss_mib'] / 1024:.2f} GiB, all processes "
        "together")
    if s["errors"]:
        say(f"the errors, one row each: {out / 'rows.jsonl'} (status error, with the reason)")


class PairBy(str, Enum):
    condition = "condition"
    accuracy = "accuracy"


@app.command("compare")
def study_compare(before: Annotated[Path, typer.Argument(metavar="BEFORE", help="Study run folder (or rows file).")],
                  after: Annotated[Path, typer.Argument(metavar="AFTER", help="Study run folder (or rows file).")],
                  by: Annotated[PairBy, typer.Option(
                      help="Pair rows by their whole condition, or by the part that decides accuracy (a grid that "
                           "times less pairs with one that times more).")] = PairBy.condition,
                  models: Annotated[str | None, typer.Option(help="Only these models (comma-separated).")] = None,
                  ) -> None:
    """Are two runs the same, cell by cell? Every field both rows hold, but when, how long and how fast.

    Exit 0 when at least one pair was compared and no compared field differs; 1 otherwise."""
    from calib.study.compare import compare

    for run in (before, after):
        if not run.exists():
            raise OptionError(f"{run} does not exist")
    key = "condition" if by == PairBy.condition else "accuracy_condition"
    c = compare(before, after, key, [m.strip() for m in models.split(",")] if models else None)
    for line in c.examples:
        say(line)
    say(f"paired {c.paired} cells by {key} ({c.statuses}); only in {before}: {c.only_before}; only in {after}: "
        f"{c.only_after}")
    if c.fields_only_in_one:
        say(f"fields only one run's rows hold (not compared): {', '.join(sorted(c.fields_only_in_one))}")
    say("identical in every compared field" if c.identical else
        f"fields that differ: {dict(c.differ)}" if c.paired else "no cell in common")
    raise typer.Exit(0 if c.identical else 1)


@app.command("check")
def study_check(run: Annotated[Path, typer.Argument(metavar="RUN", help="Study run folder.")],
                cells: Annotated[int, typer.Option(min=0, help="How many OpenVINO cells to recheck, drawn at "
                                                               "random; 0: all.")] = 5,
                seed: Annotated[int, typer.Option(min=0, help="Seed of the draw.")] = 0,
                tolerance: Annotated[float, typer.Option(min=0.0, help="Largest accepted |difference| in "
                                                                       "accuracy.")] = 0.003,
                out: Annotated[Path | None, typer.Option(help="CSV of the comparison; default <run>/check.csv.")]
                = None,
                models: Annotated[str | None, typer.Option(help="Only cells of these models (comma-separated).")]
                = None,
                sources: Annotated[str | None, typer.Option(help="Only cells of these sources (comma-separated).")]
                = None,
                batch_1: Annotated[bool, typer.Option("--batch-1/--as-run", help="Calibrate with batch-1 items, "
                                                      "or with the cell's calibration batch.")] = False,
                format: OutputFormat = Format.text) -> None:
    """Redo cells with NNCF and OpenVINO called directly (same set, subset, seed, options) and compare."""
    from calib.study.check import check_run, printed

    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    with spinner(f"study check {run.name}"):
        table = check_run(run, cells, seed, tolerance, out, split(models), split(sources), batch_1)
    bad = int((~table.within_tolerance).sum())

    def text() -> None:
        say(printed(table))
        ran = ", ".join(sorted(table.study_hardware_key.dropna().astype(str).unique())) or "unrecorded"
        say(f"{len(table) - bad} of {len(table)} cells within {tolerance}; largest |difference| "
            f"{table.abs_difference.max():.4f}; rechecked on {table.hardware_key.iloc[0]} (the cells ran on "
            f"{ran}); written to {out or run / 'check.csv'}")

    emit(records(table), format, text)
    if bad:
        err_console.print(f"[red]error:[/red] {bad} cells differ by more than {tolerance} or failed their checks",
                          highlight=False)
        raise typer.Exit(1)


def _run_folder(run: Path) -> None:
    if not run.is_dir():
        raise OptionError(f"run folder {run} does not exist")
    if not (run / "rows.jsonl").is_file():
        raise OptionError(f"{run} is not a study run folder (no rows.jsonl)")


def _out_folder(out: Path | None) -> None:
    if out is not None and out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file; give a folder")


@app.command("report")
def study_report(run: Annotated[Path, typer.Argument(metavar="RUN", help="Study run folder.")],
                 out: Annotated[Path | None, typer.Option(help="Default <run>/report.")] = None,
                 html: Annotated[bool, typer.Option("--html", help="Also write report.html: one self-contained "
                                                              "page with every table, plot and grid.")] = False,
                 grids: Annotated[Path | None, typer.Option(help="--html: folder of <source>.png sample grids, "
                                                                 "for runs without their sets/ folder.")] = None,
                 quality: Annotated[Path | None, typer.Option(help="--html: `calib inspect` rows (JSON lines); "
                                                                   "default <run>/inspect.jsonl.")] = None,
                 diagnose: Annotated[Path | None, typer.Option(help="--html: folder of `calib diagnose` outputs; "
                                                                    "default <run>/diagnose.")] = None,
                 screenshot: Annotated[bool, typer.Option(help="--html: also report.png, the page's top as "
                                                               "headless Chromium renders it at 1280 px.")] = False,
                 overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing report folder "
                                                                           "(one calib wrote).")] = False,
                 quiet: Quiet = False, format: OutputFormat = Format.text) -> None:
    """Write the tables (CSV and Markdown) of a run folder; with --html, one HTML page of it all. The result rows
    (--format json|csv) are the run's conditions, one per engine, model, source and algorithm (long_*.csv).
    An existing report folder is refused unless --overwrite."""
    import pandas as pd

    from calib.core.folders import MANIFEST, claim, run_folder
    from calib.core.runs import atomic_write_json, provenance
    from calib.study.report import write_report

    _run_folder(run)
    _out_folder(out)
    for option, path in (("--grids", grids), ("--diagnose", diagnose)):
        if path is not None and not path.is_dir():
            raise OptionError(f"{option} {path} is not a folder")
    if quality is not None and not quality.is_file():
        raise OptionError(f"--quality {quality} does not exist")
    folder = out or run / "report"
    claim(folder, overwrite)  # before any work
    with run_folder(folder, overwrite):
        atomic_write_json(folder / MANIFEST, provenance() | {"run": str(run)})
        with spinner(f"report {run.name}"):
            written = write_report(run, folder)
        lines = [f"wrote {len(written)} table files (CSV and Markdown) to {folder}"]
        if html:
            from calib.study.html import screenshot as shoot
            from calib.study.html import write_html

            page = write_html(run, folder, grids, quality, diagnose, quiet)
            lines.append(f"wrote {page}")
            if screenshot:
                lines.append(f"wrote {shoot(page, page.with_suffix('.png'))}")
    longs = [pd.read_csv(p) for p in written if p.name.startswith("long_") and p.suffix == ".csv"]
    rows = records(pd.concat(longs)) if longs else []
    emit(rows, format, lambda: [say(line) for line in lines])


@app.command("plot")
def study_plot(run: Annotated[Path, typer.Argument(metavar="RUN", help="Study run folder.")],
               out: Annotated[Path | None, typer.Option(help="Default <run>/plots.")] = None) -> None:
    """Write seaborn heatmaps from a run folder."""
    from calib.study.plot import write_plots

    _run_folder(run)
    _out_folder(out)
    with spinner(f"plots {run.name}"):
        written = write_plots(run, out)
    for p in written:
        say(f"wrote {p}")


@app.command("fit-drop")
def study_fit_drop(fit_run: Annotated[Path, typer.Argument(metavar="FIT_RUN", help="Study run folder whose cells "
                                                           "the label-free estimate is fitted on.")],
                   judge_run: Annotated[Path, typer.Argument(metavar="JUDGE_RUN", help="Study run folder whose "
                                                             "cells judge it (held out).")],
                   fit_out: Annotated[Path | None, typer.Option(help="Write the fit here (calib ships "
                                                                "calib/core/drop_fit.json).")] = None,
                   plots: Annotated[Path | None, typer.Option(help="Write a scatter of estimate against "
                                                              "measured drop per run, one panel per model "
                                                              "family, into this folder.")] = None) -> None:
    """Fit the label-free drop estimate (`calib.core.drop`) on one run's cells, judge it on another's, and
    show how choosing a data-free source by it compares with always inversion or always fractals."""
    from calib.study.dropfit import validation, write_validation

    for run in (fit_run, judge_run):
        _run_folder(run)
    with spinner("fit the label-free estimate"):
        result = validation(fit_run, judge_run)
        written = write_validation(result, fit_out, plots)
    for name, j in result["judged"].items():
        say(f"{name}: {j['cells']} cells, Spearman {j['spearman']:.2f}, mean absolute error {j['mae_points']:.2f} "
            f"points, {100 * j['coverage']:.0f} % inside the interval"
            + (" (fitted on these)" if name == result["fit_run"] else " (held out)"))
    for p in written:
        say(f"wrote {p}")


@app.command("blocks")
def study_blocks(files: Annotated[list[Path] | None, typer.Argument(
                     metavar="FILE", help="Markdown pages; default README.md, results/**/*.md and docs/**/*.md "
                                                "of the repository.")] = None,
                 check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 and name the pages whose "
                                                                     "blocks differ from the rows.")] = False,
                 repo: Annotated[Path | None, typer.Option(help="Repository whose rows the blocks read; default the "
                                                                "nearest folder above with pyproject.toml and "
                                                                "results/.")] = None,
                 list_: Annotated[bool, typer.Option("--list", help="List the blocks and what each shows.")]
                 = False) -> None:
    """Refill the generated blocks of Markdown pages from the committed rows (the text between
    `<!-- begin NAME: ... -->` and `<!-- end NAME -->`), so the numbers a page quotes are the rows' numbers."""
    from calib.study.blocks import block_info, build, find_repo, list_blocks

    if list_:
        for name in list_blocks():
            say(f"{name}: {block_info(name).description}")
        return
    for f in files or []:
        if not f.is_file():
            raise OptionError(f"{f} is not a file")
    if repo is not None and not repo.is_dir():
        raise OptionError(f"--repo {repo} is not a folder")
    root = repo or find_repo(Path.cwd())
    with spinner("study blocks"):
        changed = build(root, files or None, check)
    if check:
        for path in changed:
            say(f"{path}: blocks differ from the rows")
        if changed:
            pages = "1 page is" if len(changed) == 1 else f"{len(changed)} pages are"
            err_console.print(f"[red]error:[/red] {pages} out of date; `calib study blocks` refills them",
                              highlight=False)
            raise typer.Exit(1)
        say("every block is up to date with the rows")
        return
    for path in changed:
        say(f"rewrote {path}")
    say(f"{len(changed)} page{'s' if len(changed) > 1 else ''} rewritten" if changed
        else "every block was already up to date with the rows")
