"""``data.normalization``: a dataset normalised as the teacher's (or student's) weights expect, or
with given statistics; refused, naming the field, where it cannot apply."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError

from kdcore.config.schema import Recipe
from kdcore.distill.dataset import build_dataset
from kdcore.distill.store import teacher_key
from kdcore.errors import KdcoreError
from kdcore.export import read_metadata
from kdcore.testing import run_recipe

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@pytest.fixture
def recipe(write_cifar10, tmp_path):
    write_cifar10(tmp_path / "data")
    return {
        "name": "norm",
        "data": {"name": "cifar10", "params": {"root": str(tmp_path / "data")}},
        "optimizer": {"lr": 0.05},
        "teacher": {"arch": {"name": "torchvision", "params": {"model": "resnet18"}}, "objective": {"name": "ce"},
                    "epochs": 1, "batch_size": 50},
        "student": {"arch": {"name": "resnet8"}, "distillers": [{"name": "kd"}], "epochs": 1, "batch_size": 50},
        "runtime": {"device": "cpu"},
    }


def validated(document, registry):
    return Recipe.model_validate(document, context={"registry": registry})


def with_normalization(document, value):
    document = copy.deepcopy(document)
    document["data"]["normalization"] = value
    return document


def expected(images, statistics):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in statistics)
    return (images.float() / 255 - mean) / std


@pytest.mark.parametrize("value, statistics", [
    ("dataset", CIFAR10),
    ("teacher", IMAGENET),
    ({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}, ((0.5,) * 3, (0.25, 0.5, 1.0))),
])
def test_every_transform_uses_the_normalisation_asked_for(recipe, kdcore_registry, value, statistics):
    bundle = build_dataset(kdcore_registry, validated(with_normalization(recipe, value), kdcore_registry), "cpu", {})
    assert [list(v) for v in bundle.normalization] == [pytest.approx(list(v)) for v in statistics]
    images = bundle.test.inputs[:6]
    assert torch.allclose(bundle.eval_transform(images), expected(images, statistics), atol=1e-6)
    # the training and strong views crop and flip first: an image of one colour shows the normalisation
    flat = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    trained = bundle.train_transform(flat, generator)
    assert torch.allclose(trained[:, :, 4:28, 4:28], expected(flat, statistics)[:, :, 4:28, 4:28], atol=1e-6)


def test_the_default_leaves_the_recipe_and_stored_teachers_as_before(recipe, kdcore_registry):
    plain = validated(recipe, kdcore_registry)
    assert "normalization" not in plain.model_dump(mode="json")["data"]
    assert teacher_key(validated(with_normalization(recipe, "dataset"), kdcore_registry), kdcore_registry) \
        == teacher_key(plain, kdcore_registry)
    assert teacher_key(validated(with_normalization(recipe, "teacher"), kdcore_registry), kdcore_registry) \
        != teacher_key(plain, kdcore_registry)


def test_a_run_trains_on_and_exports_the_teachers_normalisation(recipe, kdcore_registry, tmp_path):
    summary = run_recipe(with_normalization(recipe, "teacher"), tmp_path / "run", kdcore_registry)
    assert 0 <= summary["student"]["test"]["top1"] <= 100
    for stage in ("teacher", "student"):
        metadata = read_metadata(tmp_path / "run" / stage / "model.safetensors")
        assert metadata["normalization"] == {"mean": pytest.approx(list(IMAGENET[0])),
                                             "std": pytest.approx(list(IMAGENET[1]))}


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(data={"name": "gaussian", "normalization": "teacher"}),
     "dataset 'gaussian' .* applies no per-channel normalisation .* remove data.normalization"),
    (lambda r: r.pop("teacher"), "data.normalization: teacher .* the recipe has no teacher stage"),
    (lambda r: r["data"].update(normalization="student"),
     "data.normalization: student: architecture 'resnet8' does not say .* give {mean"),
    (lambda r: r["data"].update(normalization={"mean": [0.5, 0.5], "std": [0.5]}), "mean has 2 values and std 1"),
    (lambda r: r["data"].update(normalization={"mean": [0.5] * 3, "std": [0.5, 0.0, 0.5]}), "greater than 0"),
    (lambda r: r["data"].update(normalization="imagenet"), "Input should be 'dataset', 'teacher' or 'student'"),
])
def test_impossible_requests_are_refused_naming_the_field(recipe, kdcore_registry, change, message):
    document = with_normalization(recipe, "teacher")
    change(document)
    if document["data"]["name"] == "gaussian":
        document["data"]["params"] = {}
    with pytest.raises(ValidationError, match=message):
        validated(document, kdcore_registry)


def test_statistics_for_other_channels_are_refused_naming_the_dataset(recipe, kdcore_registry):
    document = with_normalization(recipe, {"mean": [0.5], "std": [0.5]})
    with pytest.raises(KdcoreError, match="data.normalization: CIFAR-10 images have 3 channels.* 1 means and 1 stds"):
        build_dataset(kdcore_registry, validated(document, kdcore_registry), "cpu", {})
