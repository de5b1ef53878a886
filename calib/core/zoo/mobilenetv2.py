"""MobileNetV2 for CIFAR: the ImageNet network with the first conv and the second stage at stride 1."""

from torch import Tensor, nn

from calib.core.zoo import register_model

# t (expansion), c (channels), n (repeats), s (stride of the first block)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [conv_bn_relu(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, width_mult: float = 1.0, num_classes: int = 10):
        super().__init__()
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        feats: list[nn.Module] = [conv_bn_relu(3, cin, stride=1)]
        for t, c, n, s in SETTINGS:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(conv_bn_relu(cin, last, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        return nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))


@register_model("mobilenetv2", "ca14ced9", published_top1=92.88, madds_m=27.97)
def mobilenetv2_x0_5(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(0.5, num_classes)


@register_model("mobilenetv2", "a53c314e", published_top1=93.72, madds_m=59.31)
def mobilenetv2_x0_75(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(0.75, num_classes)


@register_model("mobilenetv2", "fe6a5b48", published_top1=93.79, madds_m=87.98)
def mobilenetv2_x1_0(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(1.0, num_classes)


@register_model("mobilenetv2", "3bbbd6e2", published_top1=94.22, madds_m=170.07, study=True)
def mobilenetv2_x1_4(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(1.4, num_classes)
