"""Optimiser and per-epoch learning rate.

The learning rate is a pure function of the epoch, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from kdcore.recipe import OptimizerConfig, ScheduleConfig


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        list(parameters),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        foreach=True,  # one fused update for all tensors; PyTorch picks it on GPUs only by default
    )


def learning_rate(base_lr: float, schedule: ScheduleConfig, epoch: int, epochs: int) -> float:
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
