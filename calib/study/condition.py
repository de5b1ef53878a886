"""A cell's resolved condition: its grid axes and everything else that decides its numbers (weights sha256, the
data's content hashes, the test images, every quantize and source option, the speed protocol, library
versions, the hardware key of the ISA it runs with), resolved in the driver before anything runs. Equal
conditions give equal rows (up to timing); `condition_id` keys the rows of a run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from calib.core.errors import CalibError
from calib.core.hardware import ISA_ENV, NATIVE, hardware, isa_env
from calib.core.runs import git_state, to_jsonable, versions
from calib.study.artifacts import set_plan
from calib.study.grid import Cell, Grid, quantize_spec
from calib.study.plan import protocol_of, test_for


@functools.lru_cache(maxsize=64)
def _test_indices_sha256(weights: str, data_dir: str | None, test_sha256: str) -> str:
    """`indices_sha256` of `test_for` once per weights and test content (a condition is resolved per cell)."""
    from calib.core.data import indices_sha256

    return indices_sha256(test_for(Path(weights), Path(data_dir) if data_dir else None))


@functools.lru_cache(maxsize=8)
def _data_hashes(tree_key: str | None, data_dir: str | None) -> tuple[tuple[str, object], ...]:
    from calib.core.data import data_provenance

    prov = data_provenance(Path(data_dir) if data_dir else None)
    return tuple((k, prov[k]) for k in ("data", "data_train_sha256", "data_test_sha256", "data_split"))


def data_hashes(data_dir: Path | None) -> dict:
    """The data tree's content hashes (train and test pixels and labels, the train cut), computed once per tree
    and process; an unavailable tree is recorded as such (its cells then fail with the reason)."""
    from calib.core.data import _tree_key

    try:
        return dict(_data_hashes(_tree_key(data_dir)[0], str(data_dir) if data_dir else None))
    except CalibError as e:
        return {"data": f"unavailable: {e}"}


@dataclass(frozen=True)
class Context:
    """What the conditions of a run's cells share, resolved once in the driver: data content, library versions,
    the git state, and the hardware each ISA runs on (the fields of `calib.core.hardware.hardware`)."""

    data: dict
    versions: dict
    git: dict
    hardware: dict  # isa -> hardware fields of a process running that ISA


def resolve_context(grid: Grid, data_dir: Path | None) -> Context:
    isas = {NATIVE, *grid.isas}
    env = {k: v for k, v in os.environ.items() if k != ISA_ENV}
    return Context(data_hashes(data_dir), versions(), git_state(),
                   {isa: hardware({**env, **isa_env(isa)}) for isa in sorted(isas)})


# Source options that name where content lives; the condition holds that content's hash instead (`data`,
# `weights_sha256`), so moving a folder or a weights file does not make a new cell.
_LOCATIONS = frozenset({"data_dir", "weights"})


def condition(grid: Grid, cell: Cell, ctx: Context, weights: Path | None, data_dir: Path | None = None) -> dict:
    """Everything that decides a cell's numbers, resolved: equal conditions give equal rows (up to timing)."""
    from calib.core.weights import file_sha256

    cond: dict = {"cell": asdict(cell), "weights_sha256": file_sha256(weights) if weights else None,
                  "data": ctx.data, "versions": ctx.versions,
                  "hardware_key": ctx.hardware[cell.isa]["hardware_key"]}
    if weights is not None and "data_test_sha256" in ctx.data:
        cond["test_indices_sha256"] = _test_indices_sha256(str(weights), str(data_dir) if data_dir else None,
                                                           ctx.data["data_test_sha256"])
    if cell.kind == "quantize":
        spec = asdict(quantize_spec(grid, cell, Path(), pretrained=weights is not None))
        cond["quantize"] = {k: v for k, v in spec.items() if k not in ("model", "calib", "weights", "data_dir")}
        opts = set_plan(grid, cell, Path(), data_dir)[1]
        cond["source_options"] = {k: str(v) for k, v in opts.items() if k not in _LOCATIONS}
        cond["diagnose"] = grid.diagnose and cell.engine == "openvino"
    if grid.times(cell):
        cond["speed"] = asdict(protocol_of(grid))
    return json.loads(json.dumps(to_jsonable(cond), sort_keys=True, default=str))


def accuracy_part(cond: dict) -> dict:
    """The part of a condition that decides accuracy and predictions: all of it but the speed protocol, so a grid
    that times fewer cells still pairs with one that times more (`calib study compare --by accuracy`)."""
    return {k: v for k, v in cond.items() if k != "speed"}


def condition_id(cond: dict) -> str:
    return hashlib.sha256(json.dumps(cond, sort_keys=True).encode()).hexdigest()[:16]


def wrong_process(cell: Cell, ctx: Context) -> str | None:
    """Why this process cannot run the cell: its ISA cap is not the cell's, or it is another machine."""
    want = isa_env(cell.isa) or {ISA_ENV: ""}
    for var, value in want.items():
        have = os.environ.get(var, "")
        if have.upper() != value.upper():
            return (f"cell with isa {cell.isa} ran in a process with {var}={have or '(unset)'}; it needs a worker "
                    f"started with {var}={value or '(unset)'}")
    expected = ctx.hardware[cell.isa]["hardware_key"]
    here = hardware()["hardware_key"]
    if here != expected:
        return f"this worker's hardware ({here}) is not the driver's ({expected}); rows compare within one machine"
    return None
