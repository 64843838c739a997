"""Variational information distillation (Ahn et al., 2019), as in RepDistiller's CIFAR-100
benchmark (one regressor per stage, init_pred_var 5, eps 1e-5, loss weight 1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.api import DistillerContext
from kdcore.nn import Batch, Distiller, Features
from kdcore_distillers import VIDParams
from kdcore_distillers._common import paired_stage_shapes, pool_to_common_size


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A bias-free 1×1 convolution."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


class VIDStage(nn.Module):
    """Gaussian model of one teacher map given the student's: mean ``μ = r(f_s)`` with
    ``r`` = 1×1 conv (C_s→C_t) – ReLU – 1×1 conv – ReLU – 1×1 conv, no biases; per-channel
    variance ``σ²_c = softplus(α_c) + eps``, with α initialised so that ``σ² = init_pred_var``."""

    def __init__(
        self, student_channels: int, teacher_channels: int, init_pred_var: float, eps: float
    ):
        super().__init__()
        self.regressor = nn.Sequential(
            conv1x1(student_channels, teacher_channels),
            nn.ReLU(),
            conv1x1(teacher_channels, teacher_channels),
            nn.ReLU(),
            conv1x1(teacher_channels, teacher_channels),
        )
        initial = math.log(math.expm1(init_pred_var - eps))
        self.log_scale = nn.Parameter(torch.full((teacher_channels,), initial))
        self.eps = eps

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """``mean_{b,c,h,w} ½ · ((μ − f_t)² / σ²_c + log σ²_c)``, after pooling the larger map."""
        student, teacher = pool_to_common_size(student, teacher)
        mean = self.regressor(student)
        variance = (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)
        return (0.5 * ((mean - teacher).pow(2) / variance + variance.log())).mean()


class VID(Distiller):
    """``Σ_stages`` of each :class:`VIDStage`'s negative log-likelihood of the teacher's stage
    output given the student's (the regressors and variances are trained with the student).
    Published CIFAR-100 loss weight: 1."""

    student_taps = ("stages",)
    teacher_taps = ("stages",)

    def __init__(self, params: VIDParams, ctx: DistillerContext) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            VIDStage(s_shape[0], t_shape[0], params.init_pred_var, params.eps)
            for s_shape, t_shape in paired_stage_shapes(
                ctx.student_shapes, ctx.teacher_shapes, "vid"
            )
        )

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        total = 0.0
        for stage, s_map, t_map in zip(
            self.stages, student["stages"], teacher["stages"], strict=True
        ):
            total = total + stage(s_map, t_map.detach())
        return {"vid": total}
