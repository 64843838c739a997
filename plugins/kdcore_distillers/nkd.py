"""Normalized KD (Yang et al., ICCV 2023, "From Knowledge Distillation to Self-Knowledge
Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels"), as in the
authors' loss (yzd-v/cls_KD, ``mmcls/models/dis_losses/nkd.py``) and their CIFAR-100 config
(``configs/distillers/cifar100/res34_distill_res18_cifar.py``: temp 3, gamma 3.5; the loss is
added to the student's cross-entropy with weight 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.api import DistillerContext
from kdcore.nn import Batch, Distiller, Features
from kdcore_distillers import NKDParams
from kdcore_distillers.dkd import non_target_log_probs


class NKD(Distiller):
    """Two terms, each averaged over the batch, with ``y`` the target class:

    - ``target = −(1/B) Σ_b p_t[y] · log p_s[y]``, ``p = softmax(z)`` at temperature 1, the
      teacher's target probability a constant weight;
    - ``non_target = −γ·T²·(1/B) Σ_b Σ_{k≠y} q_t[k] · log q_s[k]``, ``q = softmax`` over the
      non-target logits only, divided by ``T``: both networks' non-target probabilities
      renormalised to sum to 1 (the "normalised" loss).

    These are cross-entropies, not KL divergences: they do not vanish when the student equals
    the teacher (they then equal the teacher's weighted entropies). Published CIFAR-100: T 3,
    γ 3.5, loss weight 1, CE weight 1 (ImageNet: T 1, γ 1.5).

    Departure: samples the batch marks unlabeled take the teacher's top class as ``y`` (the
    authors' code always has labels; kdcore's DKD does the same). The authors take the argmax
    of soft (mixup) labels; kdcore's labels are class indices."""

    def __init__(self, params: NKDParams, ctx: DistillerContext) -> None:
        super().__init__()
        self.temperature = params.temperature
        self.gamma = params.gamma

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        s_logits, t_logits = student["logits"], teacher["logits"].detach()
        target = batch.labels
        if batch.labeled is not None:
            target = torch.where(batch.labeled, target, t_logits.argmax(dim=1))
        rows = target[:, None]
        log_p_s_target = F.log_softmax(s_logits, dim=1).gather(1, rows).squeeze(1)
        p_t_target = F.softmax(t_logits, dim=1).gather(1, rows).squeeze(1)
        target_term = -(p_t_target * log_p_s_target).mean()

        T = self.temperature
        log_q_s = non_target_log_probs(s_logits, target, T)
        q_t = non_target_log_probs(t_logits, target, T).exp()
        non_target = -self.gamma * T**2 * (q_t * log_q_s).sum(dim=1).mean()
        return {"target": target_term, "non_target": non_target}
