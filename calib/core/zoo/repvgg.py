"""RepVGG: 3x3, 1x1 and identity branches for training, fused into one 3x3 conv with bias for deploy."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from calib.core.zoo import register_model


def conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(cin, cout, k, stride, k // 2, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    return seq


def _fuse(kernel: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return kernel * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepVGGBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, deploy: bool = False):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride
        self.nonlinearity = nn.ReLU(inplace=True)
        if deploy:
            self.rbr_reparam = nn.Conv2d(cin, cout, 3, stride, 1, bias=True)
            return
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_dense = conv_bn(cin, cout, 3, stride)
        self.rbr_1x1 = conv_bn(cin, cout, 1, stride)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.rbr_reparam(x))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.nonlinearity(out)

    @torch.no_grad()
    def fused_kernel_bias(self) -> tuple[Tensor, Tensor]:
        k3, b3 = _fuse(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        k1, b1 = _fuse(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel, bias = k3 + nn.functional.pad(k1, [1, 1, 1, 1]), b3 + b1
        if self.rbr_identity is not None:
            eye = torch.zeros_like(k3)
            eye[torch.arange(self.cin), torch.arange(self.cin), 1, 1] = 1.0
            ki, bi = _fuse(eye, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        if hasattr(self, "rbr_reparam"):
            return
        kernel, bias = self.fused_kernel_bias()
        self.rbr_reparam = nn.Conv2d(self.cin, self.cout, 3, self.stride, 1, bias=True).to(kernel.device)
        self.rbr_reparam.weight.copy_(kernel)
        self.rbr_reparam.bias.copy_(bias)
        for name in ("rbr_dense", "rbr_1x1", "rbr_identity"):
            delattr(self, name)


class RepVGG(nn.Module):
    def __init__(self, blocks: tuple[int, ...], widths: tuple[float, ...], num_classes: int = 10,
                 deploy: bool = False):
        super().__init__()
        cin = min(64, int(64 * widths[0]))
        self.stage0 = RepVGGBlock(3, cin, 1, deploy)
        for i, (n, base, w) in enumerate(zip(blocks, (64, 128, 256, 512), widths), start=1):
            cout, stride = int(base * w), 1 if i == 1 else 2
            setattr(self, f"stage{i}", nn.Sequential(*[RepVGGBlock(cin if j == 0 else cout, cout,
                                                                   stride if j == 0 else 1, deploy)
                                                       for j in range(n)]))
            cin = cout
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stage0(x)
        for i in range(1, 5):
            x = getattr(self, f"stage{i}")(x)
        return self.gap(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.forward_features(x))


def reparameterize(model: nn.Module) -> nn.Module:
    """Fuse every RepVGG block in place into its deploy form; other models pass through unchanged."""
    for m in model.modules():
        if isinstance(m, RepVGGBlock):
            m.switch_to_deploy()
    return model


A_BLOCKS = (2, 4, 14, 1)


@register_model("repvgg", "ef08a50e", published_top1=94.39, madds_m=489.08)
def repvgg_a0(num_classes: int = 10, deploy: bool = False) -> RepVGG:
    return RepVGG(A_BLOCKS, (0.75, 0.75, 0.75, 2.5), num_classes, deploy)


@register_model("repvgg", "38d2431b", published_top1=94.89, madds_m=851.33)
def repvgg_a1(num_classes: int = 10, deploy: bool = False) -> RepVGG:
    return RepVGG(A_BLOCKS, (1.0, 1.0, 1.0, 2.5), num_classes, deploy)


@register_model("repvgg", "09488915", published_top1=94.98, madds_m=1850.10, study=True)
def repvgg_a2(num_classes: int = 10, deploy: bool = False) -> RepVGG:
    return RepVGG(A_BLOCKS, (1.5, 1.5, 1.5, 2.75), num_classes, deploy)
