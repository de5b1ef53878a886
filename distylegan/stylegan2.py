"""A native StyleGAN2 generator (the CIFAR-10 configuration of StyleGAN2-ADA) and a safe loader for
NVIDIA's official pickle.

Module and parameter names follow the official `G_ema`, so its parameters and buffers map onto this
network by name: mapping.{embed, fc0..}, mapping.w_avg, synthesis.b{4,8,16,32}.{const, conv0, conv1, torgb}.
Numerical parity with NVIDIA's kernels cannot be checked without the pickle; the ops are the published
ones (modulated/demodulated 3x3 convs, [1,3,3,1] FIR up-sampling, noise inputs, skip ToRGB, clamp 256).

The official pickle stores each network as a "persistent object" whose class source code is executed on
unpickling. `safe_load_g_ema` replaces that reconstruction with a stub that only keeps parameters and
buffers, allows a short list of tensor-rebuilding globals and refuses everything else. Loading a teacher
pickle at all requires `trust=True` (`--trust-teacher`).
"""

from __future__ import annotations

import io
import math
import pickle
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from calibration.errors import CalibError


@dataclass(frozen=True)
class StyleGAN2Config:
    z_dim: int = 512
    c_dim: int = 10
    w_dim: int = 512
    mapping_layers: int = 2  # the cifar configuration ("map=2")
    resolution: int = 32
    channel_base: int = 16384
    channel_max: int = 512
    conv_clamp: float | None = 256.0

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)


CONFIGS = {"cifar10": StyleGAN2Config(),
           "tiny": StyleGAN2Config(z_dim=16, w_dim=16, channel_base=128, channel_max=16)}


def fir_filter() -> Tensor:
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = f[:, None] * f[None, :]
    return f / f.sum()


class FullyConnected(nn.Module):
    """Equalized-learning-rate linear layer (weights scaled at run time, as in the official networks)."""

    def __init__(self, cin: int, cout: int, bias_init: float = 0.0, lr_multiplier: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init)))
        self.weight_gain, self.bias_gain, self.act = lr_multiplier / math.sqrt(cin), lr_multiplier, act

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return nn.functional.leaky_relu(x, 0.2) * math.sqrt(2) if self.act else x


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    return x * (x.square().mean(1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.embed = FullyConnected(cfg.c_dim, cfg.w_dim)
        dims = [cfg.z_dim + cfg.w_dim] + [cfg.w_dim] * cfg.mapping_layers
        for i in range(cfg.mapping_layers):
            setattr(self, f"fc{i}", FullyConnected(dims[i], dims[i + 1], lr_multiplier=0.01, act=True))
        self.num_layers = cfg.mapping_layers
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z: Tensor, c: Tensor, truncation_psi: float = 1.0) -> Tensor:
        x = torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(self.embed(c))], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return self.w_avg.lerp(x, truncation_psi) if truncation_psi != 1 else x


def upsample2x(x: Tensor, f: Tensor) -> Tensor:
    """Zero-insertion up-sampling followed by the [1,3,3,1] FIR filter (gain 4)."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, h * 2, w * 2)
    up[:, :, ::2, ::2] = x
    kernel = (f * 4).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return nn.functional.conv2d(nn.functional.pad(up, [2, 1, 2, 1]), kernel, groups=c)


def modulated_conv(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool = True) -> Tensor:
    n = x.shape[0]
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum([2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    x = x.reshape(1, -1, *x.shape[2:])
    out = nn.functional.conv2d(x, w.reshape(-1, *w.shape[2:]), padding=weight.shape[-1] // 2, groups=n)
    return out.reshape(n, -1, *out.shape[2:])


class SynthesisLayer(nn.Module):
    def __init__(self, cin: int, cout: int, w_dim: int, resolution: int, up: bool, conv_clamp: float | None):
        super().__init__()
        self.affine = FullyConnected(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("resample_filter", fir_filter())
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "const", generator: torch.Generator | None = None):
        if self.up:
            x = upsample2x(x, self.resample_filter)
        x = modulated_conv(x, self.weight, self.affine(w))
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, generator=generator, device=x.device)
            x = x + noise * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        x = nn.functional.leaky_relu(x + self.bias[None, :, None, None], 0.2) * math.sqrt(2)
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp else x


class ToRGB(nn.Module):
    def __init__(self, cin: int, w_dim: int, conv_clamp: float | None):
        super().__init__()
        self.affine = FullyConnected(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(3, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(3))
        self.weight_gain, self.conv_clamp = 1 / math.sqrt(cin), conv_clamp

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        x = modulated_conv(x, self.weight, self.affine(w) * self.weight_gain, demodulate=False)
        x = x + self.bias[None, :, None, None]
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp else x


class SynthesisBlock(nn.Module):
    def __init__(self, cin: int, cout: int, res: int, cfg: StyleGAN2Config):
        super().__init__()
        if cin == 0:
            self.const = nn.Parameter(torch.randn(cout, res, res))
        else:
            self.conv0 = SynthesisLayer(cin, cout, cfg.w_dim, res, True, cfg.conv_clamp)
        self.conv1 = SynthesisLayer(cout, cout, cfg.w_dim, res, False, cfg.conv_clamp)
        self.torgb = ToRGB(cout, cfg.w_dim, cfg.conv_clamp)
        self.register_buffer("resample_filter", fir_filter())

    def forward(self, x: Tensor | None, img: Tensor | None, w: Tensor, **kw) -> tuple[Tensor, Tensor]:
        if x is None:
            x = self.const[None].expand(w.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, w, **kw)
        x = self.conv1(x, w, **kw)
        y = self.torgb(x, w)
        return x, y if img is None else upsample2x(img, self.resample_filter) + y


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.resolutions = [2**i for i in range(2, int(math.log2(cfg.resolution)) + 1)]
        for res in self.resolutions:
            cin = 0 if res == 4 else cfg.channels(res // 2)
            setattr(self, f"b{res}", SynthesisBlock(cin, cfg.channels(res), res, cfg))

    def forward(self, w: Tensor, **kw) -> Tensor:
        x = img = None
        for res in self.resolutions:
            x, img = getattr(self, f"b{res}")(x, img, w, **kw)
        return img


class StyleGAN2Generator(nn.Module):
    """`G(z, class_ids) -> images in about [-1, 1]`; every layer gets the same w (no style mixing)."""

    def __init__(self, cfg: StyleGAN2Config = StyleGAN2Config(), truncation_psi: float = 1.0,
                 noise_mode: str = "const"):
        super().__init__()
        self.cfg, self.truncation_psi, self.noise_mode = cfg, truncation_psi, noise_mode
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)

    def forward(self, z: Tensor, class_ids: Tensor) -> Tensor:
        c = nn.functional.one_hot(class_ids, self.cfg.c_dim).to(z.dtype)
        w = self.mapping(z, c, self.truncation_psi)
        return self.synthesis(w, noise_mode=self.noise_mode)


def save_native(g: StyleGAN2Generator, path: Path) -> Path:
    torch.save({"kind": "distylegan.StyleGAN2", "config": asdict(g.cfg), "state_dict": g.state_dict()}, path)
    return path


def load_native(path: Path, truncation_psi: float = 1.0) -> StyleGAN2Generator:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    g = StyleGAN2Generator(StyleGAN2Config(**ckpt["config"]), truncation_psi)
    g.load_state_dict(ckpt["state_dict"])
    return g.eval()


# ---------------------------------------------------------------- the official pickle, read safely
class PersistentStub:
    """What a persistent object becomes: its class name and its state, with none of its code run."""

    def __init__(self, meta: dict):
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
            raise CalibError("malformed persistent object in the pickle")
        self.class_name = str(meta.get("class_name"))
        self.state = meta["state"]


def _tensor_from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class _EasyDict(dict):
    pass


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _tensor_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentStub,
    ("dnnlib.util", "EasyDict"): _EasyDict,
}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        fn = _ALLOWED.get((module, name))
        if fn is None and module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if fn is None:
            raise CalibError(f"refusing to unpickle {module}.{name}: not a tensor or a persistent network")
        return fn

    def persistent_load(self, pid):
        raise CalibError("refusing a pickle with external persistent ids")


def _flatten(stub: PersistentStub, prefix: str = "") -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for kind in ("_parameters", "_buffers"):
        for k, v in (stub.state.get(kind) or {}).items():
            if v is not None:
                out[prefix + k] = v.detach().clone() if isinstance(v, Tensor) else v
    for k, child in (stub.state.get("_modules") or {}).items():
        if isinstance(child, PersistentStub):
            out |= _flatten(child, f"{prefix}{k}.")
        elif child is not None:
            raise CalibError(f"unexpected sub-module type at {prefix}{k}")
    return out


def safe_load_g_ema(path: Path, trust: bool = False) -> dict[str, Tensor]:
    """Parameters and buffers of `G_ema` from an official pickle, executing none of its code."""
    if not trust:
        raise CalibError("loading a StyleGAN2-ADA pickle needs explicit consent: pass --trust-teacher")
    try:
        with open(path, "rb") as f:
            data = SafeUnpickler(f).load()
    except CalibError:
        raise
    except FileNotFoundError:
        raise CalibError(f"teacher pickle {path} does not exist") from None
    except Exception as e:
        raise CalibError(f"{path} is not a readable StyleGAN2-ADA pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("G_ema"), PersistentStub):
        raise CalibError(f"{path} holds no G_ema network")
    return _flatten(data["G_ema"])


def config_from_state(state: dict[str, Tensor]) -> StyleGAN2Config:
    try:
        w_dim, c_dim = state["mapping.embed.weight"].shape
        z_dim = state["mapping.fc0.weight"].shape[1] - w_dim
        layers = sum(1 for k in state if k.startswith("mapping.fc") and k.endswith(".weight"))
        res = max(int(k.split(".")[1][1:]) for k in state if k.startswith("synthesis.b"))
        ch = {int(k.split(".")[1][1:]): v.shape[0] for k, v in state.items() if k.endswith("conv1.weight")}
    except (KeyError, ValueError) as e:
        raise CalibError(f"G_ema parameters do not look like a conditional StyleGAN2 ({e})") from None
    cmax = max(ch.values())
    base = max(r * c for r, c in ch.items())
    return StyleGAN2Config(z_dim, c_dim, w_dim, layers, res, base, cmax)


def native_from_state(state: dict[str, Tensor], truncation_psi: float = 1.0) -> StyleGAN2Generator:
    g = StyleGAN2Generator(config_from_state(state), truncation_psi)
    missing, unexpected = g.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CalibError(f"G_ema does not map onto the native generator: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return g.eval()


def load_with_nvidia_code(path: Path, trust: bool = False) -> nn.Module:
    """The official route: plain unpickling with NVIDIA's dnnlib/torch_utils on PYTHONPATH (runs their code)."""
    if not trust:
        raise CalibError("unpickling with NVIDIA's code runs code from the pickle: pass --trust-teacher")
    try:
        import dnnlib  # noqa: F401
        import torch_utils  # noqa: F401
    except ImportError:
        raise CalibError("put NVIDIA's stylegan2-ada-pytorch checkout on PYTHONPATH for this route") from None
    with open(path, "rb") as f:
        return pickle.load(f)["G_ema"].eval()  # noqa: S301 - consented above


def stylegan2_ada_teacher(path: Path, trust: bool = False, truncation_psi: float = 1.0, nvidia_code: bool = False):
    from distylegan.teachers import ModuleTeacher

    if nvidia_code:
        g_ema = load_with_nvidia_code(path, trust)

        class _Wrap(nn.Module):
            def forward(self, z, class_ids):
                c = nn.functional.one_hot(class_ids, g_ema.c_dim).float()
                return g_ema(z, c, truncation_psi=truncation_psi, noise_mode="const")

        return ModuleTeacher(_Wrap(), g_ema.z_dim, g_ema.c_dim, f"stylegan2-ada-nvidia:{path}")
    g = native_from_state(safe_load_g_ema(path, trust), truncation_psi)
    return ModuleTeacher(g, g.cfg.z_dim, g.cfg.c_dim, f"stylegan2-ada:{path}")
