"""The classifier zoo: one module per family, one `@register_model` per model, as timm does it."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from calibration.errors import CalibError

_RELEASES = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    build: Callable[..., nn.Module]
    weights_url: str | None = None  # official checkpoint; None for test-only models
    hash_prefix: str | None = None
    tiny: bool = False  # registered only to keep test sweeps fast

    @property
    def weights_file(self) -> str | None:
        return f"cifar10_{self.name}-{self.hash_prefix}.pt" if self.hash_prefix else None


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(family: str | None = None, hash_prefix: str | None = None, test_only: bool = False):
    """Register `fn` under its own name; `family`/`hash_prefix` name its official release asset."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        url = f"{_RELEASES}/{family}/cifar10_{name}-{hash_prefix}.pt" if family else None
        _REGISTRY[name] = ModelInfo(name, fn, url, hash_prefix, test_only)
        return fn

    return wrap


def list_models(pattern: str = "*", include_tiny: bool = False) -> list[str]:
    return sorted(n for n, m in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (include_tiny or not m.tiny))


def model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models(include_tiny=True))
        raise CalibError(f"unknown model {name!r}; known models: {known}") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model with random weights (see `calibration.weights` to load trained ones)."""
    return model_info(name).build(**kwargs)


from calibration.zoo import mobilenetv2, repvgg, resnet, shufflenetv2, tiny, vgg  # noqa: E402,F401
