"""Where a profiled study cell spent its time, by phase of NNCF's work: a cProfile file in, one table out (the
`aa-profile` block of results/timing/aa-profile.md is the same table for the committed profile).

    python -c "import cProfile; from pathlib import Path; from calib.study.runner import run_study; \
cProfile.run('run_study(Path(\"grid.toml\"), Path(\"run\"), progress=False)', 'cell.prof')"
    python scripts/profile_phases.py cell.prof
"""

from __future__ import annotations

import sys
from pathlib import Path

from calib.study.blocks import phase_table


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/profile_phases.py FILE.prof", file=sys.stderr)
        return 2
    print(phase_table(Path(argv[0])), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
