"""Relational KD (Park et al., 2019) on the pooled feature, as in RepDistiller's CIFAR-100
benchmark (distance weight 25, angle weight 50, loss weight 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.api import DistillerContext
from kdcore.nn import Batch, Distiller, Features
from kdcore_distillers import RKDParams

EPS = 1e-12


def pairwise_distances(x: Tensor, eps: float = EPS) -> Tensor:
    """(B, B) Euclidean distances ``sqrt(max(‖x_i‖² + ‖x_j‖² − 2·x_i·x_j, eps))``, with a zero
    diagonal."""
    squared_norms = x.pow(2).sum(dim=1)
    squared = (squared_norms[:, None] + squared_norms[None, :] - 2.0 * x @ x.T).clamp(min=eps)
    off_diagonal = 1.0 - torch.eye(x.shape[0], device=x.device, dtype=x.dtype)
    return squared.sqrt() * off_diagonal


def normalised_distances(x: Tensor) -> Tensor:
    """:func:`pairwise_distances` divided by the mean of its positive entries."""
    distances = pairwise_distances(x)
    return distances / distances[distances > 0].mean()


def angles(x: Tensor) -> Tensor:
    """(B, B, B) cosines ``A[a, i, j] = cos(x_i − x_a, x_j − x_a)``; a zero difference counts as
    a zero vector (cosine 0)."""
    differences = F.normalize(x[None, :, :] - x[:, None, :], dim=2)
    return differences @ differences.transpose(1, 2)


class RKD(Distiller):
    """Two terms on the flattened pooled features, both smooth-L1 (β = 1, mean):
    ``distance = w_d · huber(ψ_D(s), ψ_D(t))`` over the B² :func:`normalised_distances`,
    ``angle = w_a · huber(ψ_A(s), ψ_A(t))`` over the B³ :func:`angles`. Published CIFAR-100:
    w_d = 25, w_a = 50, loss weight 1."""

    student_taps = ("pooled",)
    teacher_taps = ("pooled",)

    def __init__(self, params: RKDParams, ctx: DistillerContext) -> None:
        super().__init__()
        self.distance_weight = params.distance_weight
        self.angle_weight = params.angle_weight

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        s_flat = student["pooled"].flatten(1)
        t_flat = teacher["pooled"].detach().flatten(1)
        distance = F.smooth_l1_loss(normalised_distances(s_flat), normalised_distances(t_flat))
        angle = F.smooth_l1_loss(angles(s_flat), angles(t_flat))
        return {
            "distance": self.distance_weight * distance,
            "angle": self.angle_weight * angle,
        }
