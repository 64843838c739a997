"""Training batches from a split: sliced from memory, or through a DataLoader."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdcore.nn import BatchTransform, Split


def training_batches(
    split: Split,
    indices: Tensor,
    batch_size: int,
    drop_last: bool,
    generator: torch.Generator,
    device: torch.device,
    transform: BatchTransform | None,
    num_workers: int,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Shuffled ``(inputs, labels, sample index)`` batches over ``indices`` of the split.

    All randomness (order, augmentation) comes from ``generator``, whose state a checkpoint
    saves, so a resumed run sees exactly the batches an uninterrupted one would.
    """
    order = indices[torch.randperm(len(indices), generator=generator)]
    usable = len(order) - len(order) % batch_size if drop_last else len(order)
    if split.in_memory:
        for start in range(0, usable, batch_size):
            index = order[start : start + batch_size]
            inputs = split.inputs[index].to(device, non_blocking=True)
            if transform is not None:
                inputs = transform(inputs, generator)
            yield inputs, split.labels[index].to(device, non_blocking=True), index.to(device)
        return
    loader = DataLoader(
        _Indexed(split.inputs),
        batch_size=batch_size,
        sampler=order[:usable].tolist(),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    for inputs, labels, index in loader:
        yield inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True), index.to(device)


def evaluation_batches(
    split: Split, batch_size: int, device: torch.device, num_workers: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(inputs, labels, sample index)`` in order, without augmentation."""
    if split.in_memory:
        for start in range(0, len(split), batch_size):
            index = torch.arange(start, min(start + batch_size, len(split)))
            yield split.inputs[index].to(device), split.labels[index].to(device), index.to(device)
        return
    loader = DataLoader(_Indexed(split.inputs), batch_size=batch_size, num_workers=num_workers)
    for inputs, labels, index in loader:
        yield inputs.to(device), labels.to(device), index.to(device)


class _Indexed(Dataset):
    """Adds each sample's index to what the wrapped dataset returns."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        inputs, label = self.dataset[index]
        return inputs, torch.as_tensor(label), index
