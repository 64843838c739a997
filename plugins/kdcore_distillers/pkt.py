"""Probabilistic knowledge transfer (Passalis & Tefas, 2018) on the pooled feature, as in
RepDistiller's CIFAR-100 benchmark (loss weight 30000)."""

from __future__ import annotations

from torch import Tensor

from kdcore.api import DistillerContext, NoParams
from kdcore.nn import Batch, Distiller, Features

EPS = 1e-7


def similarity_distribution(features: Tensor, eps: float = EPS) -> Tensor:
    """Row-stochastic (B, B) matrix ``P[i, j] = k(i, j) / Σ_j k(i, j)`` with the cosine kernel
    ``k(i, j) = (cos(x_i, x_j) + 1) / 2`` and ``x_i / (‖x_i‖ + eps)`` as the normalisation."""
    flat = features.flatten(1)
    unit = flat / (flat.norm(dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.T + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


class PKT(Distiller):
    """``mean_{i,j} P_t[i,j] · log((P_t[i,j] + eps) / (P_s[i,j] + eps))`` with ``P`` the
    :func:`similarity_distribution` of the pooled features and eps = 1e-7 (a KL divergence
    averaged over all B² entries). Published CIFAR-100 loss weight: 30000."""

    student_taps = ("pooled",)
    teacher_taps = ("pooled",)

    def __init__(self, params: NoParams, ctx: DistillerContext) -> None:
        super().__init__()

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        p_student = similarity_distribution(student["pooled"])
        p_teacher = similarity_distribution(teacher["pooled"].detach())
        return {"pkt": (p_teacher * ((p_teacher + EPS) / (p_student + EPS)).log()).mean()}
