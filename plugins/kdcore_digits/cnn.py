"""A small CNN family for 8×8 inputs.

``stem``: conv3×3(in→w)-BN-ReLU at 8×8; ``stage1``: ``depth`` × conv3×3-BN-ReLU (w) at 8×8;
max-pool; ``stage2`` (2w) at 4×4; max-pool; ``stage3`` (4w) at 2×2; global average pool;
``fc``. Convolutions have no bias (BatchNorm follows each). Taps (see ``kdcore_digits``):
``stem``, ``stages`` (the three stage outputs, after ReLU), ``preact_stages`` (the same before the
last ReLU of each stage), ``pooled`` (the input of ``fc``). Networks of different widths have the
same spatial sizes at every tap, so stage-wise distillers (at, sp, vid, fitnet) pair them.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdcore.api import ArchitectureContext


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


def _stage(in_channels: int, out_channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += _conv_bn_relu(in_channels, out_channels)
        in_channels = out_channels
    return nn.Sequential(*layers)


class DigitsCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 32, depth: int = 1):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
        self.stage1 = _stage(width, width, depth)
        self.pool1 = nn.MaxPool2d(2)
        self.stage2 = _stage(width, 2 * width, depth)
        self.pool2 = nn.MaxPool2d(2)
        self.stage3 = _stage(2 * width, 4 * width, depth)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.stage1(self.stem(x)))
        x = self.pool2(self.stage2(x))
        x = self.pool(self.stage3(x))
        return self.fc(x.flatten(1))


def build_digits_cnn(params, ctx: ArchitectureContext) -> DigitsCNN:
    return DigitsCNN(ctx.input_shape[0], ctx.num_classes, width=params.width, depth=params.depth)
