"""How long `--help` takes, two commands alternating in one run (so load on the machine hits both alike).

    python scripts/help_time.py --repeats 7 \\
        --before "env PYTHONPATH=/tmp/old-tree python -m calibration.cli --help" \\
        --after "python -m calib.cli --help"

Prints each command's median, min and max wall time and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import time


def wall(command: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(shlex.split(command), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    wall(args.before), wall(args.after)  # warm the file cache for both
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.repeats):
        for name in times:
            times[name].append(wall(getattr(args, name)))
    for name, runs in times.items():
        print(f"{name:6s} median {statistics.median(runs):.2f} s  min {min(runs):.2f}  max {max(runs):.2f}  "
              f"({args.repeats} runs: {getattr(args, name)})")
    print(f"ratio before/after (medians): {statistics.median(times['before']) / statistics.median(times['after']):.1f}")


if __name__ == "__main__":
    main()
