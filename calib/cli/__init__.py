"""The `calib` command line: a thin layer of typer sub-apps over library functions.

Output for people and for pipes: stdout carries the command's result alone (a short summary, or with
`--format json|csv` the rows as recorded, whole and one per line); progress goes to stderr (a bar on a terminal,
a line every few seconds elsewhere); other libraries' output goes to stderr with `--verbose`, else to the run
folder's `calib.log` where there is one. Every problem is one line on stderr: exit code 2 for an option refused
before any work (click's usage errors and `OptionError`), 1 for a failure while working.

One module per command group (`zoo`, `sets`, `quantize`, `diagnose`, `benchmark` and `benchmark_data`,
`distylegan`, `study`), what they share in `app` and `options`. Importing this package imports nothing heavy
(no torch, NNCF, OpenVINO, pandas...): every command imports the library it calls when it runs, so
`calib --help` answers at once.
"""

from __future__ import annotations

import sys

from calib.cli import benchmark, diagnose, distylegan, quantize, sets, study, zoo
from calib.cli import benchmark_data as benchmark_data  # its commands join `calib benchmark` as it loads
from calib.cli.app import App

app = App(help="Synthetic calibration data and an INT8 post-training-quantization study.")
for _name, _fn in (("generate", sets.generate_cmd), ("show", sets.show_cmd), ("inspect", sets.inspect_cmd),
                   ("quantize", quantize.quantize_cmd), ("evaluate", quantize.evaluate_cmd),
                   ("diagnose", diagnose.diagnose_cmd)):
    app.command(_name)(_fn)
app.add_typer(zoo.app, name="zoo")
app.add_typer(distylegan.app, name="distylegan")
app.add_typer(sets.app, name="sets")
app.add_typer(study.app, name="study")
app.add_typer(benchmark.app, name="benchmark")


def main() -> None:
    app(prog_name="calib")


if __name__ == "__main__":
    sys.exit(main())
