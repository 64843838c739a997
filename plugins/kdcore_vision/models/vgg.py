"""CIFAR VGGs with BatchNorm, as in RepDistiller's ``vgg.py`` (``vgg*_bn``): five conv blocks,
no fully connected layers but the classifier.

Each block is conv3×3 (with bias)-BN-ReLU repeated, without its last ReLU, which is a separate
``relu<i>`` module so that both the pre-ReLU block output and the activated one can be tapped.
Max-pools follow blocks 0, 1 and 2; ``pool3`` (after block 3) exists only for 64×64 inputs, as
in RepDistiller, so at 32×32 blocks 3 and 4 both run at 4×4.
"""

from pydantic import BaseModel
from torch import Tensor, nn

from kdcore.api import ArchitectureContext

from ._init import normal_fan_out

CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _block(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, config: list[list[int]], num_classes: int, in_channels: int = 3,
                 pool_after_block3: bool = False):
        super().__init__()
        previous = [in_channels] + [widths[-1] for widths in config[:-1]]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _block(widths, channels) for widths, channels in zip(config, previous)
        )
        self.relu0, self.relu1, self.relu2, self.relu3, self.relu4 = (nn.ReLU() for _ in range(5))
        self.pool0, self.pool1, self.pool2 = (nn.MaxPool2d(2, 2) for _ in range(3))
        self.pool3 = nn.MaxPool2d(2, 2) if pool_after_block3 else nn.Identity()
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(config[-1][-1], num_classes)
        normal_fan_out(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.pool3(self.relu3(self.block3(x)))
        x = self.pool4(self.relu4(self.block4(x)))
        return self.classifier(x.flatten(1))


def build_vgg(params: BaseModel, ctx: ArchitectureContext, *, config: str) -> VGG:
    return VGG(CONFIGS[config], ctx.num_classes, in_channels=ctx.input_shape[0],
               pool_after_block3=ctx.input_shape[1] == 64)
