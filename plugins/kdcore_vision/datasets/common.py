"""Helpers shared by the dataset loaders: where the data are, class-balanced subsets, and the
normalisation a recipe asks for."""

import os
from pathlib import Path

import torch
from torch import Tensor

from kdcore.api import DatasetContext, Normalization
from kdcore.errors import KdcoreError


def data_root(root: str | None) -> Path:
    """The ``root`` param, else ``$KDCORE_DATA``, else ``./data``."""
    return Path(root or os.environ.get("KDCORE_DATA") or "data")


def balanced_subset(labels: Tensor, count: int, generator: torch.Generator, what: str) -> Tensor:
    """A boolean mask selecting ``count`` samples, spread evenly over the classes present: each
    class gets ``count // K`` samples, and ``count % K`` classes drawn at random get one more.

    ``what`` names the subset in the error raised when a class has too few samples.
    """
    classes = labels.unique()
    per_class, extra = divmod(count, len(classes))
    lucky = torch.zeros(len(classes), dtype=torch.bool)
    lucky[torch.randperm(len(classes), generator=generator)[:extra]] = True
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for label, bonus in zip(classes.tolist(), lucky.tolist()):
        members = (labels == label).nonzero().flatten()
        wanted = per_class + bonus
        if wanted > len(members):
            raise KdcoreError(
                f"{what}: {count} samples balanced over {len(classes)} classes need {wanted} of "
                f"class {label}, which has only {len(members)}"
            )
        mask[members[torch.randperm(len(members), generator=generator)[:wanted]]] = True
    return mask


def normalization(ctx: DatasetContext, own: Normalization, dataset: str) -> Normalization:
    """The dataset's own ``(mean, std)``, or the one the recipe asks for (``data.normalization``),
    which must have one value per RGB channel."""
    if ctx.normalization is None:
        return own
    mean, std = ctx.normalization
    if len(mean) != len(own[0]) or len(std) != len(own[1]):
        raise KdcoreError(f"data.normalization: {dataset} images have {len(own[0])} channels, and the normalisation "
                          f"asked for has {len(mean)} means and {len(std)} stds")
    return tuple(mean), tuple(std)
