"""The torch side of the plugin API: what datasets return and what distillers implement.

Import this inside ``build`` functions (or in modules that ``build`` strings point to), not at
the top of a plugin's registration module: listing plugins must not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdcore.engine import distributed

Features = dict[str, "Tensor | list[Tensor]"]
"""Named features of one forward pass: ``logits`` always, plus the taps a distiller asked for."""

BatchTransform = Callable[[Any, torch.Generator], Tensor]
"""A random transform of a whole batch (augmentation), drawing randomness from the generator.
It receives the batch's inputs (a tensor, or what a split's ``collate`` returned) and returns a
tensor on the training device."""


@dataclass
class Split:
    """One split of a dataset.

    ``inputs`` is either a tensor holding the whole split in memory (the fast path: the trainer
    slices batches from it, no worker processes) or a ``Dataset`` whose items are ``(input,
    label)`` (the DataLoader path, for sets that do not fit in memory).

    Attributes:
        labels: the label of every sample, in order.
        true_probs: p*(y|x) of every sample, where the dataset knows it (synthetic data).
        labeled: boolean mask of the samples whose label may be used (semi-supervised); the
            teacher trains on these only and the student's cross-entropy sees only these.
        collate: for a ``Dataset`` whose items the default collate cannot stack (e.g. encoded
            images of different lengths): the DataLoader's ``collate_fn``, mapping a list of
            items to ``(inputs, labels)``, where ``inputs`` may be anything the bundle's
            transforms accept (e.g. a list of tensors). A split with a collate has its batches
            transformed by the bundle (see :attr:`batch_transformed`).
    """

    inputs: Tensor | Dataset
    labels: Tensor
    true_probs: Tensor | None = None
    labeled: Tensor | None = None
    collate: Callable[[list], tuple[Any, Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.inputs, Tensor)

    @property
    def batch_transformed(self) -> bool:
        """Whether the bundle's ``train_transform`` / ``eval_transform`` apply to this split's
        batches: they do for an in-memory split and for a ``Dataset`` split with a ``collate``;
        a ``Dataset`` split without one transforms each item itself and gets its batches as the
        default collate stacks them."""
        return self.in_memory or self.collate is not None


@dataclass
class DatasetBundle:
    """What a dataset plugin builds.

    The transforms apply to the batches of the splits whose :attr:`Split.batch_transformed`
    holds (in memory, or a ``Dataset`` with a ``collate``); they receive the batch's inputs as
    sliced from memory or as the collate returned them, and return a tensor on the training
    device. A split with a collate therefore needs both transforms.

    Attributes:
        train_transform: applied to each training batch (e.g. random crop and flip, then
            normalisation); ``None`` leaves the batch as stored.
        eval_transform: applied to each evaluation batch (e.g. uint8 to normalised float).
    """

    num_classes: int
    input_shape: tuple[int, ...]
    train: Split
    test: Split
    val: Split | None = None
    train_transform: BatchTransform | None = None
    eval_transform: Callable[[Any], Tensor] | None = None
    views: dict[str, BatchTransform] = field(default_factory=dict)
    """Other augmentations of a training batch by name (e.g. ``"strong"``), computed from the
    stored inputs for distillers that ask for them (:attr:`Distiller.input_views`)."""
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """``(mean, std)`` per channel, where the transforms end with ``(x - mean) / std`` on pixel
    values scaled to [0, 1] (``uint8 / 255``): what the networks expect of an input. It is not
    applied from here (the transforms do that); it is recorded in the weights files, so that
    whoever uses an exported network prepares its inputs the same way. ``None``: the inputs are
    used as stored, or the dataset does not say."""


@dataclass
class Batch:
    """A training batch as a distiller sees it.

    Attributes:
        index: position of each sample in the training split (memory banks, CRD).
        epoch: the current epoch, counted from 0; ``epochs`` is the stage's total (warm-ups).
        labeled: boolean mask of samples whose label may be used, or ``None`` for all.
        primary: after :meth:`Distiller.expand_batch`, the rows of ``inputs`` that hold the
            original samples, in the order of ``labels``; ``None`` when the rows are the samples.
    """

    inputs: Tensor
    labels: Tensor
    index: Tensor
    epoch: int
    epochs: int
    labeled: Tensor | None = None
    primary: Tensor | None = None
    views: dict[str, Tensor] = field(default_factory=dict)
    """The other augmentations of the same samples that a distiller asked for, by name."""


@dataclass
class Preparation:
    """A training stage a distiller needs before distillation (e.g. HSAKD's auxiliary heads on
    the frozen teacher). The kernel runs it like any stage, with checkpoints and resume, in the
    run's ``prepare-<term>/`` directory.

    Attributes:
        trainable: what this stage optimises (saved as the stage's ``model.safetensors``).
        step_loss: maps a training batch to (total loss, named terms to log).
        optimizer, schedule: as in a recipe, e.g. ``{"lr": 0.05, "weight_decay": 5e-4}`` and
            ``{"name": "multistep", "milestones": [30, 60, 90]}``.
    """

    trainable: nn.Module
    step_loss: Callable[[Batch], tuple[Tensor, dict[str, Tensor]]]
    epochs: int
    batch_size: int
    optimizer: dict
    schedule: dict


class Distiller(nn.Module):
    """Base class of distillation methods.

    A distiller names the features it reads from each network (``student_taps`` and
    ``teacher_taps``: ``"logits"`` or a tap the architecture declares, such as ``"stages"``
    or ``"pooled"``) and returns a dict of named loss terms from :meth:`forward`. The kernel
    multiplies their sum by the recipe's weight and logs each term. Parameters a distiller owns
    (regressors, embeddings) are trained with the student. Teacher features arrive detached.

    Optional extension points serve methods that need more than features (and
    :meth:`summary` adds numbers to the run's summary):

    - :meth:`expand_batch` replaces the inputs both networks see (HSAKD's rotated copies); the
      student's cross-entropy then uses the ``primary`` rows only. One distiller per recipe may.
    - :meth:`preparation` returns a stage to run before distillation, with the teacher frozen
      (HSAKD trains its auxiliary heads on the teacher there).
    """

    student_taps: tuple[str, ...] = ("logits",)
    teacher_taps: tuple[str, ...] = ("logits",)
    input_views: tuple[str, ...] = ()
    """Augmented views of each training batch that this distiller reads from ``batch.views``
    (names the dataset offers in :attr:`DatasetBundle.views`, e.g. ``"strong"``)."""

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    def expand_batch(self, batch: Batch) -> Batch:
        """The batch both networks see; by default the batch itself."""
        return batch

    def preparation(self) -> Preparation | None:
        """A stage to train before distillation, or ``None``."""
        return None

    def summary(self) -> dict[str, float]:
        """Numbers about this distiller worth keeping in the run's summary (e.g. the distance
        of its targets to p*); reports read ``mse_to_true`` and ``ce_to_true`` from here when
        the run has no teacher."""
        return {}

    @property
    def expands_batch(self) -> bool:
        return type(self).expand_batch is not Distiller.expand_batch


class Objective(nn.Module):
    """Base of teacher objectives that need more than ``(logits, labels)``: the sample
    indices, the epoch or augmented views in the batch, the network's weights (from the
    :class:`kdcore.api.ObjectiveContext`). :meth:`forward` returns the loss, or named terms
    that the kernel sums and logs one by one. Plain objectives may be any callable
    ``(logits, labels) -> loss``."""

    def forward(self, logits: Tensor, batch: Batch) -> Tensor | dict[str, Tensor]:
        raise NotImplementedError


def gather_across_processes(tensor: Tensor) -> Tensor:
    """With several training processes (``torchrun``), every process's ``tensor`` concatenated
    along dim 0 in rank order, so that state a distiller keeps outside the gradients (a memory
    bank) receives every process's batch share and stays identical on all of them; the tensor
    itself for one process. All processes must call it with the same shape. Not differentiable."""
    return distributed.gather(tensor)
