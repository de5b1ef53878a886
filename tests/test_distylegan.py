import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from calib.cli import app
from calib.distylegan.networks import (
    CONFIGS,
    Discriminator,
    Generator,
    count_parameters,
    load_generator,
    save_generator,
)
from calib.distylegan.sample import DEFAULT_CHECKPOINT, sample_images
from calib.distylegan.teacher_set import build_teacher_set, latents_for_seeds, load_teacher_set
from calib.distylegan.teachers import build_teacher, tiny_teacher
from calib.distylegan.train import DistillConfig, distill


def test_full_size_parameter_counts_are_within_one_percent_of_the_reference():
    g_cfg, d_cfg = CONFIGS["cifar10"]
    assert abs(count_parameters(Generator(g_cfg)) / 2.05e6 - 1) < 0.01
    assert abs(count_parameters(Discriminator(d_cfg)) / 3.4e6 - 1) < 0.01
    out = CliRunner().invoke(app, ["distylegan", "params"]).output
    assert "generator: 2,063,267" in out and "discriminator: 3,415,435" in out


def test_discriminator_returns_four_feature_maps():
    g, d = Generator(CONFIGS["tiny"][0]), Discriminator(CONFIGS["tiny"][1])
    x = g(torch.randn(3, 16), torch.tensor([0, 1, 2]))
    logit, feats = d(x, torch.tensor([0, 1, 2]))
    assert x.shape == (3, 3, 32, 32) and logit.shape == (3,) and len(feats) == 4


@pytest.fixture(scope="module")
def teacher_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "set"
    build_teacher_set(tiny_teacher(0), path, 120, seed=5, chunk=50)
    return path


def test_teacher_set_pairs_each_image_with_its_latent(teacher_set):
    ts = load_teacher_set(teacher_set)
    assert len(ts) == 120 and np.bincount(ts.labels).tolist() == [12] * 10
    assert np.array_equal(ts.seeds, np.arange(5, 125))
    again = tiny_teacher(0)(torch.from_numpy(ts.latents[:4]), torch.from_numpy(ts.labels[:4]))
    from calib.distylegan.teacher_set import to_uint8

    assert np.array_equal(to_uint8(again), ts.images[:4])
    # the same distribution as sampling: standard normal latents from the per-image seeds
    assert np.allclose(ts.latents[:3], latents_for_seeds(ts.seeds[:3], 16).numpy())


def test_teacher_set_build_resumes(teacher_set, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(teacher_set, copy)
    (copy / "chunks" / "00000050.npz").unlink()
    (copy / "triplets.npz").unlink()
    build_teacher_set(tiny_teacher(0), copy, 120, seed=5, chunk=50)
    assert np.array_equal(load_teacher_set(copy).latents, load_teacher_set(teacher_set).latents)


def _cfg(**kw):
    base = dict(network="tiny", steps=30, batch_size=16, lr=2e-3, snapshot_every=10, log_every=5, device="cpu")
    return DistillConfig(**(base | kw))


def test_tiny_distillation_pixel_loss_falls(teacher_set, tmp_path):
    distill(_cfg(), tmp_path / "run", load_teacher_set(teacher_set), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    pixel = [r["loss_pixel"] for r in rows]
    assert pixel[-1] < 0.7 * pixel[0]
    assert (tmp_path / "run" / "options.json").exists() and (tmp_path / "run" / "grid-000030.png").exists()


@pytest.mark.slow
def test_resume_after_a_kill_matches_an_uninterrupted_run(teacher_set, tmp_path, cifar_dir):
    from calib.core.data import train_splits

    ts, real = load_teacher_set(teacher_set), train_splits(cifar_dir)["calibration_pool"]
    full = distill(_cfg(), tmp_path / "full", ts, real, progress=False)
    with pytest.raises(KeyboardInterrupt):
        distill(_cfg(), tmp_path / "killed", ts, real, progress=False, stop_after=17)  # dies between snapshots
    resumed = distill(_cfg(), tmp_path / "killed", ts, real, resume=True, progress=False)
    for a, b in zip(full.G.state_dict().values(), resumed.G.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.D.state_dict().values(), resumed.D.state_dict().values()):
        assert torch.equal(a, b)


def test_a_run_folder_is_not_overwritten(teacher_set, tmp_path):
    from calib.core.errors import CalibError

    distill(_cfg(steps=10), tmp_path / "r", load_teacher_set(teacher_set), progress=False)
    with pytest.raises(CalibError, match="already holds a run"):
        distill(_cfg(steps=10), tmp_path / "r", load_teacher_set(teacher_set), progress=False)


def test_sampling_is_per_image_seeded_whatever_the_batch():
    g = load_generator(DEFAULT_CHECKPOINT)
    seeds, labels = np.arange(10, 16), np.arange(6) % 10
    a = sample_images(g, g.cfg.z_dim, seeds, labels, batch=6)
    b = np.concatenate([sample_images(g, g.cfg.z_dim, seeds[i : i + 1], labels[i : i + 1], batch=1) for i in range(6)])
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # BN in eval mode: batch-independent up to rounding


def test_shipped_checkpoint_is_small_and_self_describing():
    assert DEFAULT_CHECKPOINT.stat().st_size <= 5 * 1024 * 1024
    ckpt = torch.load(DEFAULT_CHECKPOINT, weights_only=True)
    assert ckpt["config"]["z_dim"] == 512 and "step" in ckpt
    assert (DEFAULT_CHECKPOINT.with_suffix(".json")).exists()


def test_generator_checkpoint_rebuilds_its_own_model(tmp_path):
    g = Generator(CONFIGS["tiny"][0]).eval()
    back = load_generator(save_generator(g, tmp_path / "g.pt"))
    z, c = torch.randn(2, 16), torch.tensor([3, 4])
    assert torch.equal(g(z, c), back(z, c))


def test_teacher_specs():
    from calib.core.errors import CalibError

    assert build_teacher("tiny:1").name == "tiny:1"
    with pytest.raises(CalibError, match="unknown teacher spec"):
        build_teacher("gan:foo")
