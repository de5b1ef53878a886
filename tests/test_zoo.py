"""The registry against the reference facts of the official release: names, keys, shapes, counts, MAdds."""

import json

import pytest
import torch

from calib.core.zoo import create_model, list_models, model_complexity, model_info, study_models
from calib.core.zoo.repvgg import reparameterize
from tests.conftest import REPO, reference_file

FULL = list_models()
ALL = list_models(include_tiny=True)
REFERENCE = json.loads(reference_file().read_text())


def test_registry_is_exactly_the_reference_models():
    assert FULL == sorted(REFERENCE) and len(FULL) == 19


def test_the_study_keeps_its_five_models_as_default_grid():
    import tomllib

    five = ["mobilenetv2_x1_4", "repvgg_a2", "resnet20", "shufflenetv2_x2_0", "vgg16_bn"]
    assert study_models() == five
    for grid in ("reference", "extended"):
        models = tomllib.loads((REPO / "experiments" / f"{grid}.toml").read_text())["models"]
        assert sorted(models) == five


def _meta_model(name, fuse=False):
    """Keys and shapes do not depend on values: build on the meta device, free even for RepVGG-A2."""
    with torch.device("meta"):
        model = create_model(name)
        return reparameterize(model) if fuse else model


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_state_dict_matches_official_checkpoint(name):
    model = _meta_model(name)
    sd = model.state_dict()
    expected = REFERENCE[name]["state_dict"]
    assert list(sd) == list(expected)  # order too: the release files hold them in this order
    assert {k: list(v.shape) for k, v in sd.items()} == expected
    assert sum(p.numel() for p in model.parameters()) == REFERENCE[name]["num_params"]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_registration_carries_the_release_facts(name):
    info, ref = model_info(name), REFERENCE[name]
    assert (info.family, info.hash_prefix) == (ref["family"], ref["hash_prefix"])
    assert info.weights_url == ("https://github.com/chenyaofo/pytorch-cifar-models/releases/download/"
                                f"{ref['family']}/cifar10_{name}-{ref['hash_prefix']}.pt")
    assert info.published_top1 == ref["published_top1"] and info.madds_m == ref["madds_m"]
    params, madds = model_complexity(name)
    assert params == ref["num_params"]
    assert round(madds / 1e6, 2) == pytest.approx(ref["madds_m"], abs=0.006)  # counted, against the published


@pytest.mark.parametrize("name", [n for n in sorted(REFERENCE) if "fused_state_dict" in REFERENCE[n]])
def test_repvgg_fused_keys_match(name):
    sd = _meta_model(name, fuse=True).state_dict()
    expected = REFERENCE[name]["fused_state_dict"]
    assert list(sd) == list(expected)
    assert {k: list(v.shape) for k, v in sd.items()} == expected


def test_every_repvgg_of_the_reference_has_fused_keys():
    assert sorted(n for n in REFERENCE if "fused_state_dict" in REFERENCE[n]) == \
        [n for n in FULL if n.startswith("repvgg")] == ["repvgg_a0", "repvgg_a1", "repvgg_a2"]


def _randomize_bn(model):
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)


@pytest.mark.parametrize("name", ["tiny_repvgg", "repvgg_a0"])  # one code path; A0 has identity branches
@torch.no_grad()
def test_repvgg_reparameterization_is_exact(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    _randomize_bn(model)
    x = torch.randn(4, 3, 32, 32)
    before = model(x)
    after = reparameterize(model)(x)
    assert (before - after).abs().max().item() < 1e-4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", ALL)
@torch.no_grad()
def test_forward_shapes(name):
    """Real tensors for the tiny models and the study's five; shapes alone (meta device) for the other 14."""
    real = name in study_models() or model_info(name).tiny
    with torch.device("cpu" if real else "meta"):
        model = create_model(name).eval()
        x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    assert model.forward_features(x).ndim == 2


def test_zoo_list_shows_parameters_madds_and_published_top1():
    from typer.testing import CliRunner

    from calib.cli import app

    result = CliRunner().invoke(app, ["zoo", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 2}
    assert sorted(rows) == sorted(REFERENCE)
    for name, ref in REFERENCE.items():
        assert f"{ref['num_params']:,}" in rows[name] and f"{ref['madds_m']:.2f}" in rows[name]
        assert f"{ref['published_top1']:.2f}" in rows[name] and ref["hash_prefix"] in rows[name]
