"""MobileNetV2 for CIFAR as in RepDistiller's ``mobilenetv2.py`` (from Route Constrained
Optimization): ``mobile_half`` is width 0.5, expansion 6.

Unlike torchvision's, the stem has stride 2 on 32×32 inputs, blocks with expansion 1 keep their
1×1 expansion conv, widths are ``int(c·width)`` without rounding to multiples of 8 (so width 0.1
gives stages of 2/3/9/32 channels) and the last conv keeps 1280 channels when width ≤ 1.
"""

from pydantic import BaseModel
from torch import Tensor, nn

from kdcore.api import ArchitectureContext

from ._init import normal_fan_out

# (expansion or None for the network's expansion, channels, blocks, first stride)
SETTINGS = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
STAGE_BLOCKS = (1, 2, 4, 6)
"""Indices of the block groups whose outputs are RepDistiller's stage features f1..f4."""


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, expansion: int, width: float, num_classes: int, in_channels: int = 3):
        super().__init__()
        channels = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in SETTINGS:
            out_channels = int(c * width)
            group = []
            for i in range(n):
                group.append(InvertedResidual(channels, out_channels, s if i == 0 else 1,
                                              expansion if t is None else t))
                channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        last_channels = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last_channels, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        normal_fan_out(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        x = self.avgpool(self.conv2(x))
        return self.classifier(x.flatten(1))


def build_mobilenetv2(params: BaseModel, ctx: ArchitectureContext) -> MobileNetV2:
    """``params`` has ``width`` and ``expansion`` (see :class:`kdcore_vision.params.MobileNetV2Params`)."""
    return MobileNetV2(params.expansion, params.width, ctx.num_classes,
                       in_channels=ctx.input_shape[0])
