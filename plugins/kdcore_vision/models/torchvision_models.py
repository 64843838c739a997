"""torchvision's ImageNet networks, built without pretrained weights (no download offline).

The architectures and parameter names are torchvision's. The one change is that their ReLUs are
switched to out-of-place: a torchvision block adds the shortcut and applies its ReLU in place,
which would overwrite a recorded pre-ReLU tensor (the ``preact_stages`` tap reads the input of
the last block's ReLU). The outputs are unchanged.
"""

import torchvision
from pydantic import BaseModel
from torch import nn

from kdcore.api import ArchitectureContext
from kdcore.errors import KdcoreError


def build_torchvision(params: BaseModel, ctx: ArchitectureContext, *, name: str) -> nn.Module:
    if ctx.input_shape[0] != 3:
        raise KdcoreError(
            f"torchvision {name} expects 3-channel images, the dataset gives input shape "
            f"{tuple(ctx.input_shape)}"
        )
    model = getattr(torchvision.models, name)(weights=None, num_classes=ctx.num_classes)
    for module in model.modules():
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            module.inplace = False
    return model
