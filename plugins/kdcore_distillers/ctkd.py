"""Curriculum temperature KD (Li et al., AAAI 2023), global-temperature version, as in the
authors' ``zhengli97/CTKD`` (``models/temp_global.py``, ``helper/loops.py``,
``train_student.py``, ``scripts/run_cifar_distill.sh``).

KD's temperature is learnt: ``T = t_start + t_range·σ(θ)`` with one scalar parameter ``θ``
(initialised to 1: T ≈ 15.6 at the start). ``θ`` reaches the loss through a gradient-reversal
layer, identity forward and ``−λ × gradient`` backward, so that the student's optimiser, which
trains ``θ`` with the student, moves T to *increase* the distillation loss while the student
decreases it. ``λ`` follows the curriculum ``λ = λ_min + (λ_max − λ_min)·(1 − cos(π·i/N))/2``
with ``i = min(epoch, N)``, the epoch counted from 1 as in CTKD's loop (kdcore's
``batch.epoch`` + 1), ``N = curriculum_epochs``: from 0.024 in the first epoch to 1 from epoch
``N`` on. (CTKD's code writes the same schedule with signed values, ``--decay_max 0
--decay_min -1``, and a layer multiplying the gradient by the signed value.)

``standardize`` Z-scores each sample's logits of both networks before dividing by T, as the
CTKD variant of ``sunshangquan/logit-standardization-KD`` (``CTKD/distiller_zoo/KD.py``,
``DistillKL_logit_stand``), whose script sets the KD weight to 9 with the CE weight 0.1.

The instance-wise variant (a temperature per sample from a small network) is not implemented:
its module is not in the authors' repository, only in an archive on a cloud drive.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kdcore.api import DistillerContext
from kdcore.nn import Batch, Distiller, Features
from kdcore_distillers.kd import standardize


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``−factor``."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * -ctx.factor, None


def reverse_gradient(x: Tensor, factor: float) -> Tensor:
    """``x`` unchanged, its gradient multiplied by ``−factor`` on the way back."""
    return _ReverseGradient.apply(x, factor)


class CTKD(Distiller):
    """``kd = T²·(1/B) Σ_b KL(softmax(t_b/T) ‖ softmax(s_b/T))`` at the learnt temperature
    ``T = t_start + t_range·σ(GRL_λ(θ))`` (see the module docstring); the gradient reaches
    ``T`` through both softmaxes and the ``T²`` factor, as in CTKD. Published CIFAR-100
    (``run_cifar_distill.sh``): t_start 1, t_range 20 (``--t_end``), θ₀ = 1, cosine curriculum
    from λ 0 to 1 over 10 epochs, loss weight 0.9, CE weight 0.1 (``-r 0.1 -a 0.9 -b 0``)."""

    def __init__(self, params, ctx: DistillerContext) -> None:
        super().__init__()
        self.t_start = params.t_start
        self.t_range = params.t_range
        self.lambda_min = params.lambda_min
        self.lambda_max = params.lambda_max
        self.curriculum_epochs = params.curriculum_epochs
        self.standardize = params.standardize
        self.raw_temperature = nn.Parameter(torch.full((1,), float(params.raw_init)))

    def curriculum(self, epoch: int) -> float:
        """λ of a 0-based epoch: the cosine ramp from ``lambda_min`` (before the first epoch)
        to ``lambda_max`` (from epoch ``curriculum_epochs``, counted from 1, on)."""
        if self.curriculum_epochs == 0:
            return self.lambda_max
        progress = min(epoch + 1, self.curriculum_epochs) / self.curriculum_epochs
        ramp = (1 - math.cos(math.pi * progress)) / 2
        return self.lambda_min + (self.lambda_max - self.lambda_min) * ramp

    def temperature(self, factor: float | None = None) -> Tensor:
        """``t_start + t_range·σ(θ)``, through the gradient reversal of strength ``factor``
        when one is given."""
        raw = self.raw_temperature if factor is None else reverse_gradient(self.raw_temperature, factor)
        return self.t_start + self.t_range * torch.sigmoid(raw)

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        T = self.temperature(self.curriculum(batch.epoch))
        # at least the temperature's precision (half-precision logits under autocast)
        dtype = torch.promote_types(student["logits"].dtype, T.dtype)
        s_logits, t_logits = student["logits"].to(dtype), teacher["logits"].detach().to(dtype)
        if self.standardize:
            s_logits, t_logits = standardize(s_logits), standardize(t_logits)
        T = T.to(dtype)
        log_p_student = torch.log_softmax(s_logits / T, dim=1)
        log_p_teacher = torch.log_softmax(t_logits / T, dim=1)
        kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1).mean()
        return {"kd": (kl * T * T).squeeze(0)}

    def summary(self) -> dict[str, float]:
        """The learnt temperature at the end of training."""
        with torch.no_grad():
            return {"temperature": float(self.temperature())}
