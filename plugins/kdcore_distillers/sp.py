"""Similarity-preserving KD (Tung & Mori, 2019) on the last stage map, as in RepDistiller's
CIFAR-100 benchmark (loss weight 3000)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdcore.api import DistillerContext, NoParams
from kdcore.nn import Batch, Distiller, Features
from kdcore_distillers._common import stage_shapes


def similarity_matrix(feature: Tensor) -> Tensor:
    """``G = normalize_rows(F·Fᵀ)``: the (B, B) Gram matrix of the flattened per-sample
    features, each row divided by its L2 norm."""
    flat = feature.flatten(1)
    return F.normalize(flat @ flat.T, dim=1)


class SP(Distiller):
    """``‖G_t − G_s‖²_F / B²`` with ``G`` the :func:`similarity_matrix` of the last stage output
    (REP ``feat[-2]``); channels and sizes of the two maps may differ. Published CIFAR-100 loss
    weight: 3000."""

    student_taps = ("stages",)
    teacher_taps = ("stages",)

    def __init__(self, params: NoParams, ctx: DistillerContext) -> None:
        super().__init__()
        stage_shapes(ctx.student_shapes, "student", "sp")
        stage_shapes(ctx.teacher_shapes, "teacher", "sp")

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        g_student = similarity_matrix(student["stages"][-1])
        g_teacher = similarity_matrix(teacher["stages"][-1].detach())
        size = g_student.shape[0]
        return {"sp": (g_teacher - g_student).pow(2).sum() / size**2}
