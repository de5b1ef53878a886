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
    Bgr,
    Classes,
    ContractCard,
    DataDir,
    Folder,
    Images,
    InputSize,
    Mean,
    Overwrite,
    RawPixels,
    RecordPath,
    Seed,
    Source,
    Std,
    WeightsPath,
    check_zoo_name,
    model_engine,
    refuse_int8,
    with_contract_order,
)
from calib.cli.own import contract_options, diagnose_own_model, is_own, own_request
from calib.core.errors import OptionError
from calib.core.kinds import readers_text
from calib.core.spec import Preset

ZOO = "Zoo models and --calib sets only: "


def diagnose_cmd(
    model: Annotated[str, typer.Option(help="Zoo name (trained weights), an FP32 .xml with --calib, or your own "
                                            "model file with its contract and --source, every kind through NNCF: "
                                            f"{readers_text('diagnose')}.")],
    calib: Annotated[list[Path] | None, typer.Option(help=ZOO + "calibration set folder; repeat the option to "
                                                          "compare sets (your own model: --source makes one).")]
    = None,
    reference: Annotated[str, typer.Option(help="Images the ranges are judged on: 'validation' (held out from "
                                                "train; your own model: ROOT/val or a cut of ROOT/train of "
                                                "--data-dir), a set folder, or (your own model) any folder of "
                                                "images; never the test split.")] = "validation",
    subset_size: Annotated[int | None, typer.Option(min=1, help=ZOO + "calibration images (default: all).")] = None,
    preset: Annotated[Preset, typer.Option(help=ZOO + "activations symmetric (performance) or asymmetric "
                                                "(mixed).")] = Preset.performance,
    fast_bias_correction: Annotated[bool, typer.Option("--fast-bias-correction/--no-fast-bias-correction",
                                                       help=ZOO + "NNCF's fast bias correction.")] = True,
    seed: Seed = 0,
    per_layer_accuracy: Annotated[int, typer.Option(min=0, help="Validation accuracy with each of the worst K "
                                                                "quantizers removed (that input kept FP32); 0: off.")]
    = 0,
    rank_by: Annotated[RankBy, typer.Option(help="What 'worst' means in the ranked table.")]
    = "local-sqnr",  # RankBy.local_sqnr, named by value so that calib.core.diagnose loads only when used
    top: Annotated[int, typer.Option(min=1, help="Rows printed per set (files hold every layer).")] = 10,
    out: Annotated[Path | None, typer.Option(help="Output folder; default runs/diagnose/<model>-<digest of every "
                                                  "option and set> (your own model: own-<stem>-<kind>-openvino-"
                                                  "<source>-<images>-s<seed>-<digest of the condition>).")] = None,
    overwrite: Overwrite = False,
    weights: WeightsPath = None,
    data_dir: DataDir = None,
    record_path: RecordPath = DEFAULT_RECORD,
    quiet: Quiet = False,
    source: Source = None,
    images: Images = 300,
    folder: Folder = None,
    contract: ContractCard = None,
    mean: Mean = None,
    std: Std = None,
    input_size: InputSize = None,
    bgr: Bgr = False,
    raw_pixels: RawPixels = False,
    classes: Classes = None,
) -> None:
    """Which layers a calibration set gets wrong (OpenVINO, NNCF's quantizers): each quantizer's range, the share of
    real values it clips, the share of its range they use, and the INT8 error against FP32, worst first."""
    from calib.core.diagnose import run_diagnose

    stated = {"--mean": mean, "--std": std, "--input-size": input_size, "--contract": contract, "--classes": classes,
              "--bgr": bgr, "--raw-pixels": raw_pixels, "--source": source, "--folder": folder}
    zoo_only = {"--calib": calib, "--subset-size": subset_size, "--weights": weights,
                "--preset": preset != Preset.performance, "--no-fast-bias-correction": not fast_bias_correction}
    if is_own(model, stated, zoo_only):
        req = own_request(model, source, images, folder, contract,
                          contract_options(mean, std, input_size, bgr, raw_pixels, classes), "openvino", seed,
                          data_dir)  # NNCF's quantizers are what diagnose reads
        with spinner(f"diagnose {Path(model).name}, {images} {source} images"):
            r = diagnose_own_model(req, reference, per_layer_accuracy, rank_by, out, overwrite, record_path)
        _show(r, model, rank_by, top)
        return
    check_zoo_name(model)
    if not calib:
        raise OptionError("give --calib SET (repeat it to compare sets), or, for your own model, --source")
    if model_engine(model, "openvino") != "openvino":
        raise OptionError(f"--model {model}: diagnose reads NNCF's quantizers from OpenVINO IR; give a zoo name or "
                          "an FP32 .xml")
    refuse_int8(model)
    with spinner(f"diagnose {Path(model).name}, {len(calib)} set{'s' if len(calib) > 1 else ''}"):
        r = run_diagnose(model, calib, out, reference, per_layer_accuracy, rank_by, quiet, record_path,
                         overwrite=overwrite, subset_size=subset_size, preset=preset.value,
                         fast_bias_correction=fast_bias_correction, seed=seed, weights=weights, data_dir=data_dir)
    _show(r, model, rank_by, top)


with_contract_order(diagnose_cmd)


def _show(r: dict, model: str, rank_by, top: int) -> None:
    """Each set's worst quantizers as a table, then the files written."""
    import pandas as pd

    from calib.core.diagnose import ranked_table

    keep_log(Path(r["summary"]["out"]))
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
