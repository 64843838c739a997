"""Correlation congruence (Peng et al., 2019) in RepDistiller's simplified form (loss weight
0.02): trainable linear embeddings of both pooled features, no Gaussian kernel."""

from __future__ import annotations

from torch import Tensor, nn

from kdcore.api import DistillerContext
from kdcore.nn import Batch, Distiller, Features
from kdcore_distillers import CCParams
from kdcore_distillers._common import flat_dim


class CC(Distiller):
    """``mean_{i<B−1} Σ_d δ[i,d] · δ[i+1,d]`` with ``δ = |W_s f_s + b_s − (W_t f_t + b_t)|``:
    both pooled features go through their own trainable linear embedding (``embed_dim``, 128
    as published), and consecutive samples of the batch are paired. Published CIFAR-100 loss
    weight: 0.02."""

    student_taps = ("pooled",)
    teacher_taps = ("pooled",)

    def __init__(self, params: CCParams, ctx: DistillerContext) -> None:
        super().__init__()
        self.embed_student = nn.Linear(flat_dim(ctx.student_shapes["pooled"]), params.embed_dim)
        self.embed_teacher = nn.Linear(flat_dim(ctx.teacher_shapes["pooled"]), params.embed_dim)

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        e_student = self.embed_student(student["pooled"].flatten(1))
        e_teacher = self.embed_teacher(teacher["pooled"].detach().flatten(1))
        delta = (e_student - e_teacher).abs()
        return {"cc": (delta[:-1] * delta[1:]).sum(dim=1).mean()}
