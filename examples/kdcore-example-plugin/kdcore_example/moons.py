"""The two-moons dataset, held in memory."""

import math

import torch

from kdcore.nn import DatasetBundle, Split


def build_two_moons(params, ctx):
    generator = torch.Generator().manual_seed(params.data_seed)

    def sample(count):
        labels = torch.randint(0, 2, (count,), generator=generator)
        angle = torch.rand(count, generator=generator) * math.pi
        upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
        points = torch.where(labels[:, None] == 0, upper, lower)
        points = points + params.noise * torch.randn(count, 2, generator=generator)
        return Split(inputs=points, labels=labels)

    return DatasetBundle(num_classes=2, input_shape=(2,), train=sample(params.n_train), test=sample(params.n_test))
