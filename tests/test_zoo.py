import json

import pytest
import torch

from calibration.zoo import create_model, list_models
from calibration.zoo.repvgg import reparameterize
from tests.conftest import reference_file

FULL = list_models()
ALL = list_models(include_tiny=True)


@pytest.fixture(scope="module")
def reference():
    return json.loads(reference_file().read_text())


def test_the_five_models_are_registered():
    assert FULL == ["mobilenetv2_x1_4", "repvgg_a2", "resnet20", "shufflenetv2_x2_0", "vgg16_bn"]


@pytest.mark.parametrize("name", FULL)
def test_state_dict_matches_official_checkpoint(name, reference):
    model = create_model(name)
    sd = model.state_dict()
    expected = reference[name]["state_dict"]
    assert list(sd) == list(expected)
    assert {k: list(v.shape) for k, v in sd.items()} == expected
    assert sum(p.numel() for p in model.parameters()) == reference[name]["num_params"]


def test_repvgg_fused_keys_match(reference):
    sd = reparameterize(create_model("repvgg_a2")).state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == reference["repvgg_a2"]["fused_state_dict"]


def _randomize_bn(model):
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)


@pytest.mark.parametrize("name", [n for n in ALL if "repvgg" in n])
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
    model = create_model(name).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.forward_features(torch.randn(2, 3, 32, 32)).ndim == 2
