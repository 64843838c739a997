"""The digits dataset: loading, the stratified split and the ±shift augmentation.

Images are held in memory as float32 (N, 1, 8, 8) in [0, 1] (the stored intensities 0..16
divided by 16; 0 is blank paper), so the trainer slices batches from tensors with no worker
processes. There is no normalisation step: the networks begin with BatchNorm after their first
convolution, and keeping 0 as the blank value lets the shift pad with blank pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.api import DatasetContext
from kdcore.errors import KdcoreError
from kdcore.nn import DatasetBundle, Split

from . import _resolve_size

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
MAX_INTENSITY = 16.0
MISSING_SKLEARN = "dataset 'digits' needs scikit-learn: pip install 'kdcore[digits]'"


def load_digits_tensors() -> tuple[Tensor, Tensor]:
    """All 1,797 images as float32 (N, 1, 8, 8) in [0, 1] and their int64 labels, in the order
    scikit-learn stores them."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise KdcoreError(MISSING_SKLEARN) from None
    images, labels = load_digits(return_X_y=True)
    inputs = torch.from_numpy(images).float().div_(MAX_INTENSITY).reshape(-1, *IMAGE_SHAPE)
    return inputs.contiguous(), torch.from_numpy(labels).long()


def class_quotas(counts: Tensor, total: int) -> Tensor:
    """How many of ``total`` samples each class contributes, proportionally to ``counts``:
    the floor of each class's exact share, then one more for the classes with the largest
    remainders (ties to the lower class index), so that the quotas sum to ``total``."""
    exact = counts.double() * total / counts.sum()
    quotas = exact.floor().long()
    missing = total - int(quotas.sum())
    remainders = exact - quotas
    # stable sort on -remainder keeps the lower class first among equal remainders
    order = torch.sort(-remainders, stable=True).indices
    quotas[order[:missing]] += 1
    return quotas


def stratified_split(labels: Tensor, val_count: int, test_count: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of the train, validation and test samples (each sorted ascending). Every split
    takes from each class its :func:`class_quotas` share; within a class, which samples go where
    is a random permutation drawn from ``seed`` alone."""
    generator = torch.Generator().manual_seed(seed)
    classes, counts = labels.unique(sorted=True, return_counts=True)
    test_quota, val_quota = class_quotas(counts, test_count), class_quotas(counts, val_count)
    parts: tuple[list[Tensor], list[Tensor], list[Tensor]] = ([], [], [])
    for label, count, n_test, n_val in zip(classes.tolist(), counts.tolist(), test_quota.tolist(), val_quota.tolist()):
        if n_test + n_val >= count:
            raise KdcoreError(
                f"dataset 'digits': class {label} has {count} images, not enough for {n_test} test "
                f"and {n_val} validation images and at least one to train on; lower val_size or test_size"
            )
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(count, generator=generator)]
        parts[1].append(members[:n_val])
        parts[2].append(members[n_val:n_val + n_test])
        parts[0].append(members[n_val + n_test:])
    train, val, test = (torch.cat(chosen).sort().values for chosen in parts)
    return train, val, test


def random_shift(batch: Tensor, generator: torch.Generator, max_shift: int = 1) -> Tensor:
    """Each image of an (N, C, H, W) batch moved by (dy, dx), both drawn uniformly and
    independently per image from {-max_shift, ..., max_shift}: ``out[y, x] = in[y - dy, x - dx]``
    where that pixel exists, else 0 (blank). No flips: digits are not mirror-symmetric.

    The whole batch at once, on the batch's device; the offsets are drawn on the generator's
    device and moved to the batch's, so a CPU generator drives a GPU batch reproducibly.
    """
    if max_shift == 0:
        return batch
    n, _, height, width = batch.shape
    padded = F.pad(batch, (max_shift, max_shift, max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator, device=generator.device)
    offsets = offsets.to(batch.device, non_blocking=True)
    # a window starting at offset o of the padded image is the image moved by max_shift - o
    rows = offsets[0, :, None] + torch.arange(height, device=batch.device)
    cols = offsets[1, :, None] + torch.arange(width, device=batch.device)
    samples = torch.arange(n, device=batch.device)[:, None, None]
    moved = padded.permute(0, 2, 3, 1)[samples, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return moved.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class RandomShift:
    """The training transform: :func:`random_shift` by up to ``max_shift`` pixels."""

    max_shift: int = 1

    def __call__(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        return random_shift(batch, generator, self.max_shift)


def build_digits(params, ctx: DatasetContext) -> DatasetBundle:
    """The stratified split of :func:`stratified_split` (``split_seed``, not the run seed), in
    memory, with :class:`RandomShift` on training batches when ``shift`` > 0."""
    inputs, labels = load_digits_tensors()
    val_count, test_count = _resolve_size(params.val_size, len(labels)), _resolve_size(params.test_size, len(labels))
    train, val, test = stratified_split(labels, val_count, test_count, params.split_seed)

    def split(index: Tensor) -> Split:
        return Split(inputs=inputs[index].contiguous(), labels=labels[index].contiguous())

    return DatasetBundle(
        num_classes=NUM_CLASSES,
        input_shape=IMAGE_SHAPE,
        train=split(train),
        val=split(val) if val_count else None,
        test=split(test),
        train_transform=RandomShift(params.shift) if params.shift else None,
    )
