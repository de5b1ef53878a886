"""`calib diagnose`: which layers a calibration set gets wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from calib.cli.app import Quiet, console, keep_log, say, spinner
from calib.cli.choices import RankBy
from calib.cli.options import (
    DEFAULT_RECORD,
    DataDir,
    Overwrite,
    RecordPath,
    Seed,
    WeightsPath,
    model_engine,
    refuse_int8,
)
from calib.core.errors import OptionError
from calib.core.spec import Preset


def diagnose_cmd(
    model: Annotated[str, typer.Option(help="Zoo name (trained weights) or path to an FP32 .xml.")],
    calib: Annotated[list[Path], typer.Option(help="Calibration set folder; repeat the option to compare sets.")],
    reference: Annotated[str, typer.Option(help="Images the ranges are judged on: 'validation' (held out from "
                                                "train) or a set folder; never the test split.")] = "validation",
    subset_size: Annotated[int | None, typer.Option(min=1, help="Calibration images (default: all).")] = None,
    preset: Annotated[Preset, typer.Option()] = Preset.performance,
    fast_bias_correction: Annotated[bool, typer.Option("--fast-bias-correction/--no-fast-bias-correction")] = True,
    seed: Seed = 0,
    per_layer_accuracy: Annotated[int, typer.Option(min=0, help="Validation accuracy with each of the worst K "
                                                                "quantizers removed (that input kept FP32); 0: off.")]
    = 0,
    rank_by: Annotated[RankBy, typer.Option(help="What 'worst' means in the ranked table.")]
    = "local-sqnr",  # RankBy.local_sqnr, named by value so that calib.core.diagnose loads only when used
    top: Annotated[int, typer.Option(min=1, help="Rows printed per set (files hold every layer).")] = 10,
    out: Annotated[Path | None, typer.Option(help="Output folder; default runs/diagnose/<model>-<digest of every "
                                                  "option and set>.")] = None,
    overwrite: Overwrite = False,
    weights: WeightsPath = None,
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
    quiet: Quiet = False,
) -> None:
    """Which layers a calibration set gets wrong (OpenVINO, NNCF's quantizers): each quantizer's range, the share of
    real values it clips, the share of its range they use, and the INT8 error against FP32, worst first."""
    import pandas as pd

    from calib.core.diagnose import ranked_table, run_diagnose

    if model_engine(model, "openvino") != "openvino":
        raise OptionError(f"--model {model}: diagnose reads NNCF's quantizers from OpenVINO IR; give a zoo name or "
                          "an FP32 .xml")
    refuse_int8(model)
    with spinner(f"diagnose {Path(model).name}, {len(calib)} set{'s' if len(calib) > 1 else ''}"):
        r = run_diagnose(model, calib, out, reference, per_layer_accuracy, rank_by, quiet, record_path,
                         overwrite=overwrite, subset_size=subset_size, preset=preset.value,
                         fast_bias_correction=fast_bias_correction, seed=seed, weights=weights, data_dir=data_dir)
    out = Path(r["summary"]["out"])
    keep_log(out)
    df = pd.DataFrame(r["rows"])
    for name, part in df.groupby("set", sort=False):
        t = ranked_table(part.to_dict("records"), top)
        shown = Table(*t.columns, title=f"{model} calibrated with {name} ({part.source.iloc[0]}): worst "
                      f"{len(t)} of {len(part)} quantizers by {rank_by.value}, on {r['summary']['reference']} "
                      f"({r['summary']['reference_images']} images)")
        for row in t.itertuples(index=False):
            shown.add_row(*("-" if pd.isna(v) else str(v) for v in row))
        console.print(shown)
    for p in r["written"]:
        say(f"wrote {p}")
