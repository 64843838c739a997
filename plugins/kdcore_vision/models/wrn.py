"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016), as in RepDistiller's ``wrn.py``: depth
6n+4, pre-activation blocks BN-ReLU-conv3×3-BN-ReLU-conv3×3, widths 16/16k/32k/64k, no dropout.

Parameter names (``block1.layer.0.convShortcut``...) are RepDistiller's, so its checkpoints load.
"""

import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor, nn

from kdcore.api import ArchitectureContext

from ._init import normal_fan_out


class BasicBlock(nn.Module):
    """Pre-activation block; when the width changes, the 1×1 shortcut conv reads the activated
    input, otherwise the shortcut is the raw input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.convShortcut = None
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage (kept as a wrapper for RepDistiller's parameter names)."""

    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*(
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
            for i in range(blocks)
        ))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(blocks, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(blocks, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        # RepDistiller zeroes the fc bias but keeps PyTorch's default fc weight init.
        normal_fan_out(self, linear_std=None)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(self.avgpool(x).flatten(1))


def build_wrn(params: BaseModel, ctx: ArchitectureContext, *, depth: int,
              widen_factor: int) -> WideResNet:
    return WideResNet(depth, widen_factor, ctx.num_classes, in_channels=ctx.input_shape[0])
