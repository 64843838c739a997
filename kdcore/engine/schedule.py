"""Optimiser and per-epoch learning rate.

The learning rate is a pure function of the epoch, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptimizerSettings:
    """SGD's settings."""

    lr: float
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0


@dataclass(frozen=True)
class ScheduleSettings:
    """``constant``, ``multistep`` (``milestones``, ``gamma``) or ``cosine`` (to ``min_lr``)."""

    name: str = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_lr: float = 0.0


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: OptimizerSettings) -> torch.optim.Optimizer:
    """SGD updating all tensors at once: one fused kernel on GPUs, the multi-tensor (foreach)
    implementation elsewhere (PyTorch's default picks neither on CPUs)."""
    parameters = list(parameters)
    on_gpu = bool(parameters) and parameters[0].is_cuda
    return torch.optim.SGD(
        parameters,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        **({"fused": True} if on_gpu else {"foreach": True}),
    )


def learning_rate(base_lr: float, schedule: ScheduleSettings, epoch: int, epochs: int) -> float:
    """The lr of ``epoch`` (counted from 0).

    multistep: ``base · gamma^(number of milestones ≤ epoch)``: with milestones 150/180/210 the
    151st epoch is the first at 0.1×, as in RepDistiller's 1-indexed rule. cosine: from
    ``base`` at epoch 0 towards ``min_lr`` at the end.
    """
    if schedule.name == "multistep":
        return base_lr * schedule.gamma ** sum(epoch >= m for m in schedule.milestones)
    if schedule.name == "cosine":
        return schedule.min_lr + (base_lr - schedule.min_lr) * (1 + math.cos(math.pi * epoch / epochs)) / 2
    return base_lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
