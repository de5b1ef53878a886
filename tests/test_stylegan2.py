"""The official-pickle path, tested on pickles built here in NVIDIA's layout."""

import pickle
import sys
import types
from collections import OrderedDict

import pytest
import torch

from calibration.errors import CalibError
from distylegan.stylegan2 import CONFIGS, StyleGAN2Generator, native_from_state, safe_load_g_ema

RAN = []


def _plant_modules(monkeypatch):
    """Stand-ins for NVIDIA's modules; any call into them records that pickle code ran."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        RAN.append("reconstruct")
        exec(meta["module_src"], {"RAN": RAN})  # what real unpickling does with the class source
        return meta

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)
    return persistence


class Persistent:
    """Pickles exactly as a persistent network does: a call to _reconstruct_persistent_obj(meta)."""

    def __init__(self, module: torch.nn.Module, name: str, persistence):
        children = OrderedDict((k, Persistent(m, type(m).__name__, persistence)) for k, m in module._modules.items())
        self.meta = dict(type="class", version=6, module_src="RAN.append('code')",
                         class_name=f"training.networks.{name}",
                         state={"training": False, "_parameters": OrderedDict(module._parameters),
                                "_buffers": OrderedDict(module._buffers), "_modules": children,
                                "_non_persistent_buffers_set": set()})
        self.persistence = persistence

    def __reduce__(self):
        return self.persistence._reconstruct_persistent_obj, (self.meta,)


def build_pickle(path, monkeypatch, extra=None):
    persistence = _plant_modules(monkeypatch)
    torch.manual_seed(0)
    g = StyleGAN2Generator(CONFIGS["tiny"]).eval()
    payload = {"G_ema": Persistent(g, "Generator", persistence), **(extra or {})}
    path.write_bytes(pickle.dumps(payload, protocol=4))
    return g


def test_safe_loader_reads_g_ema_without_running_embedded_code(tmp_path, monkeypatch):
    RAN.clear()
    g = build_pickle(tmp_path / "cifar10.pkl", monkeypatch)
    state = safe_load_g_ema(tmp_path / "cifar10.pkl", trust=True)
    assert RAN == []
    native = native_from_state(state)
    z, c = torch.randn(2, 16), torch.tensor([1, 7])
    with torch.no_grad():
        assert torch.equal(native(z, c), g(z, c))
    # the planted code does run under plain unpickling, so the check above is meaningful
    pickle.loads((tmp_path / "cifar10.pkl").read_bytes())
    assert "code" in RAN


def test_loading_needs_explicit_trust(tmp_path, monkeypatch):
    build_pickle(tmp_path / "p.pkl", monkeypatch)
    with pytest.raises(CalibError, match="--trust-teacher"):
        safe_load_g_ema(tmp_path / "p.pkl")


class Evil:
    def __reduce__(self):
        return (eval, ("1+1",))


@pytest.mark.parametrize("payload, message", [
    ({"G_ema": Evil()}, "refusing to unpickle builtins.eval"),
    ({"G": 1}, "no G_ema"),
    (b"garbage", "not a readable"),
])
def test_malformed_pickles_fail_clearly(tmp_path, payload, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(payload if isinstance(payload, bytes) else pickle.dumps(payload))
    with pytest.raises(CalibError, match=message):
        safe_load_g_ema(path, trust=True)


def test_native_forward_is_deterministic_per_noise_mode():
    torch.manual_seed(0)
    g = StyleGAN2Generator(CONFIGS["tiny"]).eval()
    z, c = torch.randn(3, 16), torch.tensor([0, 4, 9])
    with torch.no_grad():
        assert torch.equal(g(z, c), g(z, c))  # const noise
        g.noise_mode = "none"
        assert torch.equal(g(z, c), g(z, c))


def test_full_config_has_teacher_size():
    g = StyleGAN2Generator()
    assert sum(p.numel() for p in g.parameters()) > 20_000_000
    names = set(g.state_dict())
    assert {"mapping.embed.weight", "mapping.fc0.weight", "mapping.w_avg", "synthesis.b4.const",
            "synthesis.b32.conv0.affine.weight", "synthesis.b32.torgb.weight"} <= names


def test_stylegan2_source_via_cli_requires_trust(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from calibration.cli import app

    build_pickle(tmp_path / "p.pkl", monkeypatch)
    runner = CliRunner()
    args = ["generate", "--source", "stylegan2-ada", "--teacher", str(tmp_path / "p.pkl"), "--per-class", "1"]
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 1 and "--trust-teacher" in refused.output
    ok = runner.invoke(app, [*args, "--trust-teacher", "--truncation", "0.7", "--out", str(tmp_path / "b")])
    assert ok.exit_code == 0, ok.output
