"""The pickle path on small pickles built here in NVIDIA's layout: extras beside the golden tests.

The evidence that the loader reads NVIDIA's format and that the port computes NVIDIA's images is
tests/test_stylegan2_golden.py (NVIDIA's own snapshot and outputs). These build pickles for the cases that
file has none of: unconditional networks, hostile globals, missing networks.
"""

import pickle
import sys
import types
from collections import OrderedDict
from dataclasses import replace

import pytest
import torch

from calib.core.errors import CalibError
from calib.distylegan.stylegan2 import CONFIGS, StyleGAN2Config, StyleGAN2Generator, load_stylegan2_ada, read_snapshot

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


def nvidia_init_kwargs(cfg: StyleGAN2Config) -> dict:
    """The Generator kwargs NVIDIA's training code records for this configuration."""
    return {"z_dim": cfg.z_dim, "w_dim": cfg.w_dim, "mapping_kwargs": {"num_layers": cfg.mapping_layers},
            "synthesis_kwargs": {"channel_base": cfg.channel_base, "channel_max": cfg.channel_max,
                                 "num_fp16_res": cfg.num_fp16_res, "conv_clamp": cfg.conv_clamp},
            "c_dim": cfg.c_dim, "img_resolution": cfg.resolution, "img_channels": cfg.img_channels}


NVIDIA_NAMES = {"StyleGAN2Generator": "Generator", "ToRGB": "ToRGBLayer", "FullyConnected": "FullyConnectedLayer"}


class Persistent:
    """Pickles exactly as a persistent network does: a call to _reconstruct_persistent_obj(meta)."""

    def __init__(self, module: torch.nn.Module, persistence, init_kwargs: dict | None = None):
        children = OrderedDict((k, Persistent(m, persistence)) for k, m in module._modules.items())
        state = {"training": False, "_parameters": OrderedDict(module._parameters),
                 "_buffers": OrderedDict(module._buffers), "_modules": children, "_non_persistent_buffers_set": set()}
        if init_kwargs is not None:
            state |= {"_init_args": (), "_init_kwargs": init_kwargs}
        name = type(module).__name__
        self.meta = dict(type="class", version=6, module_src="RAN.append('code')",
                         class_name=NVIDIA_NAMES.get(name, name), state=state)
        self.persistence = persistence

    def __reduce__(self):
        return self.persistence._reconstruct_persistent_obj, (self.meta,)


def build_pickle(path, monkeypatch, cfg: StyleGAN2Config = CONFIGS["tiny"], extra=None):
    persistence = _plant_modules(monkeypatch)
    torch.manual_seed(0)
    g = StyleGAN2Generator(cfg).eval()
    payload = {"G_ema": Persistent(g, persistence, nvidia_init_kwargs(cfg)), **(extra or {})}
    path.write_bytes(pickle.dumps(payload, protocol=4))
    return g


def test_safe_loader_reads_g_ema_without_running_embedded_code(tmp_path, monkeypatch):
    RAN.clear()
    g = build_pickle(tmp_path / "cifar10.pkl", monkeypatch)
    native = load_stylegan2_ada(tmp_path / "cifar10.pkl", trust=True)
    assert RAN == []
    z, c = torch.randn(2, 16), torch.tensor([1, 7])
    with torch.no_grad():
        assert torch.equal(native(z, c), g(z, c))
    # the planted code does run under plain unpickling, so the check above is meaningful
    pickle.loads((tmp_path / "cifar10.pkl").read_bytes())
    assert "code" in RAN


def test_unconditional_snapshots_load_but_do_not_make_class_sets(tmp_path, monkeypatch):
    from calib.distylegan.teachers import build_teacher

    cfg = replace(CONFIGS["tiny"], c_dim=0)
    g = build_pickle(tmp_path / "uncond.pkl", monkeypatch, cfg)
    native = load_stylegan2_ada(tmp_path / "uncond.pkl", trust=True)
    assert native.cfg.c_dim == 0 and not any(k.startswith("mapping.embed") for k in native.state_dict())
    z = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(native(z), g(z)) and native(z).shape == (3, 3, 32, 32)
    with pytest.raises(CalibError, match="unconditional"):
        build_teacher(f"stylegan2-ada:{tmp_path / 'uncond.pkl'}", trust=True)


def test_loading_needs_explicit_trust(tmp_path, monkeypatch):
    build_pickle(tmp_path / "p.pkl", monkeypatch)
    with pytest.raises(CalibError, match="--trust-teacher"):
        load_stylegan2_ada(tmp_path / "p.pkl")


class Evil:
    def __reduce__(self):
        return (eval, ("1+1",))


@pytest.mark.parametrize("payload, message", [
    ({"G_ema": Evil()}, "refusing to unpickle builtins.eval"),
    ({"G": 1}, "no G_ema"),
    (b"garbage", "not a readable"),
    ([1, 2], "not a network snapshot"),
])
def test_malformed_pickles_fail_clearly(tmp_path, payload, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(payload if isinstance(payload, bytes) else pickle.dumps(payload))
    with pytest.raises(CalibError, match=message):
        load_stylegan2_ada(path, trust=True)


def test_a_g_ema_without_init_kwargs_is_refused(tmp_path, monkeypatch):
    persistence = _plant_modules(monkeypatch)
    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"G_ema": Persistent(StyleGAN2Generator(CONFIGS["tiny"]),
                                                                        persistence)}))
    with pytest.raises(CalibError, match="no init kwargs"):
        load_stylegan2_ada(tmp_path / "p.pkl", trust=True)
    assert isinstance(read_snapshot(tmp_path / "p.pkl", trust=True), dict)


def test_native_forward_is_deterministic_per_noise_mode():
    torch.manual_seed(0)
    g = StyleGAN2Generator(CONFIGS["tiny"]).eval()
    z, c = torch.randn(3, 16), torch.tensor([0, 4, 9])
    with torch.no_grad():
        assert torch.equal(g(z, c), g(z, c))  # const noise
        g.noise_mode = "none"
        assert torch.equal(g(z, c), g(z, c))


def test_stylegan2_source_via_cli_requires_trust(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from calib.cli import app

    build_pickle(tmp_path / "p.pkl", monkeypatch)
    runner = CliRunner()
    args = ["generate", "--source", "stylegan2-ada", "--teacher", str(tmp_path / "p.pkl"), "--per-class", "1"]
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert refused.exit_code == 1 and "--trust-teacher" in refused.output
    ok = runner.invoke(app, [*args, "--trust-teacher", "--truncation", "0.7", "--out", str(tmp_path / "b")])
    assert ok.exit_code == 0, ok.output
