"""The losses stages minimise: the teacher's objective, and the student's cross-entropy on the
labels it may use plus each distiller's weighted terms."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.config.schema import DistillerRef
from kdcore.distill.components import plugin_code
from kdcore.errors import KdcoreError
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


def checked_terms(losses: object, who: str) -> dict[str, Tensor]:
    """A component's losses as a dict of scalar tensors, or one line saying what it returned."""
    if isinstance(losses, Tensor):
        losses = {"loss": losses}
    if not isinstance(losses, dict) or not losses:
        raise KdcoreError(f"{who} returned {type(losses).__name__}; it must return a dict of named scalar tensors")
    for key, value in losses.items():
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise KdcoreError(f"{who} returned {shape} for its term '{key}'; each term must be a scalar tensor")
    return losses


def guarded(call: Callable[[], object], who: str) -> dict[str, Tensor]:
    """Run a plugin's forward, turning what it raises into one line naming it."""
    with plugin_code(f"{who} failed in its forward pass"):
        return checked_terms(call(), who)


def objective_terms(objective: Callable, term: str, logits: Tensor, batch: Batch, who: str) -> dict[str, Tensor]:
    """The teacher objective's terms: a :class:`kdcore.nn.Objective` sees the whole batch,
    any other callable ``(logits, labels)``."""
    if isinstance(objective, Objective):
        losses = guarded(lambda: objective(logits, batch), who)
    else:
        losses = guarded(lambda: objective(logits, batch.labels), who)
    return named_terms(term, losses)


class StudentLoss:
    """``ce_weight · CE(labelled rows) + Σ weight_d · Σ terms_d``. The student's CE is on the
    batch's ``primary`` rows when a distiller expanded the batch; with ``ce_weight`` 0 it is
    logged only, without gradient work."""

    def __init__(self, ce_weight: float, refs: Sequence[DistillerRef], distillers: Sequence[Distiller],
                 names: Sequence[str]):
        self.ce_weight = ce_weight
        self.weighted = list(zip(refs, distillers, names))

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
        for ref, distiller, who in self.weighted:
            losses = guarded(lambda: distiller(student, teacher, batch), who)
            terms.update(named_terms(ref.term, losses))
            total = total + ref.weight * sum(losses.values())
        return total, terms
