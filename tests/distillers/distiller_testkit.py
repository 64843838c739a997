"""Helpers of kdcore's own distiller tests on top of the plugin authors' test kit
(:mod:`kdcore.testing`)."""

from __future__ import annotations

import torch
from torch import nn

from kdcore.api import DistillerContext
from kdcore.nn import Distiller
from kdcore.testing import build_component, make_batch, make_distiller_context, train_losses


def build(name: str, ctx: DistillerContext, **params: object) -> Distiller:
    """Build a distiller through its registered spec, as the kernel does."""
    return build_component("distiller", name, ctx, **params)


def pooled_student_losses(name: str, *, lr: float, **params: object) -> list[float]:
    """:func:`train_losses` for a method on the ``pooled`` feature: a linear student (10 → 6,
    ReLU) against a fixed random linear teacher (10 → 12, ReLU) on 16 inputs."""
    torch.manual_seed(2)
    inputs = torch.randn(16, 10)
    with torch.no_grad():
        teacher = {"pooled": torch.relu(nn.Linear(10, 12)(inputs))}
    distiller = build(name, make_distiller_context({"pooled": (6,)}, {"pooled": (12,)}), **params)
    return train_losses(distiller, nn.Linear(10, 6), lambda net: {"pooled": torch.relu(net(inputs))},
                        teacher, make_batch(16), lr=lr)
