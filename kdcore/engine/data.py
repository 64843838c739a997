"""Training batches from a split: sliced from memory, or through a DataLoader."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from kdcore.errors import KdcoreError
from kdcore.nn import BatchTransform, Split


@dataclass(frozen=True)
class LoaderSettings:
    """How batches of a ``Dataset`` split are read (in-memory splits need none of this)."""

    num_workers: int = 0


@dataclass(frozen=True)
class Augmentation:
    """The random transform of training batches, and the other views some methods ask for."""

    transform: BatchTransform | None = None
    views: Mapping[str, BatchTransform] = field(default_factory=dict)


class LoadedBatch(NamedTuple):
    inputs: Tensor
    labels: Tensor
    index: Tensor
    views: dict[str, Tensor]


def training_batches(
    split: Split,
    indices: Tensor,
    batch_size: int,
    *,
    drop_last: bool,
    generator: torch.Generator,
    device: torch.device,
    augmentation: Augmentation = Augmentation(),
    loader: LoaderSettings = LoaderSettings(),
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[LoadedBatch]:
    """Shuffled batches over ``indices`` of the split: inputs, labels, sample index, and the
    requested views of the same samples (each made from the stored inputs, after the main
    transform, with the same generator).

    All randomness (order, augmentation) comes from ``generator``, whose state a checkpoint
    saves, so a resumed run sees exactly the batches an uninterrupted one would. With several
    processes, ``batch_size`` is the global batch: every process draws the same order and takes
    its ``rank``-th share of each batch; an incomplete last batch is dropped, so that all
    processes take the same steps and draw the same random numbers. The augmentation applies
    where :attr:`Split.batch_transformed` says so.
    """
    order = indices[torch.randperm(len(indices), generator=generator)]
    usable = len(order) - len(order) % batch_size if drop_last or world_size > 1 else len(order)
    order = _share(order[:usable], batch_size, rank, world_size)
    usable = len(order)
    batch_size //= world_size
    if augmentation.views and not split.batch_transformed:
        raise KdcoreError(f"augmented views ({', '.join(augmentation.views)}) need a dataset whose batches "
                          "are transformed whole (in memory, or with a collate)")
    if split.in_memory:
        # the order goes where the data is, once per epoch: indexing device data with CPU indices
        # would copy them there, and wait for the device, at every batch
        order = order.to(split.inputs.device, non_blocking=True)
        for start in range(0, usable, batch_size):
            index = order[start : start + batch_size]
            inputs, views = _augment(split.inputs[index].to(device, non_blocking=True), augmentation, generator)
            yield LoadedBatch(inputs, split.labels[index].to(device, non_blocking=True),
                              index.to(device, non_blocking=True), views)
        return
    batches = _loader(split, order, batch_size, loader, pin_memory=device.type == "cuda")
    for (stored, labels), index in zip(batches, order.split(batch_size)):
        stored = _to_device(stored, device)
        if split.batch_transformed:
            inputs, views = _augment(stored, augmentation, generator)
        else:
            inputs, views = stored, {}
        yield LoadedBatch(inputs, labels.to(device, non_blocking=True), index.to(device), views)


def _augment(stored: Any, augmentation: Augmentation, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
    inputs = stored if augmentation.transform is None else augmentation.transform(stored, generator)
    return inputs, {name: view(stored, generator) for name, view in augmentation.views.items()}


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
    split: Split, batch_size: int, device: torch.device, loader: LoaderSettings = LoaderSettings(),
    rank: int = 0, world_size: int = 1,
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
    batches = _loader(split, positions, batch_size, loader)
    for (inputs, labels), index in zip(batches, positions.split(batch_size)):
        yield _to_device(inputs, device), labels.to(device), index.to(device)


def _loader(split: Split, order: Tensor, batch_size: int, settings: LoaderSettings, pin_memory: bool = False) -> DataLoader:
    """Batches of the split's ``Dataset`` in ``order``: consecutive chunks of ``batch_size`` samples,
    so the sample indices of each batch are the matching chunk of ``order``."""
    return DataLoader(split.inputs, batch_size=batch_size, sampler=order.tolist(), num_workers=settings.num_workers,
                      pin_memory=pin_memory, collate_fn=split.collate)


def _to_device(inputs: Any, device: torch.device) -> Any:
    """Tensor inputs on the device; other inputs (what a split's ``collate`` returned) stay as they
    are, for the transform to place."""
    return inputs.to(device, non_blocking=True) if isinstance(inputs, Tensor) else inputs
