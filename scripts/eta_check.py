"""How good was a run's "about ... left"? Reads the progress lines a `calib study run` wrote to a log (one every
10 s when stderr is not a terminal) and, for each, compares the time it said was left with the time that was
actually left (the run's last line is its end).

    calib study run GRID --jobs 2 2> run.err; python scripts/eta_check.py run.err

Prints a Markdown table of every minute's estimate and the largest relative error after a quarter of the run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

LINE = re.compile(r"(?P<done>\d+)/(?P<total>\d+) \(\d+ %\), (?P<elapsed>.+?) elapsed(?:, about (?P<left>.+?) left)?$")
UNIT = re.compile(r"(\d+(?:\.\d+)?) (h|min|s)\b")


def seconds(text: str) -> float:
    return sum(float(n) * {"h": 3600, "min": 60, "s": 1}[u] for n, u in UNIT.findall(text))


def main(path: Path) -> None:
    points = []
    for line in path.read_text().splitlines():
        m = LINE.search(line.strip())
        if m:
            points.append((seconds(m["elapsed"]), seconds(m["left"]) if m["left"] else None, m["done"], m["total"]))
    if not points:
        sys.exit(f"{path}: no progress lines")
    end = points[-1][0]
    print("| elapsed | cells done | said left | actually left | error |")
    print("|---|---|---|---|---|")
    worst = 0.0
    shown = -60.0
    for elapsed, left, done, total in points:
        actual = end - elapsed
        error = (left - actual) / actual if left is not None and actual > 0 else None
        if error is not None and elapsed >= end / 4 and actual >= 30:
            worst = max(worst, abs(error))
        if elapsed - shown >= 60:
            shown = elapsed
            print(f"| {elapsed:.0f} s | {done}/{total} | {'-' if left is None else f'{left:.0f} s'} | "
                  f"{actual:.0f} s | {'-' if error is None else f'{100 * error:+.0f} %'} |")
    print(f"\nrun: {end:.0f} s; largest |error| after a quarter of the run (while at least 30 s were left): "
          f"{100 * worst:.0f} %")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/eta_check.py RUN.err")
    main(Path(sys.argv[1]))
