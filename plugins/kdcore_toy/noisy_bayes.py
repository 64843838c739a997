"""Students taught by perturbed Bayes probabilities: which distance of the targets to p*
(squared error or cross-entropy) predicts the student's accuracy?"""

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.api import DistillerContext
from kdcore.errors import KdcoreError
from kdcore.nn import Batch, Distiller, Features

SMALLEST_PROBABILITY = 1e-6


def perturb(true_probs: Tensor, labels: Tensor, kind: str, level: float, seed: int) -> Tensor:
    """p̃ from p* (rows are samples); see ``NoisyBayesParams.kind``. Random kinds draw from
    ``seed`` without touching the caller's random state."""
    if kind == "mix":
        one_hot = F.one_hot(labels, true_probs.shape[1]).to(true_probs.dtype)
        return level * one_hot + (1 - level) * true_probs
    if kind == "temperature":
        noisy = true_probs.clamp(min=SMALLEST_PROBABILITY).pow(1 / level)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if kind == "additive":
                noisy = true_probs + level * torch.randn_like(true_probs)
            else:
                concentration = (level * true_probs).clamp(min=SMALLEST_PROBABILITY)
                noisy = torch.distributions.Dirichlet(concentration).sample()
        noisy = noisy.clamp(min=SMALLEST_PROBABILITY)
    return noisy / noisy.sum(dim=1, keepdim=True)


class NoisyBayes(Distiller):
    """``KL(p̃ ‖ softmax(s))`` averaged over the batch, with one fixed p̃ per training sample."""

    teacher_taps = ()

    def __init__(self, params, ctx: DistillerContext):
        super().__init__()
        if ctx.train_true_probs is None:
            raise KdcoreError("noisy-bayes needs a dataset that knows p*(y|x), such as gaussian")
        labels = torch.as_tensor(ctx.train_labels)
        if params.kind == "mix" and bool((labels < 0).any()):
            raise KdcoreError("noisy-bayes kind 'mix' needs every training label")
        true_probs = ctx.train_true_probs.double()
        targets = perturb(true_probs, labels, params.kind, params.level, params.noise_seed)
        self._summary = {
            "mse_to_true": float((targets - true_probs).pow(2).sum(1).mean()),
            "ce_to_true": float(-(true_probs * targets.log()).sum(1).mean()),
        }
        self.register_buffer("targets", targets.float(), persistent=False)

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        targets = self.targets[batch.index]
        log_student = F.log_softmax(student["logits"], dim=1)
        return {"kl": F.kl_div(log_student, targets, reduction="batchmean")}

    def summary(self) -> dict[str, float]:
        return self._summary
