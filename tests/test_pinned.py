"""Sets made by float kernels are made with pinned kernels, so a seed gives the same bytes on every CPU.

Outside truth: the set hashes in the committed families rows, made on an AMD EPYC with AVX2 and no AVX-512
(`hardware_key` "AMD EPYC | avx2"). Generated here, on whatever CPU runs the tests, the sets must be those bytes.
"""

import json
import os

import pytest

from calib.core import hardware
from calib.core.pinned import PINNED_ISA, call_pinned, pinned_env, pinned_here
from calib.core.sets import read_set
from calib.core.sources import generate_set, list_sources, source_info
from tests.conftest import REPO, shared_path

ROWS = REPO / "results" / "study" / "families" / "rows.jsonl"


def _committed_hash(source: str, seed: int, model: str | None = None) -> str:
    """The set hash the committed rows of the AVX2 machine record for a source and seed."""
    for line in ROWS.read_text().splitlines():
        row = json.loads(line)
        if row.get("calib_source") == source and row.get("seed") == seed and row.get("hardware_key") == \
                "AMD EPYC | avx2" and (model is None or row.get("model") == model):
            return row["calib_hash"]
    raise AssertionError(f"no committed row of {source} seed {seed}")


def _child_report() -> dict:
    return {"pinned": pinned_here(), "caps": hardware.caps_of(), **hardware.dispatched()}


def test_a_pinned_call_runs_in_a_process_with_every_cap():
    got = call_pinned(_child_report)
    assert got["pinned"] and got["caps"] == pinned_env() == hardware.cap_env(PINNED_ISA)
    assert not os.environ.get(hardware.ATEN_ENV) or pinned_here()  # this process is left as it was


@pytest.mark.parametrize("source", list_sources())
def test_sources_that_run_a_network_are_pinned(source):
    assert source_info(source).pinned == (source in ("distylegan", "inversion", "stylegan2-ada"))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_distylegan_seed_gives_the_avx2_machines_bytes_on_this_cpu(tmp_path, seed):
    made = read_set(generate_set("distylegan", 30, seed, tmp_path / "set"))
    assert made.content_hash == _committed_hash("distylegan", seed)
    assert made.manifest["kernels"].startswith(f"pinned to {PINNED_ISA}")


@pytest.mark.slow
def test_an_inversion_seed_gives_the_avx2_machines_bytes_on_this_cpu(tmp_path):
    weights = shared_path("weights", "cifar10_resnet20-7669d453.pt")
    made = read_set(generate_set("inversion", 30, 0, tmp_path / "set", model="resnet20", weights=weights))
    assert made.content_hash == _committed_hash("inversion", 0, "resnet20")
