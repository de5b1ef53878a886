"""A cell resolved once: the driver decides everything a cell's numbers depend on before anything runs, into one
frozen `Resolved` value, and ships that value to the process that runs the cell. The worker decides nothing that
makes a cell what it is: not its id, its spec, its set, its weights, its images, nor its ISA.

The data flow of one cell: `grid.expand` names it; `resolve_cells` (here) looks its weights up, plans its set
(`artifacts.set_plan`), builds its `QuantizeSpec` (`grid.quantize_spec`), decides its validation and test images
(`calib.core.data.evaluation_split`), names its FP32 file (`artifacts.fp32_folder`) and makes its condition
(`condition.condition`); `runner.prepare` makes the set; `cells.run_cell` does the work; `timing.add_speed`
times it; `rows` writes the row.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from calib.core.errors import CalibError
from calib.core.hardware import isa_env
from calib.study.artifacts import fp32_folder, probe_plan, set_plan
from calib.study.condition import Context, code_free, condition, condition_id
from calib.study.grid import Cell, Grid, quantize_spec
from calib.study.plan import measures_pytorch, protocol_of, skip_reason
from calib.study.rows import hardware_fields, identity_fields

if TYPE_CHECKING:
    from calib.core.data import Evaluation
    from calib.core.engines import Protocol
    from calib.core.spec import QuantizeSpec


@dataclass(frozen=True, eq=False)
class Resolved:
    """One cell, decided: what its worker needs and may not decide for itself. `row` holds the row fields known
    before it runs (its axes, its condition's id and the hardware it must run on)."""

    cell: Cell
    id: str  # the condition's id: rows of this id are this cell's
    code_free_id: str  # the id the condition would have without calib's code fingerprint (rows from before it)
    condition: dict = field(repr=False)
    row: dict = field(repr=False)
    skip: str | None = None  # why it cannot run here (a missing teacher, no trained weights)
    weights: Path | None = None
    weights_note: str = ""  # why there are no trained weights, if there are none
    data_dir: Path | None = None
    spec: QuantizeSpec | None = None  # quantize cells: the validated spec, with the set's folder as `calib`
    set_folder: Path | None = None
    set_options: dict = field(default_factory=dict, repr=False)
    fp32_file: Path | None = None  # the engine's FP32 file of the model, shared by its cells
    evaluation: Evaluation | None = field(default=None, repr=False)  # validation and test images, by index
    timed: bool = False
    protocol: Protocol | None = None
    pytorch: bool = False  # this baseline also measures PyTorch (once per model and ISA)
    diagnose: bool = False
    caps: dict = field(default_factory=dict)  # the environment of the cell's ISA cap (`isa_env`)
    hardware_key: str = ""  # the machine and ISA the driver expects the worker to be
    probe_seed: int | None = None  # quantize cells: the label-free estimate's probe (`calib.core.drop`)
    probe_sets: tuple = field(default=(), repr=False)  # (folder, the cell that set would calibrate, options)


def _evaluations(weights: Path | None, data_dir: Path | None, ctx: Context, memo: dict) -> Evaluation | None:
    """The validation and test images of a model's weights on the run's data, once per weight file."""
    from calib.core.data import evaluation_split

    if weights is None or "data_test_sha256" not in ctx.data:
        return None
    if weights not in memo:
        try:
            memo[weights] = evaluation_split(data_dir, weights)
        except CalibError:
            memo[weights] = None  # the cell fails with the reason when it reads the data
    return memo[weights]


def resolve_cells(grid: Grid, cells: list[Cell], out: Path, ctx: Context) -> list[Resolved]:
    """Every cell of `cells` resolved once, in order; each model's weights are looked up once and each weight
    file's images decided once. `grid` is the resolved grid (`runner.resolve_grid`)."""
    from calib.core.weights import file_sha256, resolve_weights

    data_dir = Path(grid.data_dir) if grid.data_dir else None
    found: dict[str, tuple[Path | None, str]] = {}
    evaluations: dict[Path, Evaluation | None] = {}
    resolved = []
    for cell in cells:
        if cell.model not in found:
            try:
                found[cell.model] = resolve_weights(cell.model, weights_dir=grid.weights_path()), ""
            except CalibError as e:
                found[cell.model] = None, str(e)
        weights, missing = found[cell.model]
        evaluation = _evaluations(weights, data_dir, ctx, evaluations)
        skip = skip_reason(grid, cell, weights, missing)
        timed = grid.times(cell)
        protocol = protocol_of(grid) if timed else None
        spec = set_folder = probe_seed = None
        set_options: dict = {}
        probe_sets: tuple = ()
        if cell.kind == "quantize":
            set_folder, set_options = set_plan(grid, cell, out, data_dir, weights)
            probe_seed, probe_sets = probe_plan(grid, cell, out)
            spec = quantize_spec(grid, cell, set_folder, weights, data_dir, pretrained=weights is not None)
        diagnose = grid.diagnose and cell.engine == "openvino" and cell.kind == "quantize"
        cond = condition(cell, ctx, file_sha256(weights) if weights else None,
                         evaluation.test_indices_sha256 if evaluation else None,
                         spec, set_options, diagnose, protocol,
                         {"per_class": grid.probe_per_class, "seed": probe_seed} if weights and spec else None)
        cid = condition_id(cond)
        row = {"grid": grid.name, "cell": cell.id, **asdict(cell), "timed": timed,
               **identity_fields(cond, ctx), **hardware_fields(ctx.hardware[cell.isa])}
        resolved.append(Resolved(
            cell, cid, condition_id(code_free(cond)), cond, row, skip, weights, missing, data_dir, spec, set_folder,
            set_options, fp32_folder(cell.model, cell.engine, cell.fuse, weights, out, ctx.versions),
            evaluation.decided(cell.algo == "accuracy-aware") if evaluation else None, timed, protocol,
            cell.kind == "baseline" and measures_pytorch(grid, cell), diagnose, isa_env(cell.isa),
            ctx.hardware[cell.isa]["hardware_key"], probe_seed, probe_sets))
    return resolved


def wrong_process(rc: Resolved) -> str | None:
    """Why this process cannot run the cell: its ISA cap is not the cell's, or it is another machine."""
    from calib.core.hardware import ISA_ENV, hardware

    for var, value in (rc.caps or {ISA_ENV: ""}).items():
        have = os.environ.get(var, "")
        if have.upper() != value.upper():
            return (f"cell with isa {rc.cell.isa} ran in a process with {var}={have or '(unset)'}; it needs a worker "
                    f"started with {var}={value or '(unset)'}")
    here = hardware()["hardware_key"]
    if here != rc.hardware_key:
        return (f"this worker's hardware ({here}) is not the driver's ({rc.hardware_key}); rows compare within one "
                "machine")
    return None
