"""Weight initialisations shared by the CIFAR model families."""

import math

from torch import nn


def kaiming_fan_out(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions; BatchNorm weight 1, bias 0 (the ResNets)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def normal_fan_out(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """Convolutions ~ N(0, 2/n) with n = k·k·out_channels and zero bias; BatchNorm 1/0; Linear
    bias 0 and, unless ``linear_std`` is None, weight ~ N(0, linear_std²) (VGG, WRN,
    MobileNetV2)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)
