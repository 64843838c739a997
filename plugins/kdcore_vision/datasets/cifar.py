"""CIFAR-10 and CIFAR-100 from the official "python version" archives, held in memory as uint8
tensors, plus the paper's binary (Sec. 5.5) and semi-supervised (Sec. 5.4) variants.

The official files are Python pickles of dicts with bytes keys (``b"data"``: uint8 array of shape
(N, 3072), channel-major rows of 32×32 pixels; ``b"labels"`` or ``b"fine_labels"``). Pickle is
the only format they are distributed in, so they are read with :mod:`pickle`
(``encoding="bytes"``, as they were written by Python 2). Unpickling can run code: read only
files obtained from the official source.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdcore.api import DatasetContext
from kdcore.errors import KdcoreError
from kdcore.nn import DatasetBundle, Split
from kdcore_vision.params import (
    BinaryCifarParams,
    CifarParams,
    SemiSupervisedCifarParams,
)
from kdcore_vision.transforms import CropFlipNormalize, Normalize

from .common import balanced_subset, data_root

IMAGE_SHAPE = (3, 32, 32)
SOURCE_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class CifarFormat:
    """Where one CIFAR variant's files are and how its labels are keyed."""

    title: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = CifarFormat(
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key=b"labels",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarFormat(
    title="CIFAR-100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    train_files=("train",),
    test_files=("test",),
    label_key=b"fine_labels",
    num_classes=100,
    mean=(0.5071, 0.4867, 0.4408),
    std=(0.2675, 0.2565, 0.2761),
)
FORMATS = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def load_cifar(fmt: CifarFormat, root: Path) -> tuple[Split, Split]:
    """The train and test splits, images as uint8 (N, 3, 32, 32)."""
    folder = root / fmt.folder
    missing = [folder / name for name in fmt.train_files + fmt.test_files
               if not (folder / name).is_file()]
    if missing:
        raise KdcoreError(
            f"{fmt.title} not found: missing {', '.join(str(path) for path in missing)}. "
            f"Download {fmt.archive} (python version) from {SOURCE_URL} and extract it into "
            f"{root}, or set the dataset's root param or KDCORE_DATA to the folder holding "
            f"{fmt.folder}/"
        )
    return (_read_files(fmt, [folder / name for name in fmt.train_files]),
            _read_files(fmt, [folder / name for name in fmt.test_files]))


def _read_files(fmt: CifarFormat, paths: list[Path]) -> Split:
    images, labels = [], []
    for path in paths:
        with open(path, "rb") as file:
            try:
                content = pickle.load(file, encoding="bytes")
            except Exception as error:
                raise KdcoreError(f"{path} is not a {fmt.title} python pickle: {error}") from None
        if not isinstance(content, dict) or b"data" not in content or fmt.label_key not in content:
            raise KdcoreError(
                f"{path} is not a {fmt.title} batch: expected a dict with keys b'data' and "
                f"{fmt.label_key!r}"
            )
        data = np.asarray(content[b"data"])
        file_labels = list(content[fmt.label_key])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
                or len(file_labels) != len(data):
            raise KdcoreError(
                f"{path}: expected b'data' as uint8 of shape (N, 3072) with N labels, got "
                f"{data.dtype} {data.shape} and {len(file_labels)} labels"
            )
        images.append(data)
        labels += file_labels
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    if len(label_tensor) and not 0 <= int(label_tensor.min()) <= int(label_tensor.max()) < fmt.num_classes:
        raise KdcoreError(f"{paths[0].parent}: labels outside 0..{fmt.num_classes - 1}")
    inputs = torch.from_numpy(np.concatenate(images)).reshape(-1, *IMAGE_SHAPE)
    return Split(inputs=inputs, labels=label_tensor)


def hold_out(train: Split, val_size: int, seed: int) -> tuple[Split, Split | None]:
    """Split a class-balanced validation set of ``val_size`` images off the training split."""
    if val_size == 0:
        return train, None
    if val_size >= len(train):
        raise KdcoreError(f"val_size {val_size} leaves no training images (the split has {len(train)})")
    generator = torch.Generator().manual_seed(seed)
    in_val = balanced_subset(train.labels, val_size, generator, "val_size")
    return _select(train, ~in_val), _select(train, in_val)


def _select(split: Split, mask: Tensor) -> Split:
    return Split(inputs=split.inputs[mask], labels=split.labels[mask])


def _bundle(fmt: CifarFormat, train: Split, test: Split, params: CifarParams,
            num_classes: int) -> DatasetBundle:
    train, val = hold_out(train, params.val_size, params.split_seed)
    return DatasetBundle(
        num_classes=num_classes,
        input_shape=IMAGE_SHAPE,
        train=train,
        val=val,
        test=test,
        train_transform=CropFlipNormalize(fmt.mean, fmt.std),
        eval_transform=Normalize(fmt.mean, fmt.std),
    )


def build_cifar10(params: CifarParams, ctx: DatasetContext) -> DatasetBundle:
    return _bundle(CIFAR10, *load_cifar(CIFAR10, data_root(params.root)), params, 10)


def build_cifar100(params: CifarParams, ctx: DatasetContext) -> DatasetBundle:
    return _bundle(CIFAR100, *load_cifar(CIFAR100, data_root(params.root)), params, 100)


def build_binary_cifar(params: BinaryCifarParams, ctx: DatasetContext) -> DatasetBundle:
    """Keep the images of the ``positive`` and ``negative`` classes, relabelled 1 and 0.
    Normalisation uses the base set's statistics."""
    fmt = FORMATS[params.base]
    positive = torch.tensor(params.positive)
    kept = torch.tensor(params.positive + params.negative)

    def relabel(split: Split) -> Split:
        mask = torch.isin(split.labels, kept)
        labels = torch.isin(split.labels[mask], positive).long()
        return Split(inputs=split.inputs[mask], labels=labels)

    train, test = load_cifar(fmt, data_root(params.root))
    return _bundle(fmt, relabel(train), relabel(test), params, 2)


def build_semisup_cifar10(params: SemiSupervisedCifarParams, ctx: DatasetContext) -> DatasetBundle:
    """CIFAR-10 whose training split marks a class-balanced subset as labelled (``Split.labeled``).
    The validation split (if any) is held out first; the labelled subset is drawn from the rest
    with ``label_seed``, so it does not change with the run seed."""
    bundle = build_cifar10(params, ctx)
    train = bundle.train
    count = params.labeled if isinstance(params.labeled, int) else round(params.labeled * len(train))
    generator = torch.Generator().manual_seed(params.label_seed)
    train.labeled = balanced_subset(train.labels, count, generator, "labeled")
    return bundle
