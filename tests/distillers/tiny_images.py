"""End-to-end runs of image distillers through the real trainer: a tiny in-memory CIFAR-shaped
dataset registered beside the installed plugins, resnet8 teacher and student, one epoch each."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kdcore.api import DatasetSpec
from kdcore.nn import DatasetBundle, Split
from kdcore.registry import Registry
from kdcore.testing import run_recipe

NUM_CLASSES = 4


def build_tiny_images(params, ctx) -> DatasetBundle:
    generator = torch.Generator().manual_seed(0)

    def split(count: int) -> Split:
        labels = torch.arange(count) % NUM_CLASSES
        # a class-dependent colour offset, so that the teacher learns something in one epoch
        inputs = torch.randn(count, 3, 32, 32, generator=generator) + labels[:, None, None, None] * 0.5
        return Split(inputs=inputs, labels=labels)

    return DatasetBundle(num_classes=NUM_CLASSES, input_shape=(3, 32, 32), train=split(32),
                         test=split(16), views={"strong": strongly_perturbed})


def strongly_perturbed(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The tiny set's "strong" view (for MLKD): the images with heavy Gaussian noise. The real
    strong augmentation (RandAugment + Cutout) works on uint8 CIFAR images and has its own tests."""
    noise = torch.randn(inputs.shape, generator=generator).to(inputs.device)
    return inputs + noise


def run_resnet8_pair(registry: Registry, write_recipe, directory: Path, distiller: dict, epochs: int = 1) -> Path:
    """Train a resnet8 teacher (CE) and distil a resnet8 student with ``distiller`` (a recipe
    entry), ``epochs`` each, batch 16; returns the run directory."""
    recipe = {
        "name": "tiny-images",
        "seed": 0,
        "data": {"name": "tiny-images"},
        "optimizer": {"lr": 0.05, "momentum": 0.9},
        "teacher": {"arch": {"name": "resnet8"}, "objective": {"name": "ce"}, "epochs": epochs,
                    "batch_size": 16},
        "student": {"arch": {"name": "resnet8"}, "distillers": [distiller], "epochs": epochs,
                    "batch_size": 16},
        "runtime": {"device": "cpu", "threads": 1},
    }
    tiny_images = DatasetSpec(name="tiny-images", summary="test", build=build_tiny_images)
    run_recipe(recipe, directory, registry, components=[tiny_images])
    return directory


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
