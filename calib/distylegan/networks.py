"""DiStyleGAN generator and discriminator, each built from a frozen config stored in its checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from calib.core.errors import CalibError
from calib.core.runs import atomic_path


@dataclass(frozen=True)
class GeneratorConfig:
    z_dim: int = 512
    num_classes: int = 10
    z_proj: int = 128
    widths: tuple[int, ...] = (256, 128, 64, 32)  # 4x4 base, then one upsampling block per entry after it
    base_size: int = 4


@dataclass(frozen=True)
class DiscriminatorConfig:
    num_classes: int = 10
    widths: tuple[int, ...] = (128, 128, 256, 512)
    hidden: int = 256
    img_size: int = 32
    # The published head concatenates the one-hot label before a linear layer, so the label only adds a
    # per-class bias to the logit: it cannot judge whether an image fits its class. With a teacher, the
    # pixel term supplies that; without one, a projection term (class embedding . features) must.
    projection: bool = False


CONFIGS = {
    "cifar10": (GeneratorConfig(), DiscriminatorConfig()),
    "tiny": (GeneratorConfig(z_dim=16, z_proj=8, widths=(16, 8, 8, 8)),
             DiscriminatorConfig(widths=(8, 8, 16, 16), hidden=16)),
}


def glu_linear(cin: int, cout: int) -> nn.Sequential:
    """Linear to 2*cout, BatchNorm, GLU: the gated projection used throughout the generator."""
    return nn.Sequential(nn.Linear(cin, 2 * cout), nn.BatchNorm1d(2 * cout), nn.GLU(dim=1))


def up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, 2 * cout, 3, 1, 1),
                         nn.BatchNorm2d(2 * cout), nn.GLU(dim=1))


class Generator(nn.Module):
    def __init__(self, cfg: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.cfg = cfg
        w0 = cfg.widths[0]
        self.z_proj = glu_linear(cfg.z_dim, cfg.z_proj)
        self.fc = glu_linear(cfg.z_proj + cfg.num_classes, w0 * cfg.base_size**2)
        self.blocks = nn.Sequential(*[up_block(a, b) for a, b in zip(cfg.widths[:-1], cfg.widths[1:])])
        self.to_rgb = nn.Sequential(nn.Conv2d(cfg.widths[-1], 3, 3, 1, 1), nn.Tanh())

    def forward(self, z: Tensor, class_ids: Tensor) -> Tensor:
        onehot = nn.functional.one_hot(class_ids, self.cfg.num_classes).to(z.dtype)
        h = self.fc(torch.cat([self.z_proj(z), onehot], dim=1))
        h = h.view(len(z), self.cfg.widths[0], self.cfg.base_size, self.cfg.base_size)
        return self.to_rgb(self.blocks(h))


class Discriminator(nn.Module):
    """Returns (logit, [four feature maps]); the feature maps feed the feature-matching loss."""

    def __init__(self, cfg: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.cfg = cfg
        chans = (3, *cfg.widths)
        self.convs = nn.ModuleList(spectral_norm(nn.Conv2d(a, b, 4, 2, 1)) for a, b in zip(chans[:-1], chans[1:]))
        final = cfg.img_size // 2 ** len(cfg.widths)
        self.fc = spectral_norm(nn.Linear(cfg.widths[-1] * final * final, cfg.hidden))
        self.out = nn.Linear(cfg.hidden // 2 + cfg.num_classes, 1)
        if cfg.projection:
            self.embed = spectral_norm(nn.Embedding(cfg.num_classes, cfg.hidden // 2))

    def forward(self, x: Tensor, class_ids: Tensor) -> tuple[Tensor, list[Tensor]]:
        feats = []
        for conv in self.convs:
            x = nn.functional.leaky_relu(conv(x), 0.2)
            feats.append(x)
        h = nn.functional.glu(self.fc(x.flatten(1)), dim=1)
        onehot = nn.functional.one_hot(class_ids, self.cfg.num_classes).to(h.dtype)
        logit = self.out(torch.cat([h, onehot], dim=1)).squeeze(1)
        if self.cfg.projection:
            logit = logit + (self.embed(class_ids) * h).sum(1)
        return logit, feats


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_generator(g: Generator, path: Path, half: bool = False, extra: dict | None = None) -> Path:
    """A self-describing generator checkpoint: its config travels with its weights."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in g.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"kind": "distylegan.Generator", "config": asdict(g.cfg), "state_dict": sd, **(extra or {})}, tmp)
    return path


def load_generator(path: Path, device: str | torch.device = "cpu") -> Generator:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = GeneratorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()})
        state = ckpt["state_dict"] if "state_dict" in ckpt else ckpt["generator"]
    except FileNotFoundError:
        raise CalibError(f"generator checkpoint {path} does not exist") from None
    except Exception as e:
        raise CalibError(f"{path} is not a DiStyleGAN generator checkpoint ({type(e).__name__}: {e})") from None
    g = Generator(cfg)
    g.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return g.to(device).eval()
