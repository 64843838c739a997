"""CIFAR-10 and CIFAR-100 from the official "python version" archives, held in memory as uint8
tensors, plus the paper's binary (Sec. 5.5) and semi-supervised (Sec. 5.4) variants.

The official files are Python pickles of dicts with bytes keys (``b"data"``: uint8 array of shape
(N, 3072), channel-major rows of 32×32 pixels; ``b"labels"`` or ``b"fine_labels"``: a list of
ints). Pickle is the only format they are distributed in. They are read with
:func:`kdcore_vision.datasets.safe_pickle.load` (``encoding="bytes"``, as they were written by
Python 2), which admits only dicts, lists, strings, numbers and numpy arrays: a file that names any
other function or class is refused before anything of it runs, so reading a dataset file never
runs code from it. A file that is refused, empty, truncated, not a pickle, or not shaped as the
official ones stops the run with one line naming the file and saying to re-download the archive.
"""

from __future__ import annotations

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
from kdcore_vision.transforms import CropFlipNormalize, CropFlipRandAugmentNormalize, Normalize

from . import safe_pickle
from .common import balanced_subset, data_root, normalization

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
    images, labels = zip(*(_read_file(fmt, path) for path in paths))
    inputs = torch.from_numpy(np.concatenate(images)).reshape(-1, *IMAGE_SHAPE)
    return Split(inputs=inputs, labels=torch.from_numpy(np.concatenate(labels)))


def _read_file(fmt: CifarFormat, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file's images, uint8 (N, 3072), and labels, int64 (N,), checked against the
    official format; any problem is one line naming the file and the fix."""
    fix = (f"re-download {fmt.archive} (python version) from {SOURCE_URL} and extract it into "
           f"{path.parent.parent}")
    content = safe_pickle.load(path, fix, encoding="bytes")
    expected = f"a {fmt.title} batch is a dict with keys b'data' and {fmt.label_key!r}"
    if not isinstance(content, dict):
        raise KdcoreError(f"{path}: holds a {type(content).__name__}, not a dict ({expected}); {fix}")
    missing = [repr(key) for key in (b"data", fmt.label_key) if key not in content]
    if missing:
        found = safe_pickle.printable(", ".join(repr(key) for key in list(content)[:8]))
        raise KdcoreError(f"{path}: has no key {' or '.join(missing)} (its keys: {found or 'none'}); "
                          f"{expected}; {fix}")
    data, file_labels = content[b"data"], content[fmt.label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} of shape {data.shape}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise KdcoreError(f"{path}: b'data' is {got}, expected a uint8 numpy array of shape (N, 3072); {fix}")
    if isinstance(file_labels, np.ndarray) and file_labels.ndim == 1 \
            and np.issubdtype(file_labels.dtype, np.integer):
        values = file_labels
    elif isinstance(file_labels, list) and all(type(label) is int for label in file_labels):
        values = file_labels
    else:
        raise KdcoreError(f"{path}: {fmt.label_key!r} is {_describe(file_labels)}, expected a list of "
                          f"ints; {fix}")
    if len(values) != len(data):
        raise KdcoreError(f"{path}: {len(values)} labels in {fmt.label_key!r} for {len(data)} images in "
                          f"b'data'; {fix}")
    low, high = (int(np.min(values)), int(np.max(values))) if len(values) else (0, 0)
    if not 0 <= low <= high < fmt.num_classes:
        raise KdcoreError(f"{path}: labels outside 0..{fmt.num_classes - 1} (found {low} to {high}); {fix}")
    return data, np.asarray(values, dtype=np.int64)


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, list):
        odd = next(item for item in value if type(item) is not int)
        return f"a list holding a {type(odd).__name__}"
    return f"a {type(value).__name__}"


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
            num_classes: int, ctx: DatasetContext) -> DatasetBundle:
    train, val = hold_out(train, params.val_size, params.split_seed)
    mean, std = normalization(ctx, (fmt.mean, fmt.std), fmt.title)
    return DatasetBundle(
        num_classes=num_classes,
        input_shape=IMAGE_SHAPE,
        train=train,
        val=val,
        test=test,
        train_transform=CropFlipNormalize(mean, std),
        eval_transform=Normalize(mean, std),
        # MLKD's strong view (crop, flip, RandAugment(2) and Cutout), for distillers asking for it
        views={"strong": CropFlipRandAugmentNormalize(mean, std)},
        normalization=(mean, std),
    )


def build_cifar10(params: CifarParams, ctx: DatasetContext) -> DatasetBundle:
    return _bundle(CIFAR10, *load_cifar(CIFAR10, data_root(params.root)), params, 10, ctx)


def build_cifar100(params: CifarParams, ctx: DatasetContext) -> DatasetBundle:
    return _bundle(CIFAR100, *load_cifar(CIFAR100, data_root(params.root)), params, 100, ctx)


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
    return _bundle(fmt, relabel(train), relabel(test), params, 2, ctx)


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
