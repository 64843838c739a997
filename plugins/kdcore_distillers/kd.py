"""Knowledge distillation (Hinton et al., 2015), optionally on standardised logits (Sun et al.,
CVPR 2024, "Logit Standardization in Knowledge Distillation")."""

import torch.nn.functional as F
from torch import Tensor

from kdcore.api import DistillerContext
from kdcore.nn import Batch, Distiller, Features

STANDARDIZE_EPS = 1e-7
"""Added to the standard deviation (not the variance) by the authors' ``normalize``."""


def standardize(logits: Tensor) -> Tensor:
    """Z-score of each sample's logits over the classes, ``(z − mean(z)) / (std(z) + 1e-7)``,
    with the sample standard deviation (``K − 1`` in the denominator, ``torch.std``'s default),
    as in sunshangquan/logit-standardization-KD (``mdistiller/distillers/KD.py``,
    ``normalize``). Gradients flow through the mean and the standard deviation."""
    centred = logits - logits.mean(dim=1, keepdim=True)
    return centred / (logits.std(dim=1, keepdim=True) + STANDARDIZE_EPS)


class KD(Distiller):
    """``KL(softmax(t/T) || softmax(s/T))``, summed over classes, averaged over the batch,
    times ``T²`` when ``scale_by_t2`` (the published CIFAR setting: T = 4).

    With ``standardize``, both networks' logits are first replaced by their per-sample Z-scores
    (:func:`standardize`), and ``T`` defaults to the logit-standardisation paper's base
    temperature 2 (its ``--base-temp``); that paper's CIFAR-100 runs weight this term 9
    (``--kd-weight``) and the cross-entropy 0.1, see ``published.STANDARDIZED_WEIGHTS`` and
    ``published.KD_STANDARDIZED`` for the per-pair temperatures and weights."""

    def __init__(self, params, ctx: DistillerContext):
        super().__init__()
        self.temperature = params.temperature
        self.scale = params.temperature**2 if params.scale_by_t2 else 1.0
        self.standardize = params.standardize

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        s_logits, t_logits = student["logits"], teacher["logits"].detach()
        if self.standardize:
            s_logits, t_logits = standardize(s_logits), standardize(t_logits)
        log_student = F.log_softmax(s_logits / self.temperature, dim=1)
        log_teacher = F.log_softmax(t_logits / self.temperature, dim=1)
        divergence = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
        return {"kd": divergence * self.scale}
