"""ShuffleNet V1 (groups 3) and V2 (×1) for CIFAR, as in RepDistiller's ``ShuffleNetv1.py`` and
``ShuffleNetv2.py``: 1×1 stem with 24 channels, no max-pool, three stages.

``preact`` (an ``nn.Identity``) marks RepDistiller's pre-ReLU feature of a block: in V1 the
residual sum (or concatenation) before the final ReLU; in V2 the concatenation of the untouched
half with the branch output before its ReLU, taken before the channel shuffle.
"""

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor, nn

from kdcore.api import ArchitectureContext


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """[N, g·c, H, W] -> [N, c·g, H, W]: interleave the channels of the g groups."""
    n, channels, h, w = x.shape
    return x.view(n, groups, channels // groups, h, w).transpose(1, 2).reshape(n, channels, h, w)


class V1Bottleneck(nn.Module):
    """Grouped 1×1 conv, shuffle, depthwise 3×3, grouped 1×1 conv. Stride-2 blocks concatenate an
    average-pooled shortcut; the first block (24 input channels) uses an ungrouped first conv."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride, 1, groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        merged = torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut
        return F.relu(self.preact(merged))


class ShuffleNetV1(nn.Module):
    def __init__(self, out_planes: tuple[int, int, int], num_blocks: tuple[int, int, int],
                 groups: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        planes = 24
        stages = []
        for width, count in zip(out_planes, num_blocks):
            blocks = []
            for i in range(count):
                # The stride-2 first block concatenates its input, so its branch is narrower.
                branch = width - planes if i == 0 else width
                blocks.append(V1Bottleneck(planes, branch, 2 if i == 0 else 1, groups))
                planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


class V2BasicBlock(nn.Module):
    """Split the channels in halves; the second goes through 1×1, depthwise 3×3, 1×1 and ReLU;
    concatenate and shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        kept, processed = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(processed)))
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))
        # RepDistiller returns shuffle(cat(kept, relu(out))). Every block input in this network
        # is non-negative (it comes out of a ReLU), so relu(kept) = kept and one ReLU over the
        # concatenation gives the same output while keeping the pre-ReLU tensor on the path.
        return channel_shuffle(F.relu(self.preact(torch.cat([kept, out], 1))), 2)


class V2DownBlock(nn.Module):
    """Two stride-2 branches on the full input, concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 2, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, out_channels: tuple[int, int, int, int], num_blocks: tuple[int, int, int],
                 num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        channels = 24
        stages = []
        for width, count in zip(out_channels[:3], num_blocks):
            stages.append(nn.Sequential(V2DownBlock(channels, width),
                                        *(V2BasicBlock(width) for _ in range(count))))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(channels, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(self.avgpool(x).flatten(1))


def build_shufflenetv1(params: BaseModel, ctx: ArchitectureContext) -> ShuffleNetV1:
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, ctx.num_classes,
                        in_channels=ctx.input_shape[0])


def build_shufflenetv2(params: BaseModel, ctx: ArchitectureContext) -> ShuffleNetV2:
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), ctx.num_classes,
                        in_channels=ctx.input_shape[0])
