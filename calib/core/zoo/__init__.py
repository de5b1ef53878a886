"""The classifier zoo: one module per family, one `@register_model` per model, as timm does it.

Every CIFAR-10 model of the pytorch-cifar-models release is registered with its release family, the hash
prefix of its official file, its published top-1 and MAdds; the study's five models are marked `study`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from calib.core.errors import CalibError

RELEASES = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    build: Callable[..., nn.Module]
    family: str | None = None  # release folder of the official checkpoint; None for test-only models
    hash_prefix: str | None = None
    published_top1: float | None = None  # percent, as published with the release
    madds_m: float | None = None  # multiply-adds per 32x32 image, millions, as published
    study: bool = False  # one of the study's default five
    tiny: bool = False  # registered only to keep test sweeps fast

    @property
    def weights_file(self) -> str | None:
        return f"cifar10_{self.name}-{self.hash_prefix}.pt" if self.hash_prefix else None

    @property
    def weights_url(self) -> str | None:
        return f"{RELEASES}/{self.family}/{self.weights_file}" if self.family and self.hash_prefix else None


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(family: str | None = None, hash_prefix: str | None = None, *, published_top1: float | None = None,
                   madds_m: float | None = None, study: bool = False, test_only: bool = False):
    """Register `fn` under its own name; `family`/`hash_prefix` name its official release asset."""
    if (family is None) != (hash_prefix is None):
        raise ValueError("family and hash_prefix go together")

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name} is registered twice")
        _REGISTRY[name] = ModelInfo(name, fn, family, hash_prefix, published_top1, madds_m, study, test_only)
        return fn

    return wrap


def list_models(pattern: str = "*", include_tiny: bool = False, study: bool = False) -> list[str]:
    """Registered names matching `pattern`; `study=True` keeps the study's default five."""
    return sorted(n for n, m in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (include_tiny or not m.tiny)
                  and (m.study or not study))


def study_models() -> list[str]:
    """The five models of the reference study, its default grid."""
    return list_models(study=True)


def model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models(include_tiny=True))
        raise CalibError(f"unknown model {name!r}; known models: {known}") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model with random weights (see `calib.core.weights` to load trained ones)."""
    return model_info(name).build(**kwargs)


def model_complexity(name: str) -> tuple[int, int]:
    """(parameters, multiply-adds per 32x32 image) of a registered model, counted by torch's FlopCounterMode on
    the meta device, so even RepVGG-A2 costs neither memory nor initialization time."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = create_model(name).eval()
        x = torch.zeros(1, 3, 32, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


from calib.core.zoo import mobilenetv2, repvgg, resnet, shufflenetv2, tiny, vgg  # noqa: E402,F401
