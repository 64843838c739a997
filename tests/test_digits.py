"""The digits plugin: scikit-learn's 8×8 digits (stratified, seeded split; ±1-pixel shifts) and
the digits-cnn family (its taps). Tests that read the images skip without scikit-learn."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdcore.api import ArchitectureContext, DatasetContext
from kdcore.errors import KdcoreError

from kdcore_digits import DigitsCNNParams, DigitsParams, _cnn_taps
from kdcore_digits.cnn import DigitsCNN, build_digits_cnn
from kdcore_digits.data import (
    MISSING_SKLEARN,
    RandomShift,
    build_digits,
    class_quotas,
    load_digits_tensors,
    random_shift,
    stratified_split,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sklearn():
    return pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def bundle(sklearn):
    return build_digits(DigitsParams(), DatasetContext(seed=0))


def test_images_are_in_memory_floats_in_unit_range(bundle):
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 8, 8)
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.in_memory and split.inputs.dtype == torch.float32
        assert split.inputs.shape[1:] == (1, 8, 8)
        assert float(split.inputs.min()) == 0.0 and float(split.inputs.max()) == 1.0  # 16 / 16
        assert split.labels.dtype == torch.int64 and set(split.labels.tolist()) == set(range(10))


def test_default_split_sizes_and_stratification(bundle):
    sizes = [len(s) for s in (bundle.train, bundle.val, bundle.test)]
    assert sizes == [1077, 180, 540]
    everything = torch.cat([bundle.train.labels, bundle.val.labels, bundle.test.labels])
    totals = torch.bincount(everything, minlength=10)
    assert totals.tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    for split, size in zip((bundle.train, bundle.val, bundle.test), sizes):
        share = totals.double() * size / 1797
        counts = torch.bincount(split.labels, minlength=10)
        assert ((counts - share).abs() < 1).all(), (counts, share)


def test_split_is_a_partition_fixed_by_split_seed_alone(sklearn):
    labels = load_digits_tensors()[1]
    train, val, test = stratified_split(labels, 180, 540, seed=0)
    union = torch.cat([train, val, test])
    assert len(union) == 1797 and len(union.unique()) == 1797
    again = stratified_split(labels, 180, 540, seed=0)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    other = stratified_split(labels, 180, 540, seed=1)
    assert not torch.equal(test, other[2])
    one = build_digits(DigitsParams(), DatasetContext(seed=0))
    two = build_digits(DigitsParams(), DatasetContext(seed=7))  # the run seed does not move it
    assert torch.equal(one.test.inputs, two.test.inputs) and torch.equal(one.train.labels, two.train.labels)


def test_fractions_counts_and_no_validation(sklearn):
    bundle = build_digits(DigitsParams(val_size=0, test_size=0.25), DatasetContext(seed=0))
    assert bundle.val is None and len(bundle.test) == round(0.25 * 1797) and len(bundle.train) == 1797 - 449


def test_class_quotas_sum_to_the_total_and_follow_the_shares():
    counts = torch.tensor([5, 3, 2])
    assert class_quotas(counts, 5).tolist() == [3, 1, 1]  # exact 2.5, 1.5, 1.0: ties to the lower class
    assert class_quotas(counts, 0).tolist() == [0, 0, 0]
    assert int(class_quotas(torch.tensor([178, 182, 177]), 100).sum()) == 100


def test_params_reject_impossible_sizes():
    with pytest.raises(ValueError, match="fraction must be below 1"):
        DigitsParams(val_size=1.0)
    with pytest.raises(ValueError, match="leave fewer than 10"):
        DigitsParams(val_size=900, test_size=0.5)


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[y, x] = image[y - dy, x - dx]`` where that exists, else 0, pixel by pixel."""
    out = torch.zeros_like(image)
    _, height, width = image.shape
    for y in range(height):
        for x in range(width):
            if 0 <= y - dy < height and 0 <= x - dx < width:
                out[:, y, x] = image[:, y - dy, x - dx]
    return out


def test_shift_moves_each_image_by_at_most_one_pixel_with_blank_fill():
    images = torch.rand(64, 2, 8, 8) + 0.1  # no zero pixels, so a blank border is visible
    out = random_shift(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.is_contiguous()
    found = set()
    for image, moved in zip(images, out):
        matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if torch.equal(moved, shifted(image, dy, dx))]
        assert len(matches) == 1
        found.add(matches[0])
    assert len(found) == 9  # every move occurs (P(one missing in 64 draws) ≈ 5e-3 · 9, fixed seed)


def test_shift_is_seeded_by_the_generator_and_zero_means_none():
    images = torch.rand(32, 1, 8, 8)
    first = random_shift(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, random_shift(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, random_shift(images, torch.Generator().manual_seed(6)))
    assert random_shift(images, torch.Generator(), max_shift=0) is images
    two = RandomShift(2)(images, torch.Generator().manual_seed(0))
    assert two.shape == images.shape


def test_bundle_transforms(bundle, sklearn):
    assert bundle.train_transform == RandomShift(1) and bundle.eval_transform is None
    assert build_digits(DigitsParams(shift=0), DatasetContext(seed=0)).train_transform is None


def test_missing_scikit_learn_is_a_one_line_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(KdcoreError) as error:
        build_digits(DigitsParams(), DatasetContext(seed=0))
    assert str(error.value) == MISSING_SKLEARN == "dataset 'digits' needs scikit-learn: pip install 'kdcore[digits]'"


def record_taps(model: nn.Module, taps: dict, inputs: torch.Tensor) -> dict:
    """Each tap's tensor(s), resolving module paths and ``module:input`` as kdcore documents."""
    recorded: dict = {}
    handles = []

    def hook(key, position, use_input):
        def record(module, args, output):
            recorded.setdefault(key, {})[position] = args[0] if use_input else output
        return record

    for key, paths in taps.items():
        for position, path in enumerate(paths if isinstance(paths, tuple) else (paths,)):
            name, _, which = path.partition(":")
            handles.append(model.get_submodule(name).register_forward_hook(hook(key, position, which == "input")))
    logits = model(inputs)
    for handle in handles:
        handle.remove()
    return {"logits": logits} | {
        key: [v for _, v in sorted(found.items())] if isinstance(taps[key], tuple) else found[0]
        for key, found in recorded.items()
    }


@pytest.mark.parametrize("width,depth", [(4, 1), (8, 2)])
def test_cnn_taps_have_the_declared_shapes(width, depth):
    params = DigitsCNNParams(width=width, depth=depth)
    model = build_digits_cnn(params, ArchitectureContext(num_classes=10, input_shape=(1, 8, 8)))
    taps = _cnn_taps(params)
    assert set(taps) == {"stem", "stages", "preact_stages", "pooled"}
    for path in taps["preact_stages"]:
        assert isinstance(model.get_submodule(path), nn.BatchNorm2d)
    features = record_taps(model, taps, torch.randn(5, 1, 8, 8))
    w = width
    assert features["logits"].shape == (5, 10)
    assert features["stem"].shape == (5, w, 8, 8)
    assert [f.shape[1:] for f in features["stages"]] == [(w, 8, 8), (2 * w, 4, 4), (4 * w, 2, 2)]
    assert [f.shape for f in features["preact_stages"]] == [f.shape for f in features["stages"]]
    assert (torch.stack([f.min() for f in features["stages"]]) >= 0).all()  # after ReLU
    assert features["pooled"].shape == (5, 4 * w)
    assert torch.allclose(model.fc(features["pooled"]), features["logits"])


def test_cnn_sizes():
    count = lambda w: sum(p.numel() for p in DigitsCNN(1, 10, width=w).parameters())  # noqa: E731
    assert [count(w) for w in (4, 8, 16, 32)] == [1854, 6866, 26394, 103466]


def test_registry_builds_both_components(sklearn):
    from kdcore.registry import load_registry

    registry = load_registry()
    dataset = registry.get("dataset", "digits").spec
    data = dataset.builder()(dataset.params(), DatasetContext(seed=0))
    arch = registry.get("architecture", "digits-cnn").spec
    params = arch.params(width=4)
    model = arch.builder()(params, ArchitectureContext(num_classes=data.num_classes, input_shape=data.input_shape))
    features = record_taps(model, arch.tap_paths(params), data.train_transform(data.train.inputs[:8], torch.Generator()))
    assert features["logits"].shape == (8, 10) and len(features["stages"]) == 3


def test_a_tiny_recipe_runs_with_kd_and_attention_transfer(sklearn, tmp_path, monkeypatch, capsys):
    from kdcore.cli import main

    recipe = tmp_path / "digits.yaml"
    recipe.write_text(
        "name: digits_tiny\nseed: 0\ndata: {name: digits}\noptimizer: {lr: 0.05}\n"
        "teacher:\n  arch: {name: digits-cnn, params: {width: 16}}\n  objective: {name: ce}\n"
        "  epochs: 3\n  batch_size: 64\n"
        "student:\n  arch: {name: digits-cnn, params: {width: 8}}\n  ce_weight: 0.1\n"
        "  distillers:\n    - {name: kd, weight: 0.9, params: {temperature: 4.0}}\n"
        "    - {name: at, weight: 50.0}\n  epochs: 3\n  batch_size: 64\n"
        "runtime: {device: cpu, threads: 1}\n"
    )
    monkeypatch.setattr(sys, "argv", ["kdcore", "run", str(recipe), "--run-dir", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    assert exit_info.value.code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["teacher"]["test"]["top1"] > 50, summary  # 3 epochs: far from the 98% of longer runs
    log = [json.loads(line) for line in (tmp_path / "run/student/metrics.jsonl").read_text().splitlines()]
    assert {"train/kd", "train/at"} <= set(log[0])
    assert log[-1]["train/at"] < log[0]["train/at"]


def test_the_digits_recipe_validates_with_40_runs(sklearn):
    from kdcore.config.loader import load_variants
    from kdcore.registry import load_registry

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "digits.yaml"
    _, runs = load_variants(recipe, [], load_registry())
    assert len(runs) == 2 * 2 * 10 and len({run.id for run in runs}) == 40
    teachers = {(run.recipe.teacher.objective.name, run.recipe.seed) for run in runs}
    assert teachers == {(objective, seed) for objective in ("ce", "mse") for seed in range(10)}
    assert {tuple(d.name for d in run.recipe.student.distillers) for run in runs} == {("kd",), ("kd", "pkt")}
