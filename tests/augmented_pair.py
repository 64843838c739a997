"""A resnet8 → resnet8 run on 16 tiny CIFAR-shaped images of 2 classes that are flipped at
random each batch: augmentation, so the teacher's features are computed live every step rather
than cached. Used to compare runtime settings (compiled or eager passes, GPU fast path)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kdcore.api import DatasetSpec
from kdcore.nn import DatasetBundle, Split
from kdcore.config.loader import load_variants
from kdcore.registry import PluginInfo, Registry
from kdcore.distill.run import Run


def build_flipped_images(params, ctx) -> DatasetBundle:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(16) % 2
    inputs = torch.randn(16, 3, 32, 32, generator=generator) + labels[:, None, None, None]

    def flip(batch: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        flips = (torch.rand(len(batch), generator=rng) < 0.5).to(batch.device)
        return torch.where(flips[:, None, None, None], batch.flip(3), batch)

    split = Split(inputs=inputs, labels=labels)
    return DatasetBundle(num_classes=2, input_shape=(3, 32, 32), train=split, test=split, train_transform=flip)


def train_pair(registry: Registry, write_recipe, directory: Path, runtime: dict, distillers: list[dict],
               epochs: int = 2) -> list[dict]:
    """Trains the pair with ``runtime`` settings; returns the student's per-epoch records."""
    patched = registry.with_component("dataset", DatasetSpec(name="flipped", summary="test", build=build_flipped_images),
                                      PluginInfo("t", "tests", "0"))
    recipe = {
        "name": directory.name,
        "data": {"name": "flipped"},
        "optimizer": {"lr": 0.02, "momentum": 0.9},
        "teacher": {"arch": {"name": "resnet8"}, "objective": {"name": "mse"}, "epochs": 1, "batch_size": 8},
        "student": {"arch": {"name": "resnet8"}, "epochs": epochs, "batch_size": 8, "distillers": distillers},
        "runtime": runtime,
    }
    [variant] = load_variants(write_recipe(recipe, f"{directory.name}.yaml"), [], patched)[1]
    Run(variant.recipe, directory, patched).execute()
    return [json.loads(line) for line in (directory / "student/metrics.jsonl").read_text().splitlines()]
