"""Helpers of kdcore's own distiller tests on top of the plugin authors' test kit
(:mod:`kdcore.testing`)."""

from __future__ import annotations

import torch
from torch import nn

from kdcore.api import DistillerContext
from kdcore.nn import Batch, Distiller, Features
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


def logit_student_losses(distiller: Distiller, *, lr: float, num_classes: int = 5, teacher_labels: bool = False,
                         epoch: int = 100, seed: int = 4) -> tuple[list[float], Features, Batch]:
    """:func:`train_losses` for a method on the logits: a linear student (8 → K) against a fixed
    random linear teacher whose logits are scaled by 3, on 32 inputs; with ``teacher_labels`` the
    labels are the teacher's classes. Returns the losses, the teacher's features and the batch."""
    torch.manual_seed(seed)
    inputs = torch.randn(32, 8)
    with torch.no_grad():
        teacher = {"logits": 3 * nn.Linear(8, num_classes)(inputs)}
    labels = teacher["logits"].argmax(dim=1) if teacher_labels else None
    batch = make_batch(32, num_classes=num_classes, labels=labels, epoch=epoch)
    losses = train_losses(distiller, nn.Linear(8, num_classes), lambda net: {"logits": net(inputs)}, teacher, batch,
                          lr=lr)
    return losses, teacher, batch
