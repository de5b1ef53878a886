"""A native StyleGAN2-ADA generator and a safe reader for NVIDIA's network pickles.

The generator computes what NVIDIA's `training.networks.Generator` ('skip' synthesis) computes with
`force_fp32=True`: parameter and buffer names, their order and their shapes are NVIDIA's, so the state dict
of a snapshot's `G_ema` loads onto it unchanged, and it is built from the init kwargs recorded in that
snapshot. Its outputs are checked against arrays NVIDIA's own code produced (tests/test_stylegan2_golden.py,
`calib distylegan parity`).

A network snapshot stores every module as a "persistent object": a call of NVIDIA's
`_reconstruct_persistent_obj` whose argument carries the module's Python source, which plain unpickling
executes. `read_snapshot` resolves that call to a record of plain data instead (class name, tensors, init
kwargs), rebuilds tensors with weights-only loading, numpy scalars from their bytes, and refuses every other
global. Even so, reading a pickle at all requires `trust=True` (`--trust-teacher`).
"""

from __future__ import annotations

import io
import math
import pickle
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from calib.core.errors import CalibError


@dataclass(frozen=True)
class StyleGAN2Config:
    """NVIDIA's Generator init kwargs, flattened; the defaults are the official conditional CIFAR-10 ones."""

    z_dim: int = 512
    c_dim: int = 10  # 0 = unconditional
    w_dim: int = 512
    mapping_layers: int = 2  # the cifar configuration ("map=2"); NVIDIA's constructor default is 8
    resolution: int = 32
    channel_base: int = 32768
    channel_max: int = 512
    conv_clamp: float | None = 256.0
    img_channels: int = 3
    num_fp16_res: int = 4  # NVIDIA runs these resolutions in float16 unless force_fp32; this port is float32
    mapping_lr_multiplier: float = 0.01
    embed_features: int | None = None  # None = w_dim
    layer_features: int | None = None  # None = w_dim
    resample_filter: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)  # initial value only: loading replaces the buffers

    def channels(self, res: int) -> int:
        return min(self.channel_base // res, self.channel_max)

    @property
    def block_resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        """One w per convolution plus one for the last ToRGB (NVIDIA's count)."""
        return 2 * len(self.block_resolutions)

    @property
    def fp16_resolutions(self) -> list[int]:
        """Block resolutions NVIDIA runs in float16 without force_fp32 (recorded; this port stays float32)."""
        first = max(2 ** (int(math.log2(self.resolution)) + 1 - self.num_fp16_res), 8)
        return [r for r in self.block_resolutions if r >= first]

    @classmethod
    def from_init_kwargs(cls, args: tuple | list, kwargs: dict) -> StyleGAN2Config:
        """The config of `training.networks.Generator(*args, **kwargs)`, with NVIDIA's constructor defaults."""
        names = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
        if len(args) > len(names):
            raise CalibError(f"G_ema was built with {len(args)} positional arguments; a Generator takes at most 7")
        kw = {**dict(zip(names, args)), **dict(kwargs)}
        _refuse_unknown("Generator", kw, set(names))
        m, s = dict(kw.get("mapping_kwargs") or {}), dict(kw.get("synthesis_kwargs") or {})
        _refuse_unknown("mapping", m, {"num_layers", "embed_features", "layer_features", "activation",
                                       "lr_multiplier", "w_avg_beta"})
        _refuse_unknown("synthesis", s, {"channel_base", "channel_max", "num_fp16_res", "architecture",
                                         "resample_filter", "conv_clamp", "fp16_channels_last", "kernel_size",
                                         "use_noise", "activation", "channels_last"})
        unsupported = {"synthesis architecture": (s.get("architecture", "skip"), "skip"),
                       "mapping activation": (m.get("activation", "lrelu"), "lrelu"),
                       "synthesis activation": (s.get("activation", "lrelu"), "lrelu"),
                       "kernel_size": (s.get("kernel_size", 3), 3), "use_noise": (s.get("use_noise", True), True)}
        for what, (value, needed) in unsupported.items():
            if value != needed:
                raise CalibError(f"G_ema has {what} {value!r}; the native generator implements {needed!r} only")
        if m.get("w_avg_beta", 0.995) is None:
            raise CalibError("G_ema tracks no w_avg (w_avg_beta None); the native generator needs it for truncation")
        filt = s.get("resample_filter", [1, 3, 3, 1])
        if not isinstance(filt, list | tuple) or not filt or not all(isinstance(v, int | float) for v in filt):
            raise CalibError(f"G_ema resample_filter {filt!r} is not a 1-D list of numbers")
        try:
            cfg = cls(z_dim=_int(kw, "z_dim"), c_dim=_int(kw, "c_dim"), w_dim=_int(kw, "w_dim", 1),
                      mapping_layers=_int(m, "num_layers", 1, 8), resolution=_int(kw, "img_resolution", 4),
                      channel_base=_int(s, "channel_base", 1, 32768), channel_max=_int(s, "channel_max", 1, 512),
                      conv_clamp=None if s.get("conv_clamp") is None else float(s["conv_clamp"]),
                      img_channels=_int(kw, "img_channels", 1), num_fp16_res=_int(s, "num_fp16_res", 0, 0),
                      mapping_lr_multiplier=float(m.get("lr_multiplier", 0.01)),
                      embed_features=None if m.get("embed_features") is None else _int(m, "embed_features"),
                      layer_features=None if m.get("layer_features") is None else _int(m, "layer_features", 1),
                      resample_filter=tuple(float(v) for v in filt))
        except (TypeError, ValueError) as e:
            raise CalibError(f"G_ema init kwargs are not numbers where numbers belong ({e})") from None
        if cfg.resolution & (cfg.resolution - 1):
            raise CalibError(f"G_ema img_resolution {cfg.resolution} is not a power of two")
        return cfg


def _refuse_unknown(where: str, kw: dict, known: set[str]) -> None:
    unknown = sorted(set(kw) - known)
    if unknown:
        raise CalibError(f"G_ema {where} kwargs {', '.join(map(str, unknown))} are not StyleGAN2-ADA's")


def _int(kw: dict, key: str, minimum: int = 0, default: int | None = None) -> int:
    value = kw.get(key, default)
    if value is None:
        raise CalibError(f"G_ema init kwargs lack {key}")
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise CalibError(f"G_ema init kwarg {key}={value!r} is not an integer >= {minimum}")
    return int(value)


CONFIGS = {"cifar10": StyleGAN2Config(),
           "tiny": StyleGAN2Config(z_dim=16, w_dim=16, channel_base=128, channel_max=16)}


# ---------------------------------------------------------------- resampling and modulated convolutions
def fir_filter(taps: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)) -> Tensor:
    """Separable taps -> normalized 2-D low-pass filter (the initial value NVIDIA's buffers start from)."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = f[:, None] * f[None, :]
    return f / f.sum()


def fir(x: Tensor, f: Tensor, pad: list[int], gain: float = 1.0) -> Tensor:
    """Pad each side (x0, x1, y0, y1; negative crops), then convolve every channel with the 2-D filter.

    A true convolution (the filter flipped), as NVIDIA's upfirdn2d does; for its symmetric filters the flip
    is invisible, but the buffers are read as stored, never assumed.
    """
    c = x.shape[1]
    kernel = (f.flip([0, 1]) * gain).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x, pad), kernel, groups=c)


def upsample2d(x: Tensor, f: Tensor) -> Tensor:
    """2x up-sampling of an image: zeros inserted after each pixel, then the filter with gain 4."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    fh, fw = f.shape
    return fir(up, f, [(fw + 1) // 2, (fw - 2) // 2, (fh + 1) // 2, (fh - 2) // 2], gain=4.0)


def modulate(weight: Tensor, styles: Tensor, demodulate: bool = True) -> Tensor:
    """Per-sample weights [N, O, I, k, k]: scaled by the styles, then (optionally) unit-norm per output."""
    w = weight[None] * styles[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum([2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    return w


def conv_per_sample(x: Tensor, w: Tensor) -> Tensor:
    """Same-size correlation of sample i with its own weights w[i], as one grouped convolution."""
    n, _, h, wd = x.shape
    out = F.conv2d(x.reshape(1, -1, h, wd), w.reshape(-1, *w.shape[2:]), padding=w.shape[-1] // 2, groups=n)
    return out.reshape(n, -1, *out.shape[2:])


def upconv_per_sample(x: Tensor, w: Tensor, f: Tensor) -> Tensor:
    """2x up-sampling convolution of NVIDIA's StyleGAN2 (conv2d_resample with up=2), sample by sample.

    A stride-2 transposed convolution with the weights as stored (that is a true convolution of the
    zero-inserted input, kernel flipped relative to conv2d) keeps its full (2H + k - 2)-pixel result; the
    low-pass filter (gain 4), padded so that the borders are kept, then brings it to 2H. Correlating with
    the unflipped kernel or cropping the transposed result first gives other images.
    """
    n, cin, h, wd = x.shape
    cout, kh, kw = w.shape[1], w.shape[3], w.shape[4]
    wt = w.transpose(1, 2).reshape(n * cin, cout, kh, kw)
    y = F.conv_transpose2d(x.reshape(1, n * cin, h, wd), wt, stride=2, groups=n)
    fh, fw = f.shape
    px, py = kw // 2, kh // 2  # the layer's own padding, counted on the up-sampled grid
    pad = [px + (fw + 1) // 2 - (kw - 1), px + (fw - 2) // 2 - (kw - 2),
           py + (fh + 1) // 2 - (kh - 1), py + (fh - 2) // 2 - (kh - 2)]
    y = fir(y, f, pad, gain=4.0)
    return y.reshape(n, cout, *y.shape[2:])


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    return x * (x.square().mean(1, keepdim=True) + eps).rsqrt()


# ---------------------------------------------------------------- the network
class FullyConnected(nn.Module):
    """Equalized-learning-rate linear layer (weights scaled at run time, as in the official networks)."""

    def __init__(self, cin: int, cout: int, bias_init: float = 0.0, lr_multiplier: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init)))
        self.weight_gain, self.bias_gain, self.act = lr_multiplier / math.sqrt(cin), lr_multiplier, act

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return F.leaky_relu(x, 0.2) * math.sqrt(2) if self.act else x


class MappingNetwork(nn.Module):
    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.z_dim, self.c_dim, self.num_layers = cfg.z_dim, cfg.c_dim, cfg.mapping_layers
        embed = (cfg.embed_features or cfg.w_dim) if cfg.c_dim else 0
        layer = cfg.layer_features or cfg.w_dim
        dims = [cfg.z_dim + embed] + [layer] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        if cfg.c_dim:
            self.embed = FullyConnected(cfg.c_dim, embed)
        for i in range(cfg.mapping_layers):
            setattr(self, f"fc{i}", FullyConnected(dims[i], dims[i + 1], lr_multiplier=cfg.mapping_lr_multiplier,
                                                   act=True))
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z: Tensor, c: Tensor | None = None, truncation_psi: float = 1.0) -> Tensor:
        """w [N, w_dim] (every layer gets the same w); psi < 1 pulls it toward w_avg."""
        parts = []
        if self.z_dim:
            parts.append(normalize_2nd_moment(z.float()))
        if self.c_dim:
            if c is None:
                raise CalibError("this generator is conditional: it needs class labels")
            parts.append(normalize_2nd_moment(self.embed(c.float())))
        x = torch.cat(parts, dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return self.w_avg.lerp(x, truncation_psi) if truncation_psi != 1 else x


class SynthesisLayer(nn.Module):
    def __init__(self, cin: int, cout: int, resolution: int, up: bool, cfg: StyleGAN2Config):
        super().__init__()
        self.affine = FullyConnected(cfg.w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.register_buffer("resample_filter", fir_filter(cfg.resample_filter))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.up, self.resolution, self.conv_clamp = up, resolution, cfg.conv_clamp

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "const", generator: torch.Generator | None = None):
        weight = modulate(self.weight, self.affine(w))
        x = upconv_per_sample(x, weight, self.resample_filter) if self.up else conv_per_sample(x, weight)
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, generator=generator, device=x.device)
            x = x + noise * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        x = F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * math.sqrt(2)
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


class ToRGB(nn.Module):
    def __init__(self, cin: int, cfg: StyleGAN2Config):
        super().__init__()
        self.affine = FullyConnected(cfg.w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cfg.img_channels, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(cfg.img_channels))
        self.weight_gain, self.conv_clamp = 1 / math.sqrt(cin), cfg.conv_clamp

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        x = conv_per_sample(x, modulate(self.weight, self.affine(w) * self.weight_gain, demodulate=False))
        x = x + self.bias[None, :, None, None]
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


class SynthesisBlock(nn.Module):
    def __init__(self, cin: int, cout: int, res: int, cfg: StyleGAN2Config):
        super().__init__()
        if cin == 0:
            self.const = nn.Parameter(torch.randn(cout, res, res))
        self.register_buffer("resample_filter", fir_filter(cfg.resample_filter))
        if cin:
            self.conv0 = SynthesisLayer(cin, cout, res, True, cfg)
        self.conv1 = SynthesisLayer(cout, cout, res, False, cfg)
        self.torgb = ToRGB(cout, cfg)
        self.num_conv = 2 if cin else 1

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Iterator[Tensor], **kw) -> tuple[Tensor, Tensor]:
        if x is None:
            w = next(ws)
            x = self.conv1(self.const[None].expand(w.shape[0], -1, -1, -1), w, **kw)
        else:
            x = self.conv0(x, next(ws), **kw)
            x = self.conv1(x, next(ws), **kw)
        y = self.torgb(x, next(ws))
        return x, y if img is None else upsample2d(img, self.resample_filter) + y


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.resolutions, self.num_ws = cfg.block_resolutions, cfg.num_ws
        for res in self.resolutions:
            cin = 0 if res == 4 else cfg.channels(res // 2)
            setattr(self, f"b{res}", SynthesisBlock(cin, cfg.channels(res), res, cfg))

    def forward(self, ws: Tensor, **kw) -> Tensor:
        """ws: [N, w_dim] (the same w everywhere) or NVIDIA's [N, num_ws, w_dim]."""
        if ws.ndim == 2:
            ws = ws[:, None].expand(-1, self.num_ws, -1)
        x = img = None
        start = 0
        for res in self.resolutions:
            block = getattr(self, f"b{res}")
            # a block's ToRGB shares its w with the next block's first convolution, as in NVIDIA's split
            x, img = block(x, img, iter(ws.unbind(1)[start : start + block.num_conv + 1]), **kw)
            start += block.num_conv
        return img


class StyleGAN2Generator(nn.Module):
    """`G(z, class_ids) -> images`, about [-1, 1] once trained; submodules in NVIDIA's order (synthesis first)."""

    def __init__(self, cfg: StyleGAN2Config = StyleGAN2Config(), truncation_psi: float = 1.0,
                 noise_mode: str = "const"):
        super().__init__()
        if noise_mode not in ("const", "none", "random"):
            raise CalibError(f"noise mode {noise_mode!r}: use const, none or random")
        self.cfg, self.truncation_psi, self.noise_mode = cfg, truncation_psi, noise_mode
        self.synthesis = SynthesisNetwork(cfg)
        self.mapping = MappingNetwork(cfg)

    def forward(self, z: Tensor, class_ids: Tensor | None = None) -> Tensor:
        c = F.one_hot(class_ids, self.cfg.c_dim).to(z.dtype) if self.cfg.c_dim and class_ids is not None else None
        return self.synthesis(self.mapping(z, c, self.truncation_psi), noise_mode=self.noise_mode)


def save_native(g: StyleGAN2Generator, path: Path) -> Path:
    torch.save({"kind": "distylegan.StyleGAN2", "config": asdict(g.cfg), "state_dict": g.state_dict()}, path)
    return path


def load_native(path: Path, truncation_psi: float = 1.0) -> StyleGAN2Generator:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = StyleGAN2Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()})
        g = StyleGAN2Generator(cfg, truncation_psi)
        g.load_state_dict(ckpt["state_dict"])
    except FileNotFoundError:
        raise CalibError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        raise CalibError(f"{path} is not a native StyleGAN2 checkpoint ({type(e).__name__})") from None
    return g.eval()


# ---------------------------------------------------------------- NVIDIA's pickles, read as data
class PersistentRecord:
    """What a persistent object becomes here: class name and state (tensors, init kwargs), none of its code."""

    def __init__(self, meta: dict):
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
            raise CalibError("malformed persistent object in the pickle")
        self.class_name = str(meta.get("class_name")).rsplit(".", 1)[-1]
        self.state = meta["state"]  # module_src is dropped here, never compiled

    def child(self, name: str) -> PersistentRecord | None:
        c = (self.state.get("_modules") or {}).get(name)
        return c if isinstance(c, PersistentRecord) else None


class _SafeDType:
    """numpy.dtype(name, align, copy) + BUILD, limited to plain numbers; numpy's own constructor is not called."""

    ALLOWED = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}

    def __init__(self, name, align=False, copy=False):
        if name not in self.ALLOWED:
            raise CalibError(f"refusing numpy dtype {name!r} in the pickle: only plain numbers are read")
        self.name, self.byteorder = name, "="

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise CalibError("malformed numpy dtype in the pickle")
        self.byteorder = state[1]


def _numpy_scalar(dtype, data=None):
    """numpy's scalar(dtype, bytes): the value decoded from its bytes, returned as a Python number."""
    if not isinstance(dtype, _SafeDType) or not isinstance(data, bytes):
        raise CalibError("malformed numpy scalar in the pickle")
    dt = np.dtype(dtype.byteorder.replace("|", "=") + dtype.name)
    if len(data) != dt.itemsize:
        raise CalibError("malformed numpy scalar in the pickle")
    return np.frombuffer(data, dtype=dt)[0].item()


def _storage_from_bytes(data: bytes):
    """One storage blob of `torch.save`, read weights-only (torch's own _load_from_bytes unpickles fully)."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, *metadata):
    if backward_hooks:
        raise CalibError("refusing a tensor with backward hooks in the pickle")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if backward_hooks or not isinstance(data, Tensor):
        raise CalibError("refusing a malformed parameter in the pickle")
    return nn.Parameter(data, requires_grad=False)


class _EasyDict(dict):
    """Stands in for dnnlib.util.EasyDict (a dict subclass): only its items are kept."""


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentRecord,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # written by numpy 2
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # written by numpy 1 (NVIDIA's 2021 pickles)
    ("numpy", "dtype"): _SafeDType,
}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        fn = _ALLOWED.get((module, name))
        if fn is None and module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if fn is None:
            raise CalibError(f"refusing to unpickle {module}.{name}: not a tensor, number or persistent network")
        return fn

    def persistent_load(self, pid):
        raise CalibError("refusing a pickle with external persistent ids")


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def read_snapshot(path: Path, trust: bool = False) -> dict:
    """The top-level dict of a network snapshot, each network a `PersistentRecord`; nothing in it runs."""
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
        raise CalibError(f"{path} is not a readable StyleGAN2-ADA pickle ({_one_line(e)})") from None
    if not isinstance(data, dict):
        raise CalibError(f"{path} is not a network snapshot (a dict with G_ema)")
    return data


def state_of(record: PersistentRecord, prefix: str = "") -> dict[str, Tensor]:
    """The state dict of a record tree, in torch's order: own parameters, own buffers, then children."""
    out: dict[str, Tensor] = {}
    skip = record.state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for k, v in (record.state.get(kind) or {}).items():
            if v is None or (kind == "_buffers" and k in skip):
                continue
            if not isinstance(v, Tensor):
                raise CalibError(f"G_ema entry {prefix}{k} is not a tensor")
            out[prefix + k] = v.detach()
    for k, child in (record.state.get("_modules") or {}).items():
        if isinstance(child, PersistentRecord):
            out |= state_of(child, f"{prefix}{k}.")
        elif child is not None:
            raise CalibError(f"unexpected sub-module type at {prefix}{k}")
    return out


def _check_stylegan2_ada(g: PersistentRecord) -> None:
    """Refuse other architectures by their module tree before building anything."""
    synthesis, mapping = g.child("synthesis"), g.child("mapping")
    if (g.class_name != "Generator" or synthesis is None or synthesis.class_name != "SynthesisNetwork"
            or mapping is None or mapping.class_name != "MappingNetwork"):
        raise CalibError(f"G_ema ({g.class_name}) is not StyleGAN2-ADA's Generator with synthesis and mapping")
    blocks = {k: getattr(v, "class_name", None) for k, v in (synthesis.state.get("_modules") or {}).items()}
    if not blocks or any(not k.startswith("b") or v != "SynthesisBlock" for k, v in blocks.items()):
        raise CalibError(f"G_ema synthesis holds {', '.join(map(str, blocks)) or 'nothing'}, "
                         "not StyleGAN2-ADA's SynthesisBlocks")


def g_ema_from_snapshot(data: dict) -> tuple[StyleGAN2Config, dict[str, Tensor]]:
    """Config (from G_ema's recorded init kwargs) and state dict of a snapshot's G_ema; never G."""
    g = data.get("G_ema")
    if not isinstance(g, PersistentRecord):
        raise CalibError("the pickle holds no G_ema network (a training snapshot or NVIDIA's release pickle has one)")
    _check_stylegan2_ada(g)
    args, kwargs = g.state.get("_init_args", ()), g.state.get("_init_kwargs")
    if not isinstance(kwargs, dict) or not isinstance(args, tuple | list):
        raise CalibError("G_ema records no init kwargs; the native generator is built from them")
    return StyleGAN2Config.from_init_kwargs(args, kwargs), state_of(g)


def native_from_state(cfg: StyleGAN2Config, state: dict[str, Tensor], truncation_psi: float = 1.0,
                      noise_mode: str = "const") -> StyleGAN2Generator:
    """The native generator with exactly G_ema's tensors: none missing, none left over, shapes equal."""
    g = StyleGAN2Generator(cfg, truncation_psi, noise_mode)
    own = g.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CalibError(f"G_ema does not map onto the native generator: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        raise CalibError(f"G_ema tensor {wrong[0]} has shape {tuple(state[wrong[0]].shape)}; its init kwargs give "
                         f"{tuple(own[wrong[0]].shape)}")
    g.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return g.eval()


def load_stylegan2_ada(path: Path, trust: bool = False, truncation_psi: float = 1.0,
                       noise_mode: str = "const") -> StyleGAN2Generator:
    """NVIDIA's snapshot or release pickle -> the native generator holding its G_ema (float32, eval mode)."""
    cfg, state = g_ema_from_snapshot(read_snapshot(path, trust))
    return native_from_state(cfg, state, truncation_psi, noise_mode)


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


# ---------------------------------------------------------------- parity with NVIDIA's own outputs
GOLDEN_ARRAYS = {  # array -> (truncation psi, noise mode or None for the mapping output)
    "w_psi1": (1.0, None), "w_psi07": (0.7, None),
    "img_psi1": (1.0, "const"), "img_psi07": (0.7, "const"), "img_psi1_none": (1.0, "none"),
}


@torch.no_grad()
def golden_parity(teacher: Path, golden: Path, trust: bool = False) -> dict[str, dict[str, float]]:
    """Max and mean |native - NVIDIA| per golden array (NVIDIA's G_ema outputs for the golden z and c)."""
    g = load_stylegan2_ada(teacher, trust)
    try:
        with np.load(golden, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise CalibError(f"golden file {golden} does not exist") from None
    except Exception as e:
        raise CalibError(f"{golden} is not a golden .npz ({_one_line(e)})") from None
    missing = sorted({"z", "c", *GOLDEN_ARRAYS} - set(arrays))
    if missing:
        raise CalibError(f"{golden} lacks {', '.join(missing)}")
    z, c = torch.from_numpy(arrays["z"]).float(), torch.from_numpy(arrays["c"]).float()
    if z.ndim != 2 or z.shape[1] != g.cfg.z_dim or c.shape != (len(z), g.cfg.c_dim):
        raise CalibError(f"golden z {tuple(z.shape)} / c {tuple(c.shape)} do not fit the teacher "
                         f"(z_dim {g.cfg.z_dim}, c_dim {g.cfg.c_dim})")
    out = {}
    for name, (psi, noise) in GOLDEN_ARRAYS.items():
        w = g.mapping(z, c if g.cfg.c_dim else None, psi)
        mine = g.synthesis(w, noise_mode=noise) if noise else w[:, None].expand(-1, g.cfg.num_ws, -1)
        ref = torch.from_numpy(arrays[name]).float()
        if mine.shape != ref.shape:
            raise CalibError(f"golden {name} has shape {tuple(ref.shape)}; the native output has {tuple(mine.shape)}")
        diff = (mine - ref).abs()
        out[name] = {"max_abs": diff.max().item(), "mean_abs": diff.mean().item(),
                     "ref_max_abs": ref.abs().max().item()}
    return out


def parameter_summary(g: StyleGAN2Generator) -> dict:
    """Keys in order with shapes, parameter count: the facts NVIDIA's state-dict description lists."""
    return {"state_dict": {k: list(v.shape) for k, v in g.state_dict().items()},
            "num_params": sum(p.numel() for p in g.parameters()),
            "buffers": [k for k, _ in g.named_buffers()], "num_ws": g.cfg.num_ws,
            "channels": {f"b{r}": g.cfg.channels(r) for r in g.cfg.block_resolutions}}
