"""VGG with BatchNorm (configs A, B, D, E) for 32x32 inputs: the 512-d feature after five pools feeds the MLP."""

from torch import Tensor, nn

from calib.core.zoo import register_model

CFGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
CFG_D = CFGS["D"]


class VGG(nn.Module):
    def __init__(self, cfg: tuple = CFG_D, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, num_classes),
        )

    def forward_features(self, x: Tensor) -> Tensor:
        return self.classifier[:-1](self.features(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("vgg", "eaeebf42", published_top1=92.79, madds_m=153.29)
def vgg11_bn(num_classes: int = 10) -> VGG:
    return VGG(CFGS["A"], num_classes)


@register_model("vgg", "c01e4a43", published_top1=94.00, madds_m=228.79)
def vgg13_bn(num_classes: int = 10) -> VGG:
    return VGG(CFGS["B"], num_classes)


@register_model("vgg", "6ee7ea24", published_top1=94.16, madds_m=313.73, study=True)
def vgg16_bn(num_classes: int = 10) -> VGG:
    return VGG(CFGS["D"], num_classes)


@register_model("vgg", "57191229", published_top1=93.91, madds_m=398.66)
def vgg19_bn(num_classes: int = 10) -> VGG:
    return VGG(CFGS["E"], num_classes)
