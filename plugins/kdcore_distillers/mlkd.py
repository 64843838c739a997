"""Multi-level logit distillation (Jin et al., CVPR 2023), as in the authors' released code
(``Jin-Ying/Multi-Level-Logit-Distillation``: ``mdistiller/distillers/KD_ours.py``, the
``AugTrainer`` of ``mdistiller/engine/trainer.py``, ``configs/cifar100/ours/*.yaml`` and the
``cfg.KD`` defaults of ``mdistiller/engine/cfg.py``).

Both networks see two views of every image: the weak one (crop and flip, kdcore's
``train_transform``) and the strong one (crop, flip, RandAugment(2) and Cutout: the dataset's
``"strong"`` view, :class:`kdcore_vision.transforms.CropFlipRandAugmentNormalize` on CIFAR).
:meth:`MLKD.expand_batch` stacks them, weak rows first; the kernel's cross-entropy reads the
weak rows (``primary``) and this distiller adds the strong rows' cross-entropy, as MLKD's
``loss_ce = w_ce·(CE(weak) + CE(strong))``.

The terms, with ``w = kd_weight``, temperatures ``𝒯 = [temperature, *extra_temperatures]``
= [4, 3, 5, 2, 6], ``KL_T(a)`` the ``T²``-scaled batch-mean KL of view ``a`` at ``T`` and
``p_t`` the teacher's weak-view softmax at T = 1:

- ``instance_weak = w·Σ_{T∈𝒯} m·KL_T(weak)`` and ``instance_strong = w·(Σ_{first 3 T}
  KL_T(strong) + Σ_{other T} KL_T(weak))``;
- ``class = w·Σ_T c·‖Q_tᵀQ_t − Q_sᵀQ_s‖²/K`` of the weak view's (B, K) softmaxes ``Q`` at T;
- ``batch = w·Σ_T m·‖Q_tQ_tᵀ − Q_sQ_sᵀ‖²/B``;
- ``ce_strong = strong_ce_weight·CE(strong)``;

with the confidence masks of the released code: ``m`` is the fraction of the batch whose
teacher confidence ``max_k p_t`` is at most its 50th percentile (NumPy's linear
interpolation), ``c`` the fraction of classes whose summed teacher probability ``Σ_b p_t`` is
at most theirs. **As released**, each mask multiplies a loss already averaged over the batch,
so it scales the term by the kept fraction (about ½) rather than selecting samples (the
per-sample form, ``reduce=False``, is commented out there); the strong-view instance term reads
the *weak* view's logits at its last two temperatures (2 and 6), unmasked; the strong view's
class and batch terms are computed there but left out of the loss. All of this is reproduced
(``strong_view_temperatures`` sets how many temperatures read the strong view).

``standardize`` (``sunshangquan/logit-standardization-KD``, ``mdistiller/distillers/MLKD.py``
and ``tools/train.py``): the instance terms Z-score each sample's logits of both networks
before dividing by T (the masks, class and batch terms do not), with the base temperature 2
(``--base-temp``) and ``kd_weight`` 9 (``--kd-weight``) by default.

**Departure:** MLKD runs the student on the two views in two forward passes; here they are one
batch of 2B images, so the student's batch-norm statistics in training mode are taken over
both views together (the teacher is in eval mode, unaffected).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.api import DistillerContext
from kdcore.errors import KdcoreError
from kdcore.nn import Batch, Distiller, Features
from kdcore_distillers.kd import standardize

METHOD = "mlkd"
VIEW = "strong"


def kl_t2(s_logits: Tensor, t_logits: Tensor, temperature: float) -> Tensor:
    """``T² · (1/B) Σ_b Σ_k p_t (log p_t − log p_s)`` at temperature ``T``."""
    log_p_student = F.log_softmax(s_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(t_logits / temperature, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1).mean()
    return kl * temperature**2


def class_relation(s_logits: Tensor, t_logits: Tensor, temperature: float) -> Tensor:
    """``‖Q_tᵀQ_t − Q_sᵀQ_s‖²_F / K``: the (K, K) class-correlation matrices of the batch's
    softmaxes at ``T``."""
    q_s, q_t = F.softmax(s_logits / temperature, dim=1), F.softmax(t_logits / temperature, dim=1)
    return (q_t.T @ q_t - q_s.T @ q_s).pow(2).sum() / s_logits.shape[1]


def batch_relation(s_logits: Tensor, t_logits: Tensor, temperature: float) -> Tensor:
    """``‖Q_tQ_tᵀ − Q_sQ_sᵀ‖²_F / B``: the (B, B) sample-similarity matrices of the batch's
    softmaxes at ``T``."""
    q_s, q_t = F.softmax(s_logits / temperature, dim=1), F.softmax(t_logits / temperature, dim=1)
    return (q_t @ q_t.T - q_s @ q_s.T).pow(2).sum() / s_logits.shape[0]


def kept_fraction(values: Tensor, percentile: float) -> Tensor:
    """The fraction of ``values`` at most their ``percentile``-th percentile (linear
    interpolation between order statistics, NumPy's default)."""
    values = values.float() if values.dtype in (torch.float16, torch.bfloat16) else values
    threshold = torch.quantile(values, percentile / 100)
    return (values <= threshold).to(values.dtype).mean()


class MLKD(Distiller):
    """Instance-, class- and batch-level alignment of the softmaxes of both networks on a weak
    and a strong view of each image, at five temperatures (see the module docstring).
    Published CIFAR-100 (``configs/cifar100/ours``): temperatures [4, 3, 5, 2, 6], percentile
    50, KD weight 0.9 on every alignment term, CE weight 0.1 on each view, no warm-up; SGD lr
    0.025, batch 64, weight decay 5e-4, 240 epochs with the lr ×0.1 at 150, 180 and 210. The
    recipe weight is 1 (the weights are inside) and the recipe's ce_weight 0.1, which should
    equal ``strong_ce_weight``."""

    input_views = (VIEW,)

    def __init__(self, params, ctx: DistillerContext) -> None:
        super().__init__()
        self.temperatures = [float(params.temperature), *map(float, params.extra_temperatures)]
        self.strong_view_temperatures = params.strong_view_temperatures
        self.percentile = params.confidence_percentile
        self.kd_weight = params.kd_weight
        self.strong_ce_weight = params.strong_ce_weight
        self.standardize = params.standardize

    def expand_batch(self, batch: Batch) -> Batch:
        """The weak view (the batch's inputs) and then the strong view of the same images:
        rows ``0..B-1`` weak (``primary``), ``B..2B-1`` strong."""
        strong = batch.views.get(VIEW)
        if strong is None:
            offered = ", ".join(sorted(batch.views)) or "none"
            raise KdcoreError(
                f"{METHOD} trains on a weak and a strong augmentation of each image, but the batch "
                f"carries no '{VIEW}' view (views: {offered}); use a dataset that offers one "
                f"(the CIFAR sets do: DatasetBundle.views['{VIEW}'])"
            )
        if strong.shape != batch.inputs.shape:
            raise KdcoreError(
                f"{METHOD}: the '{VIEW}' view has shape {tuple(strong.shape)}, the batch's inputs "
                f"{tuple(batch.inputs.shape)}; both must hold the same images"
            )
        inputs = torch.cat([batch.inputs, strong.to(batch.inputs.dtype)])
        return Batch(inputs=inputs, labels=batch.labels, index=batch.index, epoch=batch.epoch,
                     epochs=batch.epochs, labeled=batch.labeled,
                     primary=torch.arange(len(batch.inputs), device=inputs.device), views=batch.views)

    def _split(self, logits: Tensor, batch: Batch, who: str) -> tuple[Tensor, Tensor]:
        n = len(batch.labels)
        if logits.shape[0] != 2 * n:
            raise KdcoreError(
                f"{METHOD}: the {who}'s logits have {logits.shape[0]} rows for {n} samples; expected "
                f"{2 * n} (weak then strong views, from {METHOD}'s expand_batch)"
            )
        return logits[:n], logits[n:]

    def _strong_ce(self, logits: Tensor, batch: Batch) -> Tensor:
        """Mean CE of the strong rows over the samples whose label may be used, as the
        kernel's CE of the weak rows."""
        if batch.labeled is None:
            return F.cross_entropy(logits, batch.labels)
        labels = torch.where(batch.labeled, batch.labels, torch.zeros_like(batch.labels))
        per_sample = F.cross_entropy(logits, labels, reduction="none")
        return (per_sample * batch.labeled).sum() / batch.labeled.sum().clamp(min=1)

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        s_weak, s_strong = self._split(student["logits"], batch, "student")
        t_weak, t_strong = self._split(teacher["logits"].detach(), batch, "teacher")
        p_teacher = F.softmax(t_weak, dim=1)
        sample_kept = kept_fraction(p_teacher.max(dim=1).values, self.percentile)
        class_kept = kept_fraction(p_teacher.sum(dim=0), self.percentile)

        zs_weak, zt_weak, zs_strong, zt_strong = s_weak, t_weak, s_strong, t_strong
        if self.standardize:
            zs_weak, zt_weak, zs_strong, zt_strong = map(
                standardize, (s_weak, t_weak, s_strong, t_strong))
        weak = [kl_t2(zs_weak, zt_weak, T) for T in self.temperatures]
        strong = [
            kl_t2(zs_strong, zt_strong, T) if i < self.strong_view_temperatures else weak[i]
            for i, T in enumerate(self.temperatures)
        ]
        w = self.kd_weight
        return {
            "ce_strong": self.strong_ce_weight * self._strong_ce(s_strong, batch),
            "instance_weak": w * sample_kept * sum(weak),
            "instance_strong": w * sum(strong),
            "class": w * class_kept * sum(class_relation(s_weak, t_weak, T) for T in self.temperatures),
            "batch": w * sample_kept * sum(batch_relation(s_weak, t_weak, T) for T in self.temperatures),
        }
