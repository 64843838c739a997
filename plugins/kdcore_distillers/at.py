"""Attention transfer (Zagoruyko & Komodakis, 2017), as in RepDistiller's CIFAR-100 benchmark
(p = 2, loss weight 1000, every stage output)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdcore.api import DistillerContext
from kdcore.nn import Batch, Distiller, Features
from kdcore_distillers import ATParams
from kdcore_distillers._common import paired_stage_shapes, pool_to_common_size


def attention_map(feature: Tensor, p: float) -> Tensor:
    """``a = v / ‖v‖₂`` with ``v = mean_c f_c^p`` (channel mean of the element-wise power)
    flattened over positions: shape (B, H·W)."""
    return F.normalize(feature.pow(p).mean(dim=1).flatten(1), dim=1)


class AT(Distiller):
    """``Σ_stages mean_{b,j} (a_s[b,j] − a_t[b,j])²`` over the stage outputs, with ``a`` the
    :func:`attention_map`; when the heights differ, the larger map is first adaptive-average-
    pooled to the smaller's size. Published CIFAR-100 loss weight: 1000 (p = 2)."""

    student_taps = ("stages",)
    teacher_taps = ("stages",)

    def __init__(self, params: ATParams, ctx: DistillerContext) -> None:
        super().__init__()
        paired_stage_shapes(ctx.student_shapes, ctx.teacher_shapes, "at")
        self.p = params.p

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        total = 0.0
        for s_map, t_map in zip(student["stages"], teacher["stages"], strict=True):
            s_map, t_map = pool_to_common_size(s_map, t_map.detach())
            total = (
                total + (attention_map(s_map, self.p) - attention_map(t_map, self.p)).pow(2).mean()
            )
        return {"at": total}
