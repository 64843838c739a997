"""Tiny datasets in the real on-disk formats, for tests that load data.

The factory fixtures (``write_cifar10``, ``write_cifar100``, ``write_imagenet``) return functions
that write into a folder and return what they wrote, so a test can compare.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@dataclass
class WrittenCifar:
    root: Path
    train_data: np.ndarray
    """uint8 (N, 3072), all training rows in file order"""
    train_labels: np.ndarray
    test_data: np.ndarray
    test_labels: np.ndarray


def _balanced_labels(count: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(count) % classes)


def _dump(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=2)


def write_cifar10_files(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> WrittenCifar:
    """``<root>/cifar-10-batches-py/`` as in cifar-10-python.tar.gz: five training batches, a
    test batch and ``batches.meta``, each a pickled dict with bytes keys."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    train_data, train_labels = [], []
    for i in range(1, 7):
        count = per_batch if i <= 5 else test
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = _balanced_labels(count, 10, rng)
        name = f"data_batch_{i}" if i <= 5 else "test_batch"
        _dump(folder / name, {
            b"batch_label": f"batch {i}".encode(),
            b"labels": labels.tolist(),
            b"data": data,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(count)],
        })
        if i <= 5:
            train_data.append(data)
            train_labels.append(labels)
    _dump(folder / "batches.meta", {
        b"num_cases_per_batch": per_batch,
        b"label_names": [f"class{c}".encode() for c in range(10)],
        b"num_vis": 3072,
    })
    return WrittenCifar(root, np.concatenate(train_data), np.concatenate(train_labels), data, labels)


def write_cifar100_files(root: Path, train: int = 300, test: int = 100, seed: int = 0) -> WrittenCifar:
    """``<root>/cifar-100-python/{train,test,meta}`` as in cifar-100-python.tar.gz."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    written = []
    for name, count in (("train", train), ("test", test)):
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        fine = _balanced_labels(count, 100, rng)
        _dump(folder / name, {
            b"filenames": [f"{name}_{j}.png".encode() for j in range(count)],
            b"batch_label": f"{name} batch".encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"data": data,
        })
        written += [data, fine]
    _dump(folder / "meta", {
        b"fine_label_names": [f"fine{c}".encode() for c in range(100)],
        b"coarse_label_names": [f"coarse{c}".encode() for c in range(20)],
    })
    return WrittenCifar(root, *written)


def write_imagenet_files(root: Path, wnids: tuple[str, ...] = ("n01440764", "n01443537", "n01484850"),
                         train_per_class: int = 4, val_per_class: int = 2,
                         size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """``<root>/{train,val}/<wnid>/*.JPEG`` with random-colour JPEGs of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for wnid in wnids:
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{j}.JPEG", quality=95)
    return root


@pytest.fixture
def write_cifar10():
    return write_cifar10_files


@pytest.fixture
def write_cifar100():
    return write_cifar100_files


@pytest.fixture
def write_imagenet():
    return write_imagenet_files
