"""MCMI (Ye, Hamidi, Tan & Yang, ICLR 2024, "Bayes Conditional Distribution Estimation for
Knowledge Distillation Based on Conditional Mutual Information"): maximum log-likelihood and
maximum conditional mutual information I(X; Ŷ | Y) together, as in the authors' code
(github.com/iclr2024mcmi/ICLRMCMI: ``CIFAR100-FewShot/losses.py`` ``CE_KL_PWCE_loss``,
``CIFAT-100KD/centroid.py`` ``Centroid.update_epoch``, ``CIFAT-100KD/FineTuneTeacher.py``,
``CIFAT-100KD/helper/loops.py`` ``train_fine_tune``, λ from the repository's run scripts).

Loss of a batch B::

    L = CE(z, y) − λ · CMI,   CMI = (1/|B|) Σ_{i∈B} KL(q_i ‖ c_{y_i}),   q_i = softmax(z_i)

with ``c_k`` the centroid of class k: the mean of q over the training samples labelled k,
without gradient. ``(1/|B|) Σ KL(q_i ‖ c_{y_i})`` is the empirical CMI of the network's output
given the label (the KL of each output to its class's mean output). Temperature 1.

Defaults: λ = 0.25 (``--param 1 -0.25``, i.e. loss = 1·CE − 0.25·KL, in every CIFAR-100 script;
the CIFAR-10 zero-shot scripts also try 0.3 and 0.35).

Centroids. The authors fine-tune an already trained CE teacher for 20 epochs (lr 0.05, cosine,
batch 64) and compute the centroids once, before fine-tuning, from one pass of that teacher in
training mode over the augmented training set (``update_epoch``; ``update_batch`` is commented
out), then keep them fixed. kdcore trains the teacher with this objective from the start, so
here the centroids are the class means of the (detached, training-mode, augmented) predictions
made during the previous epoch: the CMI term starts at epoch ``start_epoch`` (≥ 1; default 1)
with the centroids of epoch ``start_epoch − 1``, and they are refreshed at every epoch
(``refresh_centroids: true``) or kept fixed after that first computation (``false``: the
authors' fixed centroids). A class without samples in that epoch contributes no CMI term.
To mimic the authors' protocol more closely, set ``start_epoch`` to the teacher's epochs − 20
with ``refresh_centroids: false`` (the learning-rate schedule then stays the stage's).

Departures: centroids are floored at 1e-12 before the logarithm (the authors' ``log`` of an
exactly-zero centroid entry would give an infinite loss); the per-class sums are accumulated
over the processes of a torchrun job (:func:`kdcore.nn.gather_across_processes`), so the
centroids are identical on all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.api import ObjectiveContext
from kdcore.nn import Batch, Objective, gather_across_processes

CENTROID_FLOOR = 1e-12


def empirical_cmi(logits: Tensor, labels: Tensor, centroids: Tensor, valid: Tensor | None = None) -> Tensor:
    """``(1/B) Σ_i KL(softmax(z_i) ‖ centroids[y_i])``, the terms of samples whose class is not
    ``valid`` left out (but still counted in B)."""
    log_q = F.log_softmax(logits, dim=1)
    log_c = centroids.clamp(min=CENTROID_FLOOR).log()[labels]
    kl = (log_q.exp() * (log_q - log_c)).sum(dim=1)
    if valid is not None:
        kl = kl * valid[labels]
    return kl.sum() / len(labels)


class MCMI(Objective):
    def __init__(self, params, ctx: ObjectiveContext):
        super().__init__()
        self.cmi_weight = params.cmi_weight
        self.start_epoch = params.start_epoch
        self.refresh = params.refresh_centroids
        classes = ctx.num_classes
        self.register_buffer("centroids", torch.full((classes, classes), 1.0 / classes))
        self.register_buffer("valid", torch.zeros(classes, dtype=torch.bool))
        self.register_buffer("sums", torch.zeros(classes, classes))
        self.register_buffer("counts", torch.zeros(classes))
        # which epoch the sums hold (-1: none yet) and whether centroids were ever computed; kept
        # as buffers for checkpoints and mirrored on the host, so a step never waits for the device
        self.register_buffer("accumulating", torch.tensor(-1))
        self.register_buffer("computed", torch.tensor(False))
        self._epoch, self._computed = -1, False
        self.register_load_state_dict_post_hook(MCMI._mirror)

    @staticmethod
    def _mirror(module: "MCMI", incompatible_keys) -> None:
        module._epoch, module._computed = int(module.accumulating), bool(module.computed)

    def forward(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        logits = logits.float()
        labels = batch.labels
        if self.centroids.device != logits.device:
            self.to(logits.device)
        self._advance(batch.epoch)
        terms = {"ce": F.cross_entropy(logits, labels)}
        if batch.epoch >= self.start_epoch:
            terms["neg_cmi"] = -self.cmi_weight * empirical_cmi(logits, labels, self.centroids, self.valid)
        else:
            terms["neg_cmi"] = logits.new_zeros(())
        if self._collecting(batch.epoch):
            with torch.no_grad():
                self._accumulate(logits.detach().softmax(dim=1), labels)
        return terms

    def _collecting(self, epoch: int) -> bool:
        """Whether this epoch's predictions make centroids for a later epoch."""
        return epoch >= self.start_epoch - 1 and (self.refresh or not self._computed)

    def _advance(self, epoch: int) -> None:
        """At the first batch of a new epoch, turn the previous epoch's sums into centroids."""
        if self._epoch == epoch:
            return
        if self._epoch >= 0 and epoch >= self.start_epoch and (self.refresh or not self._computed):
            present = self.counts > 0
            means = self.sums / self.counts.clamp(min=1)[:, None]
            self.centroids.copy_(torch.where(present[:, None], means, self.centroids))
            self.valid.copy_(present)
            self.computed.fill_(True)
            self._computed = True
        self.sums.zero_()
        self.counts.zero_()
        self.accumulating.fill_(epoch)
        self._epoch = epoch

    def _accumulate(self, probabilities: Tensor, labels: Tensor) -> None:
        classes = self.centroids.shape[0]
        one_hot = F.one_hot(labels, classes).to(probabilities.dtype)
        sums = one_hot.T @ probabilities  # (K, K): row k sums the q of the samples of class k
        packed = torch.cat([sums, one_hot.sum(dim=0)[:, None]], dim=1)[None]  # (1, K, K + 1)
        packed = gather_across_processes(packed).sum(dim=0)
        self.sums += packed[:, :classes]
        self.counts += packed[:, classes]
