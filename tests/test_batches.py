"""Batches of ``Dataset`` splits: a split's ``collate`` builds them, and the bundle's transforms
apply to them exactly when the split has one (``Split.batch_transformed``)."""

import torch
from torch import nn
from torch.utils.data import Dataset

from kdcore.nn import Split
from kdcore.engine.accelerator import Accelerator, AcceleratorSettings
from kdcore.engine.data import Augmentation, evaluation_batches, training_batches
from kdcore.engine.evaluate import evaluate

CPU = Accelerator.resolve(AcceleratorSettings(device="cpu"))


class Ragged(Dataset):
    """Item ``i`` is ``(i + 1)`` copies of ``i``: lengths differ, so the default collate fails."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int):
        return torch.full((index + 1,), float(index)), index % 3


def collate_lists(items):
    inputs, labels = zip(*items)
    return list(inputs), torch.tensor(labels)


def first_values(inputs: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([row[:1] for row in inputs])


def test_a_collate_split_gets_its_batches_transformed():
    split = Split(inputs=Ragged(), labels=torch.arange(6) % 3, collate=collate_lists)
    assert split.batch_transformed
    seen = []

    def transform(inputs, generator):
        seen.append(inputs)
        return first_values(inputs) + torch.rand(1, generator=generator)

    generator = torch.Generator().manual_seed(0)
    batches = list(training_batches(split, torch.arange(6), 4, drop_last=False, generator=generator, device=CPU.device,
                                    augmentation=Augmentation(transform)))
    assert [len(inputs) for inputs in seen] == [4, 2] and isinstance(seen[0], list)
    for inputs, labels, index, _ in batches:
        assert torch.equal(labels, index % 3)
        assert torch.equal(inputs.floor().flatten(), index.float())  # each row came from its own sample

    inputs, labels, index = next(evaluation_batches(split, 4, CPU.device))
    assert isinstance(inputs, list) and index.tolist() == [0, 1, 2, 3] and labels.tolist() == [0, 1, 2, 0]
    logits = nn.Sequential(nn.Flatten(), nn.Linear(1, 3))
    metrics = evaluate(logits, split, CPU, batch_size=4, transform=first_values)
    assert 0 <= metrics["top1"] <= 100


def test_a_dataset_split_without_collate_is_not_transformed():
    class Stackable(Dataset):
        def __len__(self) -> int:
            return 5

        def __getitem__(self, index: int):
            return torch.full((2,), float(index)), 0

    split = Split(inputs=Stackable(), labels=torch.zeros(5, dtype=torch.long))
    assert not split.batch_transformed

    def fail(*_):
        raise AssertionError("a Dataset split without collate transforms its items itself")

    generator = torch.Generator().manual_seed(0)
    for inputs, _, index, _ in training_batches(split, torch.arange(5), 2, drop_last=False, generator=generator,
                                                device=CPU.device, augmentation=Augmentation(fail)):
        assert torch.equal(inputs[:, 0], index.float())
    evaluate(nn.Linear(2, 3), split, CPU, batch_size=2, transform=fail)
