"""End to end on NVIDIA's real snapshot format: teacher -> teacher set -> distillation -> DiStyleGAN set."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from calib.cli import app
from calib.core.sets import read_set
from calib.distylegan.networks import load_generator
from calib.distylegan.teacher_set import latents_for_seeds, load_teacher_set, to_uint8
from calib.distylegan.teachers import build_teacher
from tests.conftest import SHARED

PKL = SHARED / "reference" / "stylegan2-ada" / "network-snapshot-small.pkl"


@pytest.mark.slow
def test_snapshot_to_distylegan_calibration_set(tmp_path):
    if not PKL.exists():
        pytest.fail(f"NVIDIA's snapshot missing at {PKL}; set CALIB_SHARED to the shared folder")
    runner = CliRunner()

    def calib(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    ts_dir, run, out = tmp_path / "teacher-set", tmp_path / "run", tmp_path / "set"
    calib("distylegan", "teacher-set", "--teacher", f"stylegan2-ada:{PKL}", "--trust-teacher", "--out", ts_dir,
          "--count", 20, "--seed", 3)

    # each stored image is the teacher's image of exactly the stored z (and the z of its seed)
    ts = load_teacher_set(ts_dir)
    assert len(ts) == 20 and ts.latents.shape == (20, 64) and np.bincount(ts.labels).tolist() == [2] * 10
    assert np.array_equal(ts.latents, latents_for_seeds(ts.seeds, 64).numpy())
    teacher = build_teacher(f"stylegan2-ada:{PKL}", trust=True)
    again = to_uint8(teacher(torch.from_numpy(ts.latents), torch.from_numpy(ts.labels)))
    assert np.array_equal(again, ts.images) and ts.images.std() > 10

    calib("distylegan", "train", "--out", run, "--teacher-set", ts_dir, "--no-real", "--network", "tiny",
          "--steps", 3, "--batch", 8, "--snapshot-every", 3, "--device", "cpu")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics][-1] == 3 and all(np.isfinite(m["loss_pixel"]) for m in metrics)
    g = load_generator(run / "generator.pt")
    assert g.cfg.z_dim == 64  # the student takes the teacher's latents

    calib("generate", "--source", "distylegan", "--checkpoint", run / "generator.pt", "--per-class", 2,
          "--seed", 0, "--out", out)
    calib("sets", "validate", out)
    cset = read_set(out)
    assert len(cset) == 20 and np.bincount(cset.labels).tolist() == [2] * 10
    assert cset.manifest["source"] == "distylegan"
    assert cset.manifest["generator_checkpoint"] == str(run / "generator.pt")
