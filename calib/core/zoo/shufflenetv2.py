"""ShuffleNetV2 for CIFAR: stride-1 stem, no max-pool."""

import torch
from torch import Tensor, nn

from calib.core.zoo import register_model


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    # -1 for the batch: a traced batch size would be frozen into the exported reshape
    _, c, h, w = x.shape
    return x.view(-1, groups, c // groups, h, w).transpose(1, 2).reshape(-1, c, h, w)


def depthwise(c: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c)]


def pointwise(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(*depthwise(cin, stride), *pointwise(cin, half))
        self.branch2 = nn.Sequential(*pointwise(cin if stride > 1 else half, half),
                                     *depthwise(half, stride), *pointwise(half, half))

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, repeats: tuple[int, ...], channels: tuple[int, ...], num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        cin = channels[0]
        for i, (n, cout) in enumerate(zip(repeats, channels[1:4]), start=2):
            setattr(self, f"stage{i}", nn.Sequential(*[ShuffleUnit(cin if j == 0 else cout, cout, 2 if j == 0 else 1)
                                                       for j in range(n)]))
            cin = cout
        self.conv5 = nn.Sequential(*pointwise(cin, channels[-1]))
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stage4(self.stage3(self.stage2(self.conv1(x))))
        return self.conv5(x).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


REPEATS = (4, 8, 4)


@register_model("shufflenetv2", "1308b4e9", published_top1=90.13, madds_m=10.90)
def shufflenetv2_x0_5(num_classes: int = 10) -> ShuffleNetV2:
    return ShuffleNetV2(REPEATS, (24, 48, 96, 192, 1024), num_classes)


@register_model("shufflenetv2", "98807be3", published_top1=92.98, madds_m=45.00)
def shufflenetv2_x1_0(num_classes: int = 10) -> ShuffleNetV2:
    return ShuffleNetV2(REPEATS, (24, 116, 232, 464, 1024), num_classes)


@register_model("shufflenetv2", "296694dd", published_top1=93.55, madds_m=94.26)
def shufflenetv2_x1_5(num_classes: int = 10) -> ShuffleNetV2:
    return ShuffleNetV2(REPEATS, (24, 176, 352, 704, 1024), num_classes)


@register_model("shufflenetv2", "ec31611c", published_top1=93.81, madds_m=187.81, study=True)
def shufflenetv2_x2_0(num_classes: int = 10) -> ShuffleNetV2:
    return ShuffleNetV2(REPEATS, (24, 244, 488, 976, 2048), num_classes)
