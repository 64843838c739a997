"""Contrastive representation distillation (Tian et al., 2020), as in RepDistiller's CIFAR-100
benchmark: 128-d embeddings, memory banks over the training set, 16384 negatives from other
classes, NCE temperature 0.07, bank momentum 0.5, loss weight 0.8."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.api import DistillerContext
from kdcore.errors import KdcoreError
from kdcore.nn import Batch, Distiller, Features, gather_across_processes
from kdcore_distillers import CRDParams
from kdcore_distillers._common import flat_dim

EPS = 1e-7


def nce_loss(scores: Tensor, bank_size: int, eps: float = EPS) -> Tensor:
    """NCE loss of (B, 1 + K) normalised scores, the positive first, with uniform noise
    ``P_n = 1/N`` (N = bank size):
    ``−(1/B) Σ_b [log(P⁺/(P⁺ + K·P_n + eps)) + Σ_k log(K·P_n/(P⁻_k + K·P_n + eps))]``."""
    noise = (scores.shape[1] - 1) / bank_size
    positive, negatives = scores[:, 0], scores[:, 1:]
    log_d1 = (positive / (positive + noise + eps)).log()
    log_d0 = (noise / (negatives + noise + eps)).log()
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


class CRD(Distiller):
    """``crd = L_NCE(student anchors vs teacher bank) + L_NCE(teacher anchors vs student bank)``.

    Each pooled feature goes through its own trainable ``Linear(dim, embed_dim)`` and is
    L2-normalised (``e_s``, ``e_t``). Every training sample ``i`` (``batch.index``) has a row in
    each of two banks ``M_s, M_t`` (train_size × embed_dim, random at start). For a sample, the
    contrast set is ``i`` itself then ``num_negatives`` others, drawn without replacement from
    the samples of other classes (``negatives="other_class"``, REP's ``exact`` mode; with
    replacement if a class has too few) or uniformly from the whole set with replacement
    (``negatives="uniform"``, which needs no labels). Scores are
    ``exp(M_t[j]·e_s / T) / Z_s`` and ``exp(M_s[j]·e_t / T) / Z_t``, with each ``Z`` fixed on
    the first batch to ``mean(exp(·/T))·train_size``, and go through :func:`nce_loss`. After
    the loss, in training mode, ``M[i] ← normalize(m·M[i] + (1 − m)·e[i])``.
    With several training processes, ``Z`` is the mean over all of them and every bank update
    takes every process's samples, so the banks stay identical everywhere.
    Published CIFAR-100 loss weight: 0.8 (CRD+KD adds KD with weight 1)."""

    student_taps = ("pooled",)
    teacher_taps = ("pooled",)

    def __init__(self, params: CRDParams, ctx: DistillerContext) -> None:
        super().__init__()
        self.temperature = params.temperature
        self.momentum = params.momentum
        self.num_negatives = params.num_negatives
        self.other_class = params.negatives == "other_class"
        self.bank_size = ctx.train_size
        dim = params.embed_dim
        self.embed_student = nn.Linear(flat_dim(ctx.student_shapes["pooled"]), dim)
        self.embed_teacher = nn.Linear(flat_dim(ctx.teacher_shapes["pooled"]), dim)
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer(
            "memory_student", torch.empty(self.bank_size, dim).uniform_(-bound, bound)
        )
        self.register_buffer(
            "memory_teacher", torch.empty(self.bank_size, dim).uniform_(-bound, bound)
        )
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))
        # whether Z is fixed, read from the buffer once (a test of a GPU tensor waits for the GPU)
        self._z_fixed: bool | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_z_fixed", None))
        if self.other_class:
            labels = torch.as_tensor(ctx.train_labels).long().flatten()
            if len(labels) != self.bank_size:
                raise KdcoreError(
                    f"crd: train_labels has {len(labels)} entries for {self.bank_size} samples"
                )
            if bool((labels < 0).any()):
                raise KdcoreError(
                    "crd: negatives: other_class needs every training label, and this data set "
                    "hides some (semi-supervised); set the distiller's params to {negatives: uniform}"
                )
            smallest_pool = self.bank_size - int(torch.bincount(labels).max())
            if smallest_pool == 0:
                raise KdcoreError(
                    "crd: every training sample has the same class; use negatives: uniform"
                )
            self.replacement = self.num_negatives > smallest_pool
            self.register_buffer("train_labels", labels, persistent=False)

    def sample_contrast(self, index: Tensor) -> Tensor:
        """(B, 1 + K) bank rows: each sample's own index, then its K negatives."""
        if self.other_class:
            classes = self.train_labels[index]
            allowed = (self.train_labels[None, :] != classes[:, None]).float()
            negatives = torch.multinomial(allowed, self.num_negatives, replacement=self.replacement)
        else:
            negatives = torch.randint(
                self.bank_size, (len(index), self.num_negatives), device=index.device
            )
        return torch.cat([index[:, None], negatives], dim=1)

    def _scores(self, anchors: Tensor, bank: Tensor, contrast: Tensor, z: Tensor) -> Tensor:
        """``exp(bank[contrast]·anchor / T) / Z`` as (B, 1 + K); fixes ``Z`` on first use."""
        scores = torch.einsum("bkd,bd->bk", bank[contrast], anchors).div(self.temperature).exp()
        if not self._z_fixed:
            z.fill_(gather_across_processes(scores.detach().mean()[None]).mean().item() * self.bank_size)
        return scores / z

    @torch.no_grad()
    def _update(self, bank: Tensor, index: Tensor, embeddings: Tensor) -> None:
        index, embeddings = gather_across_processes(index), gather_across_processes(embeddings.to(bank.dtype))
        mixed = self.momentum * bank[index] + (1.0 - self.momentum) * embeddings
        bank.index_copy_(0, index, F.normalize(mixed, dim=1))

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        index = batch.index.to(self.memory_student.device)
        with torch.autocast(device_type=index.device.type, enabled=False):
            e_student = F.normalize(self.embed_student(student["pooled"].flatten(1).float()), dim=1)
            e_teacher = F.normalize(
                self.embed_teacher(teacher["pooled"].detach().flatten(1).float()), dim=1
            )
            contrast = self.sample_contrast(index)
            if self._z_fixed is None:
                self._z_fixed = bool(self.z_student >= 0)
            student_side = self._scores(e_student, self.memory_teacher, contrast, self.z_student)
            teacher_side = self._scores(e_teacher, self.memory_student, contrast, self.z_teacher)
            loss = nce_loss(student_side, self.bank_size) + nce_loss(teacher_side, self.bank_size)
            self._z_fixed = True
        if self.training:
            self._update(self.memory_student, index, e_student.detach())
            self._update(self.memory_teacher, index, e_teacher.detach())
        return {"crd": loss}
