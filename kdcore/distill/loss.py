"""The losses stages minimise: the teacher's objective, and the student's cross-entropy on the
labels it may use plus each distiller's weighted terms."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.config.schema import DistillerRef
from kdcore.nn import Batch, Distiller, Features, Objective


def masked_cross_entropy(logits: Tensor, labels: Tensor, labeled: Tensor | None) -> Tensor:
    """Mean cross-entropy over the samples whose label may be used (all, when no mask)."""
    if labeled is None:
        return F.cross_entropy(logits, labels)
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    return (per_sample * labeled).sum() / labeled.sum().clamp(min=1)


def named_terms(term: str, losses: dict[str, Tensor]) -> dict[str, Tensor]:
    """A component's loss terms as logged: its own name for a single term, else
    ``<name>.<term>``."""
    if len(losses) == 1:
        return {term: next(iter(losses.values()))}
    return {f"{term}.{key}": value for key, value in losses.items()}


def objective_terms(objective: Callable, term: str, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
    """The teacher objective's terms: a :class:`kdcore.nn.Objective` sees the whole batch,
    any other callable ``(logits, labels)``."""
    if isinstance(objective, Objective):
        loss = objective(logits, batch)
    else:
        loss = objective(logits, batch.labels)
    return named_terms(term, loss if isinstance(loss, dict) else {term: loss})


class StudentLoss:
    """``ce_weight · CE(labelled rows) + Σ weight_d · Σ terms_d``. The student's CE is on the
    batch's ``primary`` rows when a distiller expanded the batch; with ``ce_weight`` 0 it is
    logged only, without gradient work."""

    def __init__(self, ce_weight: float, refs: Sequence[DistillerRef], distillers: Sequence[Distiller]):
        self.ce_weight = ce_weight
        self.weighted = list(zip(refs, distillers))

    def __call__(self, student: Features, teacher: Features, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = student["logits"] if batch.primary is None else student["logits"][batch.primary]
        if self.ce_weight > 0:
            ce = masked_cross_entropy(logits, batch.labels, batch.labeled)
            total = self.ce_weight * ce
        else:
            with torch.no_grad():
                ce = masked_cross_entropy(logits, batch.labels, batch.labeled)
            total = 0.0
        terms = {"ce": ce}
        for ref, distiller in self.weighted:
            losses = distiller(student, teacher, batch)
            terms.update(named_terms(ref.term, losses))
            total = total + ref.weight * sum(losses.values())
        return total, terms
