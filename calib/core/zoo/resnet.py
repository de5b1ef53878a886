"""CIFAR ResNet (3 stages of BasicBlocks, 16/32/64 channels): ResNet-20/32/44/56 have 3/5/7/9 blocks a stage."""

from torch import Tensor, nn

from calib.core.zoo import register_model


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class CifarResNet(nn.Module):
    def __init__(self, blocks: tuple[int, int, int], num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(3, width), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        cin, stages = width, []
        for i, n in enumerate(blocks):
            cout = width * 2**i
            stages.append(nn.Sequential(*[BasicBlock(cin if j == 0 else cout, cout, 2 if (i and not j) else 1)
                                          for j in range(n)]))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.avgpool(self.layer3(self.layer2(self.layer1(x)))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


def _resnet(blocks_per_stage: int, num_classes: int) -> CifarResNet:
    return CifarResNet((blocks_per_stage,) * 3, num_classes)


@register_model("resnet", "4118986f", published_top1=92.60, madds_m=40.81, study=True)
def resnet20(num_classes: int = 10) -> CifarResNet:
    return _resnet(3, num_classes)


@register_model("resnet", "ef93fc4d", published_top1=93.53, madds_m=69.12)
def resnet32(num_classes: int = 10) -> CifarResNet:
    return _resnet(5, num_classes)


@register_model("resnet", "2a3cabcb", published_top1=94.01, madds_m=97.44)
def resnet44(num_classes: int = 10) -> CifarResNet:
    return _resnet(7, num_classes)


@register_model("resnet", "187c023a", published_top1=94.37, madds_m=125.75)
def resnet56(num_classes: int = 10) -> CifarResNet:
    return _resnet(9, num_classes)
