"""How good is a study's "about ... left"? Two ways to ask:

- From a log: the progress lines a `calib study run` wrote (one every 10 s when stderr is not a terminal), each
  compared with the time that was actually left (the run's last line is its end).

      calib study run GRID --jobs 2 2> run.err; python scripts/eta_check.py run.err

- From committed rows (`--replay`): a finished run's cells fed to today's estimate as they happened (each cell's
  start, end of work and row, in their slots; from the run's manifest) and asked every 10 s, as the progress
  line asks. `--hardware` keeps the rows of one machine kind (a substring of `hardware_key`).

      python scripts/eta_check.py --replay results/study/main/rows.jsonl --hardware avx512_core_bf16

Prints a Markdown table of every minute's estimate and the largest relative error after a quarter of the run
(while at least 30 s were left).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def from_log(path: Path) -> list[tuple[float, float | None, float]]:
    """(elapsed, said left, actually left) of each progress line of a log (`calib.study.schedule.log_points`)."""
    from calib.study.schedule import log_points

    points = log_points(path.read_text())
    if not points:
        sys.exit(f"{path}: no progress lines")
    return points


def show(points: list[tuple[float, float | None, float]]) -> float | None:
    """Print the table and the largest error after a quarter; return that error."""
    from calib.study.schedule import worst_error

    print("| elapsed | said left | actually left | error |")
    print("|---|---|---|---|")
    shown = -60.0
    for elapsed, left, actual in points:
        if elapsed - shown >= 60:
            shown = elapsed
            error = (left - actual) / actual if left is not None and actual > 0 else None
            print(f"| {elapsed:.0f} s | {'-' if left is None else f'{left:.0f} s'} | {actual:.0f} s | "
                  f"{'-' if error is None else f'{100 * error:+.0f} %'} |")
    worst = worst_error(points)
    end = points[-1][0] + points[-1][2] if points else 0.0
    print(f"\nrun: {end:.0f} s; largest |error| after a quarter of the run (while at least 30 s were left): "
          f"{'-' if worst is None else f'{100 * worst:.0f} %'}")
    return worst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", nargs="?", type=Path, help="stderr of `calib study run` (progress lines)")
    parser.add_argument("--replay", type=Path, metavar="ROWS", help="a run folder's rows.jsonl to replay")
    parser.add_argument("--hardware", help="--replay: only rows whose hardware_key contains this")
    parser.add_argument("--jobs", type=int, help="--replay: slots (default the run's summary.json, else 2)")
    parser.add_argument("--times-from", type=Path, metavar="RUN",
                        help="--replay: start from each cell's time in this earlier run's folder")
    args = parser.parse_args(argv)
    if (args.log is None) == (args.replay is None):
        parser.error("give a log or --replay ROWS")
    if args.replay is not None:
        from calib.study.schedule import replay_run

        if not args.replay.is_file():
            parser.error(f"--replay {args.replay} does not exist")
        points = replay_run(args.replay, args.hardware, args.jobs, earlier=args.times_from)
        if not points:
            sys.exit(f"{args.replay}: no rows with start and end times"
                     + (f" on {args.hardware}" if args.hardware else ""))
    else:
        points = from_log(args.log)
    show(points)


if __name__ == "__main__":
    main()
