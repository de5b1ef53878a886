"""Run a command and record how long it took, on which machine, from which commit: the source of every command
time the pages quote (README's "measured" lines are generated from these rows).

    python scripts/timed.py results/timing/commands.jsonl -- python -m pytest

The row: the command, its exit code, wall seconds, CPU seconds of it and its children, CPU % of the cores, the
hardware fields, versions and git SHA (`calib.core.runs.record`). The command's output passes through.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from calib.core.runs import record


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 1 or len(argv) < 3:
        print("usage: python scripts/timed.py ROWS.jsonl -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    rows, command = Path(argv[0]), argv[2:]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    code = subprocess.call(command)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row = record(rows, "command_time", {"timed_command": " ".join(command), "exit_code": code,
                                         "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                                         "cpu_percent": round(100 * cpu / wall), "cores": os.cpu_count()})
    print(f"{row['timed_command']}: exit {code}, {wall:.0f} s, CPU {row['cpu_percent']} % ({row['hardware_key']})",
          file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
