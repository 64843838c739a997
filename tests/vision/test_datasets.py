"""The vision datasets on tiny files written in the official formats (see conftest.py)."""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from kdcore.api import DatasetContext
from kdcore.errors import KdcoreError
from kdcore.registry import load_registry
from kdcore_vision.transforms import normalize, random_crop_flip

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture
def build(registry):
    def build(name, **params):
        spec = registry.get("dataset", name).spec
        return spec.builder()(spec.params(**params), DatasetContext(seed=0))
    return build


def _images(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(data).reshape(-1, 3, 32, 32)


def _rows(images: torch.Tensor) -> set[bytes]:
    return {image.numpy().tobytes() for image in images}


# --- loading ---------------------------------------------------------------------------------

def test_cifar10_loads_the_official_layout(build, write_cifar10, tmp_path):
    written = write_cifar10(tmp_path)
    bundle = build("cifar10", root=str(tmp_path))
    assert bundle.num_classes == 10 and bundle.input_shape == (3, 32, 32)
    assert bundle.val is None
    train, test = bundle.train, bundle.test
    assert train.inputs.shape == (100, 3, 32, 32) and train.inputs.dtype == torch.uint8
    assert test.inputs.shape == (20, 3, 32, 32)
    assert torch.equal(train.labels, torch.from_numpy(written.train_labels).long())
    assert torch.equal(test.labels, torch.from_numpy(written.test_labels).long())
    # rows are channel-major: red plane, green plane, blue plane, each row by row
    n, c, y, x = 37, 2, 5, 30
    assert train.inputs[n, c, y, x] == written.train_data[n, c * 1024 + y * 32 + x]
    assert torch.equal(test.inputs, _images(written.test_data))


def test_cifar100_reads_fine_labels(build, write_cifar100, tmp_path):
    written = write_cifar100(tmp_path)
    bundle = build("cifar100", root=str(tmp_path))
    assert bundle.num_classes == 100
    assert torch.equal(bundle.train.inputs, _images(written.train_data))
    assert torch.equal(bundle.train.labels, torch.from_numpy(written.train_labels).long())
    assert torch.equal(bundle.test.labels, torch.from_numpy(written.test_labels).long())


def test_root_defaults_to_kdcore_data(build, write_cifar10, tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    monkeypatch.setenv("KDCORE_DATA", str(tmp_path))
    assert len(build("cifar10").train) == 100


def test_missing_files_name_the_expected_paths(build, write_cifar10, tmp_path):
    with pytest.raises(KdcoreError) as error:
        build("cifar100", root=str(tmp_path))
    assert str(tmp_path / "cifar-100-python" / "train") in str(error.value)
    assert "cifar-100-python.tar.gz" in str(error.value)

    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(KdcoreError, match="data_batch_3") as error:
        build("cifar10", root=str(tmp_path))
    assert "data_batch_1" not in str(error.value)


def test_malformed_file_is_reported(build, write_cifar10, tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    with pytest.raises(KdcoreError, match="test_batch.*b'labels'"):
        build("cifar10", root=str(tmp_path))


# --- transforms ------------------------------------------------------------------------------

def test_eval_transform_normalises_with_the_published_statistics(build, write_cifar100, tmp_path):
    write_cifar100(tmp_path)
    bundle = build("cifar100", root=str(tmp_path))
    images = bundle.test.inputs[:8]
    out = bundle.eval_transform(images)
    assert out.dtype == torch.float32 and out.shape == images.shape
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    assert torch.allclose(out, (images.float() / 255 - mean) / std, atol=1e-6)


def test_train_transform_is_crop_flip_then_normalise(build, write_cifar10, tmp_path):
    write_cifar10(tmp_path)
    bundle = build("cifar10", root=str(tmp_path))
    images = bundle.train.inputs[:16]
    out = bundle.train_transform(images, torch.Generator().manual_seed(3))
    assert out.dtype == torch.float32 and out.shape == images.shape
    expected = normalize(random_crop_flip(images, torch.Generator().manual_seed(3)),
                         CIFAR10_MEAN, CIFAR10_STD)
    assert torch.equal(out, expected)
    again = bundle.train_transform(images, torch.Generator().manual_seed(3))
    other = bundle.train_transform(images, torch.Generator().manual_seed(4))
    assert torch.equal(out, again) and not torch.equal(out, other)


def _reference_variants(image: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Every crop of the zero-padded image, unflipped and flipped, one image at a time:
    (offset_y, offset_x, flipped) -> index (oy * 9 + ox) * 2 + flipped."""
    padded = F.pad(image, (padding,) * 4)
    variants = []
    for oy in range(2 * padding + 1):
        for ox in range(2 * padding + 1):
            crop = padded[:, oy:oy + 32, ox:ox + 32]
            variants += [crop, torch.flip(crop, dims=[2])]
    return torch.stack(variants)


def test_random_crop_flip_matches_a_per_image_reference():
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    variants = _reference_variants(image).flatten(1)  # (162, 3072)
    generator = torch.Generator().manual_seed(0)
    found = []
    for _ in range(8):
        out = random_crop_flip(image.expand(64, -1, -1, -1), generator)
        assert out.shape == (64, 3, 32, 32) and out.dtype == torch.uint8
        matches = (out.flatten(1)[:, None, :] == variants[None]).all(dim=2)  # (64, 162)
        assert (matches.sum(dim=1) == 1).all(), "every output is exactly one crop(+flip)"
        found.append(matches.float().argmax(dim=1))
    found = torch.cat(found)
    offsets_y, offsets_x, flipped = found // 18, found // 2 % 9, found % 2
    assert 0.35 < flipped.float().mean() < 0.65
    # all nine offsets occur along both axes (512 draws), so samples are cropped independently
    assert set(offsets_y.tolist()) == set(range(9)) and set(offsets_x.tolist()) == set(range(9))


# --- validation split, binary and semi-supervised variants -----------------------------------

def test_val_split_is_balanced_seeded_and_disjoint(build, write_cifar10, tmp_path):
    written = write_cifar10(tmp_path)
    bundle = build("cifar10", root=str(tmp_path), val_size=20, split_seed=1)
    train, val = bundle.train, bundle.val
    assert len(train) == 80 and len(val) == 20
    assert torch.equal(torch.bincount(val.labels, minlength=10), torch.full((10,), 2))
    train_rows, val_rows = _rows(train.inputs), _rows(val.inputs)
    assert not train_rows & val_rows
    assert train_rows | val_rows == _rows(_images(written.train_data))
    same = build("cifar10", root=str(tmp_path), val_size=20, split_seed=1).val
    other = build("cifar10", root=str(tmp_path), val_size=20, split_seed=2).val
    assert torch.equal(same.inputs, val.inputs) and not torch.equal(other.inputs, val.inputs)
    with pytest.raises(KdcoreError, match="val_size"):
        build("cifar10", root=str(tmp_path), val_size=100)


def test_binary_cifar10_merges_classes(build, write_cifar10, tmp_path):
    written = write_cifar10(tmp_path)
    bundle = build("binary-cifar", root=str(tmp_path))  # default: 0-4 vs 5-9
    assert bundle.num_classes == 2
    assert torch.equal(bundle.train.labels, torch.from_numpy(written.train_labels < 5).long())
    assert torch.equal(bundle.train.inputs, _images(written.train_data))


def test_binary_cifar100_keeps_two_classes(build, write_cifar100, tmp_path):
    written = write_cifar100(tmp_path)
    bundle = build("binary-cifar", root=str(tmp_path), base="cifar100", positive=[20], negative=[40])
    for split, data, labels in ((bundle.train, written.train_data, written.train_labels),
                                (bundle.test, written.test_data, written.test_labels)):
        kept = np.isin(labels, [20, 40])
        assert torch.equal(split.inputs, _images(data[kept]))
        assert torch.equal(split.labels, torch.from_numpy(labels[kept] == 20).long())
    assert len(bundle.train) == 6 and len(bundle.test) == 2


@pytest.mark.parametrize("params, message", [
    ({"positive": [1, 2], "negative": [2, 3]}, "both positive and negative"),
    ({"positive": [10], "negative": [0]}, r"not in cifar10"),
    ({"base": "cifar100", "positive": [100], "negative": [0]}, r"not in cifar100"),
    ({"positive": [], "negative": [0]}, "at least 1"),
])
def test_binary_params_are_validated(registry, params, message):
    with pytest.raises(ValidationError, match=message):
        registry.get("dataset", "binary-cifar").spec.params(**params)


def test_semisup_marks_a_balanced_seeded_labelled_subset(build, write_cifar10, tmp_path):
    write_cifar10(tmp_path)
    bundle = build("semisup-cifar10", root=str(tmp_path), labeled=40, label_seed=5)
    mask = bundle.train.labeled
    assert mask.dtype == torch.bool and mask.shape == (100,) and int(mask.sum()) == 40
    assert torch.equal(torch.bincount(bundle.train.labels[mask], minlength=10), torch.full((10,), 4))
    same = build("semisup-cifar10", root=str(tmp_path), labeled=40, label_seed=5).train.labeled
    other = build("semisup-cifar10", root=str(tmp_path), labeled=40, label_seed=6).train.labeled
    assert torch.equal(same, mask) and not torch.equal(other, mask)
    assert bundle.test.labeled is None

    fraction = build("semisup-cifar10", root=str(tmp_path), labeled=0.2).train.labeled
    assert int(fraction.sum()) == 20
    with_val = build("semisup-cifar10", root=str(tmp_path), labeled=30, val_size=20)
    assert len(with_val.train) == 80 and int(with_val.train.labeled.sum()) == 30
    with pytest.raises(KdcoreError, match="labeled"):
        build("semisup-cifar10", root=str(tmp_path), labeled=200)


@pytest.mark.parametrize("labeled", [5, 0.0, 1.5])
def test_semisup_params_are_validated(registry, labeled):
    with pytest.raises(ValidationError):
        registry.get("dataset", "semisup-cifar10").spec.params(labeled=labeled)


# --- ImageNet folders ------------------------------------------------------------------------

def test_imagenet_folders(build, write_imagenet, tmp_path):
    write_imagenet(tmp_path)
    (tmp_path / "train" / "n01443537" / "notes.txt").write_text("not an image")
    bundle = build("imagenet", root=str(tmp_path), crop_size=16, resize_size=20)
    assert bundle.num_classes == 3 and bundle.input_shape == (3, 16, 16)
    assert not bundle.train.in_memory and len(bundle.train) == 12 and len(bundle.test) == 6
    assert bundle.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert bundle.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    image, label = bundle.train.inputs[5]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 1
    first, label = bundle.test.inputs[3]
    assert first.shape == (3, 16, 16) and label == 1
    assert torch.equal(first, bundle.test.inputs[3][0])  # evaluation is deterministic
    assert bundle.test.inputs.files[3].name == "n01443537_1.JPEG"


def test_imagenet_missing_or_inconsistent(build, write_imagenet, tmp_path):
    with pytest.raises(KdcoreError) as error:
        build("imagenet", root=str(tmp_path))
    assert f"{tmp_path / 'train'}/<wnid>/*.JPEG" in str(error.value)
    write_imagenet(tmp_path)
    (tmp_path / "val" / "n99999999").mkdir()
    with pytest.raises(KdcoreError, match="n99999999"):
        build("imagenet", root=str(tmp_path))
    with pytest.raises(ValidationError):
        build("imagenet", root=str(tmp_path), crop_size=32, resize_size=16)
