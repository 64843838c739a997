"""DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher"), as in
the authors' classification code (hunto/image_classification_sota,
``lib/models/losses/dist_kd.py``) and CIFAR-100 config (``configs/strategies/distill/
dist_cifar.yaml``: ``kd: dist_t4``, i.e. β 1, γ 1, τ 4; ``kd_loss_weight: 2``;
``ori_loss_weight: 1``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdcore.api import DistillerContext
from kdcore.nn import Batch, Distiller, Features
from kdcore_distillers import DISTParams

EPS = 1e-8
"""Added to the product of the norms in each correlation (the authors' value)."""


def mean_pearson(a: Tensor, b: Tensor, dim: int, eps: float) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim``, averaged over the other dimension
    of these 2-D tensors: ``r = Σ (a − ā)(b − b̄) / (‖a − ā‖·‖b − b̄‖ + eps)``. The ``eps`` in
    the denominator (not under a square root) is the authors' (1e-8); it keeps a constant row
    or column (a batch of one, for the intra-class relation) at ``r = 0``."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    covariance = (a * b).sum(dim=dim)
    return (covariance / (a.norm(dim=dim) * b.norm(dim=dim) + eps)).mean()


class DIST(Distiller):
    """With ``P = softmax(z/τ)`` of each network, a (B, K) matrix:

    - ``inter = β·τ²·(1 − (1/B) Σ_b r(P_s[b, :], P_t[b, :]))``: each sample's relation among
      the classes (the authors' ``inter_class_relation``);
    - ``intra = γ·τ²·(1 − (1/K) Σ_k r(P_s[:, k], P_t[:, k]))``: each class's relation among the
      batch's samples (``intra_class_relation``),

    ``r`` the Pearson correlation with ``eps`` 1e-8 added to the product of the norms. Published
    CIFAR-100: β 1, γ 1, τ 4, loss weight 2 (``kd_loss_weight``), CE weight 1.

    Departures: none in the loss. The intra-class term correlates over the batch a process
    holds: under torchrun each process uses its own share, as the authors' code does (it does
    not gather either), so results depend on the per-process batch size."""

    def __init__(self, params: DISTParams, ctx: DistillerContext) -> None:
        super().__init__()
        self.beta = params.beta
        self.gamma = params.gamma
        self.temperature = params.temperature

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        tau = self.temperature
        p_s = F.softmax(student["logits"] / tau, dim=1)
        p_t = F.softmax(teacher["logits"].detach() / tau, dim=1)
        inter = 1 - mean_pearson(p_s, p_t, dim=1, eps=EPS)
        intra = 1 - mean_pearson(p_s, p_t, dim=0, eps=EPS)
        scale = tau**2
        return {"inter": self.beta * scale * inter, "intra": self.gamma * scale * intra}
