"""Training batches from a split: sliced from memory, or through a DataLoader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from kdcore.errors import KdcoreError
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
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Shuffled ``(inputs, labels, sample index)`` batches over ``indices`` of the split.

    All randomness (order, augmentation) comes from ``generator``, whose state a checkpoint
    saves, so a resumed run sees exactly the batches an uninterrupted one would. With several
    processes, ``batch_size`` is the global batch: every process draws the same order and takes
    its ``rank``-th share of each batch; an incomplete last batch is dropped, so that all
    processes take the same steps and draw the same random numbers. The transform applies where
    :attr:`Split.batch_transformed` says so.
    """
    order = indices[torch.randperm(len(indices), generator=generator)]
    usable = len(order) - len(order) % batch_size if drop_last or world_size > 1 else len(order)
    order = _share(order[:usable], batch_size, rank, world_size)
    usable = len(order)
    batch_size //= world_size
    if split.in_memory:
        # the order goes where the data is, once per epoch: indexing device data with CPU indices
        # would copy them there, and wait for the device, at every batch
        order = order.to(split.inputs.device, non_blocking=True)
        for start in range(0, usable, batch_size):
            index = order[start : start + batch_size]
            inputs = split.inputs[index].to(device, non_blocking=True)
            if transform is not None:
                inputs = transform(inputs, generator)
            yield inputs, split.labels[index].to(device, non_blocking=True), index.to(device, non_blocking=True)
        return
    loader = _loader(split, order, batch_size, num_workers, pin_memory=device.type == "cuda")
    for (inputs, labels), index in zip(loader, order.split(batch_size)):
        inputs = _to_device(inputs, device)
        if transform is not None and split.batch_transformed:
            inputs = transform(inputs, generator)
        yield inputs, labels.to(device, non_blocking=True), index.to(device)


def _share(order: Tensor, batch_size: int, rank: int, world_size: int) -> Tensor:
    """This process's part of every global batch, in order."""
    if world_size == 1:
        return order
    if batch_size % world_size:
        raise KdcoreError(f"batch_size {batch_size} must be divisible by the {world_size} processes")
    local = batch_size // world_size
    return torch.cat([
        order[start + rank * local : start + (rank + 1) * local] for start in range(0, len(order), batch_size)
    ])


def evaluation_batches(
    split: Split, batch_size: int, device: torch.device, num_workers: int, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(inputs, labels, sample index)`` in order, without augmentation and, for a split with a
    ``collate``, inputs as it returned them (the caller applies the eval transform); with several
    processes, every ``world_size``-th sample from ``rank`` on."""
    positions = torch.arange(rank, len(split), world_size)
    if split.in_memory:
        for start in range(0, len(positions), batch_size):
            index = positions[start : start + batch_size]
            yield split.inputs[index].to(device), split.labels[index].to(device), index.to(device)
        return
    loader = _loader(split, positions, batch_size, num_workers)
    for (inputs, labels), index in zip(loader, positions.split(batch_size)):
        yield _to_device(inputs, device), labels.to(device), index.to(device)


def _loader(split: Split, order: Tensor, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches of the split's ``Dataset`` in ``order``: consecutive chunks of ``batch_size`` samples,
    so the sample indices of each batch are the matching chunk of ``order``."""
    return DataLoader(split.inputs, batch_size=batch_size, sampler=order.tolist(), num_workers=num_workers,
                      pin_memory=pin_memory, collate_fn=split.collate)


def _to_device(inputs: Any, device: torch.device) -> Any:
    """Tensor inputs on the device; other inputs (what a split's ``collate`` returned) stay as they
    are, for the transform to place."""
    return inputs.to(device, non_blocking=True) if isinstance(inputs, Tensor) else inputs
