"""A cell's resolved condition: its grid axes and everything else that decides its numbers (weights sha256, the
data's content hashes, the test images, every quantize and source option, the speed protocol, library
versions, the hardware key of the ISA it runs with, calib's own code), resolved in the driver before anything
runs (`calib.study.resolve`). Equal conditions give equal rows (up to timing); `condition_id` keys the rows of a
run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from calib.core.errors import CalibError
from calib.core.hardware import ISA_ENV, NATIVE, hardware, isa_env
from calib.core.runs import code_fingerprint, git_state, to_jsonable, versions
from calib.study.grid import Cell, Grid

if TYPE_CHECKING:
    from calib.core.engines import Protocol
    from calib.core.spec import QuantizeSpec


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
    the git state, the hardware each ISA runs on (the fields of `calib.core.hardware.hardware`) and calib's own
    code (`calib.core.runs.code_fingerprint`)."""

    data: dict
    versions: dict
    git: dict
    hardware: dict  # isa -> hardware fields of a process running that ISA
    code: str = ""


def resolve_context(grid: Grid, data_dir: Path | None) -> Context:
    isas = {NATIVE, *grid.isas}
    env = {k: v for k, v in os.environ.items() if k != ISA_ENV}
    return Context(data_hashes(data_dir), versions(), git_state(),
                   {isa: hardware({**env, **isa_env(isa)}) for isa in sorted(isas)}, code_fingerprint())


# Speed protocol fields newer than some committed rows: in a condition only when set, so those rows keep their ids.
_RECORDED_WHEN_SET = frozenset({"input_shape"})

# Source options that name where content lives; the condition holds that content's hash instead (`data`,
# `weights_sha256`), so moving a folder or a weights file does not make a new cell.
_LOCATIONS = frozenset({"data_dir", "weights"})


def condition(cell: Cell, ctx: Context, weights_sha256: str | None, test_indices_sha256: str | None,
              spec: QuantizeSpec | None, source_options: dict, diagnose: bool, protocol: Protocol | None,
              probe: dict | None = None) -> dict:
    """Everything that decides a cell's numbers, from what `calib.study.resolve` decided: equal conditions give
    equal rows (up to timing)."""
    cond: dict = {"cell": asdict(cell), "weights_sha256": weights_sha256, "data": ctx.data, "versions": ctx.versions,
                  "hardware_key": ctx.hardware[cell.isa]["hardware_key"]}
    if test_indices_sha256 is not None:
        cond["test_indices_sha256"] = test_indices_sha256
    if spec is not None:
        cond["quantize"] = {k: v for k, v in asdict(spec).items() if k not in ("model", "calib", "weights", "data_dir")}
        cond["source_options"] = {k: str(v) for k, v in source_options.items() if k not in _LOCATIONS}
        cond["diagnose"] = diagnose
    if probe:
        cond["probe"] = probe  # the label-free estimate's images (`calib.core.drop`): no accuracy depends on them
    if protocol is not None:
        cond["speed"] = {k: v for k, v in asdict(protocol).items() if v is not None or k not in _RECORDED_WHEN_SET}
    if ctx.code:
        cond["code"] = ctx.code
    return json.loads(json.dumps(to_jsonable(cond), sort_keys=True, default=str))


def code_free(cond: dict) -> dict:
    """A condition without calib's code fingerprint: what a row made before the fingerprint was recorded has as
    its whole condition, so a resumed run can say which cells it reruns because the code changed."""
    return {k: v for k, v in cond.items() if k not in ("code", "probe")}  # the probe came with the fingerprint


def accuracy_part(cond: dict) -> dict:
    """The part of a condition that decides accuracy and predictions, whatever code computed it: all of it but the
    speed protocol and calib's code fingerprint, so a grid that times fewer cells still pairs with one that times
    more, and a run of today's code with a committed run (`calib study compare --by accuracy`)."""
    return {k: v for k, v in cond.items() if k not in ("speed", "code", "probe")}


def condition_id(cond: dict) -> str:
    return hashlib.sha256(json.dumps(cond, sort_keys=True).encode()).hexdigest()[:16]
