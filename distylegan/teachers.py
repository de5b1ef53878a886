"""Teachers: anything callable as `teacher(z, class_ids) -> images in [-1, 1]`, built from a spec string.

Specs:
  tiny[:SEED]             a small random conditional generator (tests; no meaning beyond being fixed)
  module:PATH.pt          a generator checkpoint of this project (DiStyleGAN or native StyleGAN2)
  stylegan2-ada:PATH.pkl  NVIDIA's official pickle, read safely, only with trust=True (distylegan.stylegan2)
  stylegan2-ada-nvidia:PATH.pkl  the same, unpickled with NVIDIA's code on PYTHONPATH (trust=True too)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from calibration.errors import CalibError
from distylegan.networks import CONFIGS, Generator


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
    from distylegan.networks import load_generator

    try:
        kind = torch.load(path, map_location="cpu", weights_only=True).get("kind", "")
    except Exception as e:
        raise CalibError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    if kind == "distylegan.StyleGAN2":
        from distylegan.stylegan2 import load_native

        g = load_native(path, truncation_psi)
        return ModuleTeacher(g, g.cfg.z_dim, g.cfg.c_dim, f"module:{path}")
    g = load_generator(path)
    return ModuleTeacher(g, g.cfg.z_dim, g.cfg.num_classes, f"module:{path}")


def build_teacher(spec: str, trust: bool = False, truncation_psi: float = 1.0) -> ModuleTeacher:
    kind, _, arg = spec.partition(":")
    if kind == "tiny":
        return tiny_teacher(int(arg or 0))
    if kind == "module":
        return load_module_checkpoint(Path(arg), truncation_psi)
    if kind in ("stylegan2-ada", "stylegan2-ada-nvidia"):
        from distylegan.stylegan2 import stylegan2_ada_teacher

        return stylegan2_ada_teacher(Path(arg), trust, truncation_psi, nvidia_code=kind.endswith("nvidia"))
    raise CalibError(f"unknown teacher spec {spec!r}; use tiny[:SEED], module:PATH.pt or stylegan2-ada:PATH.pkl")
