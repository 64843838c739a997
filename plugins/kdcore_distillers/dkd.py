"""Decoupled KD (Zhao et al., 2022), as in mdistiller's CIFAR-100 configs (α 1, β 8, T 4,
20-epoch linear warm-up, loss weight 1), optionally on standardised logits (Sun et al., CVPR
2024, "Logit Standardization in Knowledge Distillation")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.api import DistillerContext
from kdcore.nn import Batch, Distiller, Features
from kdcore_distillers import DKDParams
from kdcore_distillers.kd import standardize


def binary_log_probs(logits: Tensor, target: Tensor, temperature: float) -> Tensor:
    """(B, 2) log-probabilities ``[log p_y, log(1 − p_y)]`` of the target class and of all the
    others together, under ``softmax(z/T)``, computed with log-sum-exps for stability."""
    scaled = logits / temperature
    is_target = F.one_hot(target, scaled.shape[1]).bool()
    log_total = scaled.logsumexp(dim=1)
    log_target = scaled.gather(1, target[:, None]).squeeze(1) - log_total
    log_others = scaled.masked_fill(is_target, float("-inf")).logsumexp(dim=1) - log_total
    return torch.stack([log_target, log_others], dim=1)


def non_target_log_probs(logits: Tensor, target: Tensor, temperature: float) -> Tensor:
    """(B, K−1) ``log softmax(z/T)`` over the non-target classes only (mdistiller subtracts
    1000 from the target logit instead, which gives the same values)."""
    keep = ~F.one_hot(target, logits.shape[1]).bool()
    others = (logits / temperature)[keep].view(logits.shape[0], -1)
    return F.log_softmax(others, dim=1)


def kl_batchmean(log_p_teacher: Tensor, log_p_student: Tensor) -> Tensor:
    """``(1/B) Σ_b Σ_k p_t (log p_t − log p_s)``."""
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum() / log_p_teacher.shape[0]


class DKD(Distiller):
    """KD split into ``tckd = w·α·T²·KL(b_t ‖ b_s)``, the KL of the binary target-vs-rest
    distributions, and ``nckd = w·β·T²·KL(p̂_t ‖ p̂_s)``, the KL of the distributions over the
    non-target classes, each averaged over the batch; ``w = min((epoch + 1)/warmup_epochs, 1)``
    (mdistiller counts epochs from 1; kdcore's ``batch.epoch`` counts from 0). The target is the
    label; for samples the batch marks unlabeled it is the teacher's top class. Published
    CIFAR-100: α 1, T 4, warm-up 20, β 8 (2 or 6 for some pairs; see ``published.DKD_BETA``),
    loss weight 1, CE weight 1.

    With ``standardize``, both networks' logits are first replaced by their per-sample Z-scores
    (:func:`kdcore_distillers.kd.standardize`) and ``T`` defaults to 2, as in
    sunshangquan/logit-standardization-KD (``mdistiller/distillers/DKD.py``; its ``train.py``
    multiplies α and β by ``--kd-weight``, 9 by default, which is kdcore's recipe ``weight``:
    ``published.STANDARDIZED_WEIGHTS``, and per pair ``published.DKD_STANDARDIZED``)."""

    def __init__(self, params: DKDParams, ctx: DistillerContext) -> None:
        super().__init__()
        self.alpha = params.alpha
        self.beta = params.beta
        self.temperature = params.temperature
        self.warmup_epochs = params.warmup_epochs
        self.standardize = params.standardize

    def warmup_factor(self, epoch: int) -> float:
        """``min((epoch + 1)/warmup_epochs, 1)`` for a 0-based epoch; 1 without warm-up."""
        if self.warmup_epochs == 0:
            return 1.0
        return min((epoch + 1) / self.warmup_epochs, 1.0)

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        s_logits, t_logits = student["logits"], teacher["logits"].detach()
        target = batch.labels
        if batch.labeled is not None:
            target = torch.where(batch.labeled, target, t_logits.argmax(dim=1))
        if self.standardize:
            s_logits, t_logits = standardize(s_logits), standardize(t_logits)
        T = self.temperature
        scale = self.warmup_factor(batch.epoch) * T**2
        tckd = kl_batchmean(
            binary_log_probs(t_logits, target, T), binary_log_probs(s_logits, target, T)
        )
        nckd = kl_batchmean(
            non_target_log_probs(t_logits, target, T), non_target_log_probs(s_logits, target, T)
        )
        return {"tckd": scale * self.alpha * tckd, "nckd": scale * self.beta * nckd}
