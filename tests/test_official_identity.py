"""The committed official run is what today's code would run: every cell's resolved condition (the id that pairs
rows across runs), its calibration-set folder and its model folder, recomputed from the run's own manifest with
the shared weights and data, equal the committed rows (but for calib's code fingerprint, which these rows predate).
Code that moves without changing behaviour keeps them.

A condition holds the content hashes of the data and weights, not where they live, so every cell compares on
any machine, wherever `../shared` sits. (A calibration-set folder's name may still carry the data path: sets are
compared only where the run's data folder is this one.)"""

import json
from pathlib import Path

import pytest

from calib.study.condition import Context
from calib.study.grid import load_grid, select
from calib.study.resolve import resolve_cells
from calib.study.runner import resolve_grid
from tests.conftest import REPO

RUN = REPO / "results" / "study" / "official"


@pytest.mark.slow
def test_every_committed_official_cell_has_the_condition_todays_code_gives_it(monkeypatch, official_dir,
                                                                                  lossless_dir):
    monkeypatch.setenv("CALIB_CIFAR10_DIR", str(lossless_dir))
    monkeypatch.setenv("CALIB_WEIGHTS_DIR", str(official_dir))
    monkeypatch.delenv("CALIB_STYLEGAN2_PKL", raising=False)
    manifest = json.loads(max(RUN.glob("manifest-*.json")).read_text())
    ctx = Context({k: manifest["inputs"][k] for k in ("data", "data_train_sha256", "data_test_sha256", "data_split")},
                  manifest["versions"], {"git_sha": manifest["git_sha"], "dirty": manifest["dirty"]},
                  manifest["hardware_by_isa"])
    rows = {r["cell"]: r for r in map(json.loads, (RUN / "rows.jsonl").read_text().splitlines())}
    mismatches, compared = [], 0
    data_dir = lossless_dir.resolve()  # as the runner resolves it
    path_bound = Path(next(r["data_dir"] for r in rows.values() if r.get("data_dir"))) != data_dir
    grid = load_grid(RUN / "grid.toml")
    cells = select(grid)
    grid = resolve_grid(grid, None)
    assert str(data_dir) == grid.data_dir
    for rc in resolve_cells(grid, cells, RUN, ctx):
        cell, row = rc.cell, rows[rc.cell.id]
        compared += 1
        # rows made before the code fingerprint: their condition is today's without it
        found = {"condition": (rc.code_free_id, row.get("code_free_condition", row["condition"]))}
        if cell.kind == "quantize" and row["status"] == "ok":
            if not (path_bound and cell.source == "cifar10"):
                found["calib_set"] = (str(rc.set_folder.relative_to(RUN)), row["calib_set"])
            cid = row["condition"]  # the model folder is named by the condition the row was made under
            found["model_dir"] = (f"models/{cell.id}-{cid[:8]}", "/".join(row["model_file"].split("/")[:2]))
        mismatches += [(cell.id, k, mine, theirs) for k, (mine, theirs) in found.items() if mine != theirs]
    assert len(cells) == len(rows) == 231 and compared == 231
    assert not mismatches, mismatches[:5]
