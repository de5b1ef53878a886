"""Inversion: BN loss goes down, every BN input is hooked, any image regenerates byte for byte from its manifest,
and the side-by-side benchmark records what it measured."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from calib.core.errors import CalibError
from calib.core.sets import read_set
from calib.core.sources import generate, generate_set
from tests.conftest import save_weights

TINY = {"model": "tiny_cnn", "iterations": 4, "batch_size": 6}


def test_inversion_lowers_bn_loss_and_rechecks_uint8():
    from calib.core.sources.inversion import bn_loss_of
    from calib.core.weights import load_model

    g = generate("inversion", 2, 0, model="tiny_cnn", iterations=60, batch_size=20, lr=0.1)
    stats = g.extra["batches"][0]
    assert stats["bn_loss_float"] < 0.8 * stats["bn_loss_start"]
    model = load_model("tiny_cnn", fuse=False, pretrained=False)
    assert stats["bn_loss_uint8"] == pytest.approx(bn_loss_of(model, g.images), rel=1e-5)
    # images stay in the pixel range while optimized, so rounding to uint8 costs almost nothing
    assert stats["bn_loss_uint8"] == pytest.approx(stats["bn_loss_float"], rel=0.05)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_bn_loss_matches_batchnorm_own_batch_statistics(memory_format):
    """The hook's statistics are the ones BatchNorm itself computes in training mode (torch as the outside truth),
    in both memory layouts (channels-last takes another reduction path)."""
    from calib.core.sources.inversion import BNStatsLoss

    bn = torch.nn.BatchNorm2d(4, momentum=1.0)  # momentum 1: running stats become the batch's own
    x = (torch.randn(8, 4, 5, 5) * 3 + 1).contiguous(memory_format=memory_format)
    bn.train()(x)
    bn.running_mean.add_(torch.tensor([0.5, -0.25, 0.0, 1.0]))  # a mean mismatch the hook must see as well
    hooks = BNStatsLoss(torch.nn.Sequential(bn))
    bn.eval()(x)
    unbiased = x.var((0, 2, 3), unbiased=True)  # BatchNorm stores the unbiased variance; the hook uses biased
    expected = (torch.linalg.vector_norm(unbiased * (x[:, 0].numel() - 1) / x[:, 0].numel() - bn.running_var)
                + torch.linalg.vector_norm(torch.tensor([0.5, -0.25, 0.0, 1.0])))
    assert float(hooks.value()) == pytest.approx(float(expected), abs=1e-5)
    hooks.remove()


def test_inversion_hooks_repvgg_identity_branches():
    from calib.core.sources.inversion import BNStatsLoss
    from calib.core.zoo import create_model

    model = create_model("tiny_repvgg")
    hooks = BNStatsLoss(model)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    identity = sum(1 for n, m in model.named_modules() if n.endswith("rbr_identity") and m is not None)
    assert len(hooks.handles) == n_bn and identity > 0
    hooks.remove()


def test_batch_plan_mixes_classes_and_covers_every_image_once():
    from calib.core.sources import balanced_labels
    from calib.core.sources.inversion import batch_plan

    plan = batch_plan(3, 7)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(30)) and [len(b) for b in plan] == [7, 7, 7, 7, 2]
    assert len(set(balanced_labels(3)[plan[0]].tolist())) == 7


def png_pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_any_image_regenerates_byte_for_byte_from_its_manifest(tmp_path):
    from calib.core.sources.inversion import regenerate, verify_regeneration

    weights = save_weights("tiny_cnn", tmp_path / "w", seed=3)
    out = generate_set("inversion", 2, 5, tmp_path / "set", model="tiny_cnn", weights=weights, iterations=4,
                       batch_size=6)
    cset = read_set(out)
    manifest = cset.manifest
    assert manifest["inversion"]["iterations"] == 4 and manifest["inversion"]["lr"] > 0  # effective options kept
    assert [len(b["ids"]) for b in manifest["batches"]] == [6, 6, 6, 2]
    third = manifest["batches"][2]["ids"]
    wanted = [third[1], manifest["batches"][3]["ids"][0]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count is not part of what regeneration needs
    try:
        again = regenerate(out, wanted)
    finally:
        torch.set_num_threads(threads)
    for id_ in wanted:
        i = cset.ids.index(id_)
        assert np.array_equal(again[id_], cset.images[i])
        rel = next(f for f in manifest["files"] if f.endswith(f"/{id_}.png"))
        Image.fromarray(again[id_]).save(tmp_path / "re.png", optimize=False)
        assert (tmp_path / "re.png").read_bytes() == (out / rel).read_bytes()
    assert verify_regeneration(out, wanted) == []
    # an image depends on its batch-mates: the same seed in another batch gives other pixels
    other = generate("inversion", 2, 5, model="tiny_cnn", weights=weights, iterations=4, batch_size=20)
    assert not np.array_equal(other.images[other.ids.index(wanted[0])], again[wanted[0]])


def test_inversion_started_from_fractals_regenerates_too(tmp_path):
    from calib.core.sources.inversion import verify_regeneration

    out = generate_set("inversion", 1, 2, tmp_path / "set", **{**TINY, "batch_size": 5}, init="fractal")
    cset = read_set(out)
    assert cset.manifest["init_source"]["source"] == "fractal"
    assert verify_regeneration(out, cset.manifest["batches"][1]["ids"]) == []
    noise = generate("inversion", 1, 2, **{**TINY, "batch_size": 5})
    started = dict(zip(cset.ids, cset.images))
    assert not any(np.array_equal(started[i], img) for i, img in zip(noise.ids, noise.images))
    with pytest.raises(CalibError, match="init"):
        generate("inversion", 1, 0, **TINY, init="cifar10")


def test_regenerate_refuses_other_weights_and_unknown_ids(tmp_path):
    from calib.core.sources.inversion import regenerate

    weights = save_weights("tiny_cnn", tmp_path / "w", seed=3)
    out = generate_set("inversion", 1, 0, tmp_path / "set", **{**TINY, "weights": weights})
    with pytest.raises(CalibError, match="no images"):
        regenerate(out, ["9999999999"])
    shutil.rmtree(tmp_path / "w")  # CALIB_WEIGHTS_DIR's tiny_cnn has other weights (seed 0): refused by hash
    with pytest.raises(CalibError, match="sha256"):
        regenerate(out, [read_set(out).ids[0]])


def test_mct_methods_parse_and_bad_ones_are_refused():
    from calib.core.peers.inversion_bench import parse_method
    from calib.core.sources.inversion import DEFAULTS, OLD_DEFAULTS

    assert parse_method("calib") == ("calib", {})
    assert parse_method("calib-old") == ("calib", OLD_DEFAULTS)
    assert parse_method("mct-matched") == ("mct", {"n_iter": DEFAULTS["iterations"],
                                                   "batch_size": DEFAULTS["batch_size"]})
    assert parse_method("calib:iterations=50,lr=0.3") == ("calib", {"iterations": 50, "lr": 0.3})
    for bad in ("foo", "calib:depth=3", "mct:n_iter=x", "mct:"):
        with pytest.raises(CalibError):
            parse_method(bad)


def test_missing_mct_venv_is_one_clear_error(tmp_path, monkeypatch):
    from calib.cli import app

    monkeypatch.setenv("CALIB_MCT_PYTHON", str(tmp_path / "nope" / "python"))
    r = CliRunner().invoke(app, ["benchmark", "inversion", "--models", "tiny_cnn", "--methods", "mct",
                                 "--images", "10", "--seeds", "0", "--out", str(tmp_path / "o"),
                                 "--record", str(tmp_path / "r.jsonl")])
    assert r.exit_code == 1 and "no MCT interpreter" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_benchmark_inversion_records_rows_and_resumes(tmp_path):
    from calib.cli import app

    rec = tmp_path / "rows.jsonl"
    args = ["benchmark", "inversion", "--models", "tiny_cnn", "--methods", "calib:iterations=3,batch_size=10",
            "--images", "20", "--seeds", "0,1", "--out", str(tmp_path / "o"), "--record", str(rec),
            "--markdown", str(tmp_path / "t.md")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in rec.read_text().splitlines()]
    assert [(x["seed"], x["images"]) for x in rows] == [(0, 20), (1, 20)]
    assert all(0 <= x["int8_accuracy"] <= 1 and x["s_per_image"] > 0 for x in rows)
    assert rows[0]["settings"]["iterations"] == 3 and rows[0]["calib_hash"] != rows[1]["calib_hash"]
    assert "tiny_cnn" in (tmp_path / "t.md").read_text()
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and len(rec.read_text().splitlines()) == 2  # resumed: nothing doubled


def test_inversion_speed_records_each_variant_and_their_ratio(tmp_path):
    from calib.core.peers.inversion_bench import inversion_speed

    r = inversion_speed("tiny_cnn", 10, variants={"old": "calib:iterations=6,batch_size=10",
                                                  "new": "calib:iterations=2,batch_size=10"},
                        record_path=tmp_path / "r.jsonl")
    assert r["ratio"] == pytest.approx(r["old_s_per_image"] / r["new_s_per_image"])
    assert r["old_settings"]["iterations"] == 6 and r["new_settings"]["iterations"] == 2


@pytest.mark.slow
def test_inversion_speed_prints_old_and_new_and_records_their_ratio(tmp_path):
    from calib.cli import app

    rec = tmp_path / "r.jsonl"
    r = CliRunner().invoke(app, ["benchmark", "inversion-speed", "--model", "tiny_cnn", "--images", "10",
                                 "--record", str(rec)])
    assert r.exit_code == 0, r.output
    row = json.loads(rec.read_text())
    assert row["kind"] == "inversion_speed" and row["ratio"] == pytest.approx(
        row["old_s_per_image"] / row["new_s_per_image"])
    assert row["old_settings"]["iterations"] == 400 and row["new_settings"]["iterations"] < 400
    assert "ratio old/new" in r.output


@pytest.mark.slow
def test_mct_generate_script_in_its_venv(tmp_path):
    """Runs only where MCT's venv exists (scripts/mct-venv.sh): MCT's images come back as uint8 with labels."""
    from calib.core.peers.mct import mct_generate, mct_python

    try:
        mct_python()
    except CalibError:
        pytest.skip("no MCT venv (scripts/mct-venv.sh)")
    weights = save_weights("tiny_cnn", tmp_path / "w")
    r = mct_generate("tiny_cnn", 8, 0, weights, n_iter=2, batch_size=4, extra_pixels=0)
    assert r.images.shape == (8, 32, 32, 3) and r.images.dtype == np.uint8 and len(r.labels) == 8
    assert r.info["n_iter"] == 2 and r.info["mct"].startswith("2.")


# ---------------------------------------------------------------- your own model: the same source, by its contract
class _OwnNet(torch.nn.Module):
    """Any classifier with BatchNorm: 7 classes, a non-square input."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 7))

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def own_pt2(tmp_path_factory):
    torch.manual_seed(0)
    net = _OwnNet().eval()
    with torch.no_grad():  # running statistics that are not the defaults
        net.body[1].running_mean.uniform_(-1, 1)
        net.body[1].running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("own") / "net.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (torch.zeros(2, 3, 24, 20),), dynamic_shapes=({0: batch},)), str(path))
    return net, path


def test_the_source_inverts_your_model_file_at_its_contract(own_pt2):
    """With a contract, the registry's inversion source inverts your file at the contract's size, in its
    normalized space (raw 0..255 pixels, BGR here), with no class targets, and records what it inverted; the
    own-model path's `invert` on the module in memory is the same function: the same bytes."""
    from calib.core import own
    from calib.core.contract import InputContract
    from calib.core.sources import source_info

    net, path = own_pt2
    contract = InputContract((103.5, 116.3, 123.7), (57.4, 57.1, 58.4), (24, 20), channel_order="BGR", scale=1.0)
    opts = {"iterations": 3, "batch_size": 4, "lr": 0.25, "w_tv": 1e-4, "w_l2": 1e-5, "channels_last": False}
    g = source_info("inversion").fn(per_class=1, seed=2, model=str(path), contract=contract, **opts)  # this process
    assert g.images.shape == (10, 24, 20, 3) and g.images.dtype == np.uint8
    assert g.extra["inversion"]["w_ce"] == 0.0 and g.extra["model"] == str(path) and "model_sha256" in g.extra
    assert [len(b["ids"]) for b in g.extra["batches"]] == [4, 4, 2]
    images, info = own.invert(net, contract, 10, 2, iterations=3, batch_size=4)
    np.testing.assert_array_equal(images, g.images)  # one per class: class order is the interleaved order
    assert info["bn_loss_uint8"] == pytest.approx(np.mean([b["bn_loss_uint8"] for b in g.extra["batches"]]))
    with pytest.raises(CalibError, match="takes no weights"):
        source_info("inversion").fn(per_class=1, seed=0, model=str(path), contract=contract, weights=path)


def test_your_model_file_through_the_registry_is_refused_in_one_line_where_it_cannot_be_inverted(tmp_path):
    from calib.core import own
    from calib.core.contract import InputContract

    contract = InputContract((0.5,) * 3, (0.25,) * 3, (16, 16))
    script = tmp_path / "net.pt"
    torch.jit.script(_OwnNet().eval()).save(str(script))
    with pytest.raises(CalibError, match="a TorchScript module takes no BatchNorm hooks") as e:
        own.make_images("inversion", 4, 0, contract, model=script)
    assert "\n" not in str(e.value)
    with pytest.raises(CalibError, match="inverts your model's file"):
        own.make_images("inversion", 4, 0, contract)
