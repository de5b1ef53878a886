"""Tiny models registered only so that registry-wide tests stay fast on two CPU cores."""

from torch import Tensor, nn

from calib.core.zoo import register_model
from calib.core.zoo.repvgg import RepVGG


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


@register_model(test_only=True)
def tiny_cnn(num_classes: int = 10) -> TinyCNN:
    return TinyCNN(num_classes)


@register_model(test_only=True)
def tiny_repvgg(num_classes: int = 10, deploy: bool = False) -> RepVGG:
    return RepVGG((1, 1, 1, 1), (0.125, 0.125, 0.125, 0.125), num_classes, deploy)
