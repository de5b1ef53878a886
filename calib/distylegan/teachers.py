"""Teachers: anything callable as `teacher(z, class_ids) -> images in [-1, 1]`, built from a spec string.

Specs:
  tiny[:SEED]             a small random conditional generator (tests; no meaning beyond being fixed)
  module:PATH.pt          a generator checkpoint of this project (DiStyleGAN or native StyleGAN2)
  stylegan2-ada:PATH.pkl  NVIDIA's official pickle, read safely, only with trust=True (calib.distylegan.stylegan2)
  stylegan2-ada-nvidia:PATH.pkl  the same, unpickled with NVIDIA's code on PYTHONPATH (trust=True too)

The dependency points one way: teachers use the networks (calib.distylegan.networks, calib.distylegan.stylegan2), which
know nothing of teachers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from calib.core.errors import CalibError
from calib.distylegan.networks import CONFIGS, Generator, load_generator
from calib.distylegan.stylegan2 import StyleGAN2Generator, load_native, load_stylegan2_ada, load_with_nvidia_code


class Teacher(Protocol):
    z_dim: int
    num_classes: int

    def __call__(self, z: Tensor, class_ids: Tensor) -> Tensor: ...


@dataclass
class ModuleTeacher:
    """Wraps a conditional generator module so that it is called in eval mode without gradients."""

    module: torch.nn.Module
    z_dim: int
    num_classes: int
    name: str

    @torch.no_grad()
    def __call__(self, z: Tensor, class_ids: Tensor) -> Tensor:
        return self.module(z, class_ids).clamp(-1, 1)


def tiny_teacher(seed: int = 0) -> ModuleTeacher:
    torch.manual_seed(seed)
    g = Generator(CONFIGS["tiny"][0]).eval()
    return ModuleTeacher(g, g.cfg.z_dim, g.cfg.num_classes, f"tiny:{seed}")


def load_module_checkpoint(path: Path, truncation_psi: float = 1.0) -> ModuleTeacher:
    try:
        kind = torch.load(path, map_location="cpu", weights_only=True).get("kind", "")
    except FileNotFoundError:
        raise CalibError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        raise CalibError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    if kind == "distylegan.StyleGAN2":
        return stylegan2_module_teacher(load_native(path, truncation_psi), f"module:{path}")
    g = load_generator(path)
    return ModuleTeacher(g, g.cfg.z_dim, g.cfg.num_classes, f"module:{path}")


def stylegan2_module_teacher(g: StyleGAN2Generator, name: str) -> ModuleTeacher:
    """A native StyleGAN2 as a teacher: class-conditional, 32x32 RGB (the size of every set made here)."""
    cfg = g.cfg
    if cfg.c_dim == 0:
        raise CalibError(f"{name} is an unconditional generator (c_dim 0); teachers must make class-conditional images")
    if (cfg.resolution, cfg.img_channels) != (32, 3):
        raise CalibError(f"{name} makes {cfg.resolution}x{cfg.resolution}x{cfg.img_channels} images; "
                         "teachers must make 32x32 RGB")
    return ModuleTeacher(g, cfg.z_dim, cfg.c_dim, name)


class _NvidiaGEma(torch.nn.Module):
    """NVIDIA's own G_ema behind the teacher interface: float32 (force_fp32), const noise, all layers truncated."""

    def __init__(self, g_ema: torch.nn.Module, truncation_psi: float):
        super().__init__()
        self.g_ema, self.truncation_psi = g_ema, truncation_psi

    def forward(self, z: Tensor, class_ids: Tensor) -> Tensor:
        c = torch.nn.functional.one_hot(class_ids, self.g_ema.c_dim).float()
        return self.g_ema(z, c, truncation_psi=self.truncation_psi, truncation_cutoff=None, noise_mode="const",
                          force_fp32=True)


def stylegan2_ada_teacher(path: Path, trust: bool = False, truncation_psi: float = 1.0,
                          nvidia_code: bool = False) -> ModuleTeacher:
    """NVIDIA's pickle as a teacher: read safely into the native generator, or (opt-in) with NVIDIA's code."""
    if nvidia_code:
        g_ema = load_with_nvidia_code(path, trust)
        return ModuleTeacher(_NvidiaGEma(g_ema, truncation_psi), g_ema.z_dim, g_ema.c_dim,
                             f"stylegan2-ada-nvidia:{path}")
    return stylegan2_module_teacher(load_stylegan2_ada(path, trust, truncation_psi), f"stylegan2-ada:{path}")


def build_teacher(spec: str, trust: bool = False, truncation_psi: float = 1.0) -> ModuleTeacher:
    kind, _, arg = spec.partition(":")
    if kind == "tiny":
        return tiny_teacher(int(arg or 0))
    if kind == "module":
        return load_module_checkpoint(Path(arg), truncation_psi)
    if kind in ("stylegan2-ada", "stylegan2-ada-nvidia"):
        return stylegan2_ada_teacher(Path(arg), trust, truncation_psi, nvidia_code=kind.endswith("nvidia"))
    raise CalibError(f"unknown teacher spec {spec!r}; use tiny[:SEED], module:PATH.pt or stylegan2-ada:PATH.pkl")
