"""ImageNet (ILSVRC-2012) read from class folders: ``<root>/train/<wnid>/*.JPEG`` and
``<root>/val/<wnid>/*.JPEG`` (the validation images sorted into class folders, as the common
preparation scripts do). Images stay on disk. With ``decode: pil`` DataLoader workers decode
and augment each image with PIL and torchvision's transforms; with ``decode: batched`` they only
read the files' bytes, and the bundle's transforms decode and augment each batch on the training
device (:mod:`kdcore_vision.jpeg`).

Augmentation is the standard one (MDI's ImageNet recipes): RandomResizedCrop + horizontal flip
for training, Resize then CenterCrop for evaluation, with the ImageNet mean and std.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_image, encode_jpeg

from kdcore.api import DatasetContext
from kdcore.errors import KdcoreError
from kdcore.nn import DatasetBundle, Split
from kdcore_vision.jpeg import DecodeCropFlipNormalize, DecodeResizeCenterCropNormalize
from kdcore_vision.params import ImageNetParams

from .common import data_root

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpeg", ".jpg"}
JPEG_START = [0xFF, 0xD8, 0xFF]


class ImageFiles(Dataset):
    """Image files with known labels; items are ``(transform(image), label)``."""

    def __init__(self, files: list[Path], labels: Tensor, transform: Callable):
        self.files = files
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB")), int(self.labels[index])


class EncodedFiles(Dataset):
    """Image files with known labels; items are ``(bytes, label)``, the bytes of a JPEG as a uint8
    1-D tensor. An image in another format (ILSVRC-2012's training set has a PNG named .JPEG) is
    re-encoded as a JPEG, which is all the batched decoder reads.

    The bytes are read into ordinary memory: ``torchvision.io.read_file`` maps the file instead,
    and a DataLoader worker cannot send such a tensor (the batch never arrives).
    """

    def __init__(self, files: list[Path], labels: Tensor):
        self.files = files
        self.labels = labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        data = torch.from_numpy(np.fromfile(self.files[index], dtype=np.uint8))
        if data[:len(JPEG_START)].tolist() != JPEG_START:
            data = encode_jpeg(decode_image(data, mode=ImageReadMode.RGB), quality=95)
        return data, int(self.labels[index])


def collate_encoded(items: list[tuple[Tensor, int]]) -> tuple[list[Tensor], Tensor]:
    """A batch of :class:`EncodedFiles` items: the byte tensors as a list (their lengths differ)
    and the labels as a tensor."""
    data, labels = zip(*items)
    return list(data), torch.tensor(labels)


def list_images(folder: Path, wnids: list[str]) -> tuple[list[Path], Tensor]:
    """The JPEG files of each class folder, sorted, with the class's index in ``wnids``."""
    files, labels = [], []
    for label, wnid in enumerate(wnids):
        class_dir = folder / wnid
        if not class_dir.is_dir():
            continue
        found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    return files, torch.tensor(labels, dtype=torch.int64)


def build_imagenet(params: ImageNetParams, ctx: DatasetContext) -> DatasetBundle:
    root = Path(params.root) if params.root else data_root(None) / "imagenet"
    train_dir, val_dir = root / "train", root / "val"
    expected = (f"expected {train_dir}/<wnid>/*.JPEG and {val_dir}/<wnid>/*.JPEG (validation "
                "images sorted into class folders); set the dataset's root param, or put them under $KDCORE_DATA/imagenet/")
    wnids = sorted(p.name for p in train_dir.iterdir() if p.is_dir()) if train_dir.is_dir() else []
    if not wnids or not val_dir.is_dir():
        raise KdcoreError(f"ImageNet not found: {expected}")
    unknown = sorted({p.name for p in val_dir.iterdir() if p.is_dir()} - set(wnids))
    if unknown:
        raise KdcoreError(f"{val_dir} has classes missing from {train_dir}: {', '.join(unknown[:5])}")
    train_files, train_labels = list_images(train_dir, wnids)
    val_files, val_labels = list_images(val_dir, wnids)
    if not train_files or not val_files:
        raise KdcoreError(f"ImageNet has no JPEG images under {root}: {expected}")

    if params.decode == "batched" or (params.decode == "auto" and torch.device(ctx.device).type == "cuda"):
        return DatasetBundle(
            num_classes=len(wnids),
            input_shape=(3, params.crop_size, params.crop_size),
            train=Split(inputs=EncodedFiles(train_files, train_labels), labels=train_labels, collate=collate_encoded),
            test=Split(inputs=EncodedFiles(val_files, val_labels), labels=val_labels, collate=collate_encoded),
            train_transform=DecodeCropFlipNormalize(params.crop_size, MEAN, STD, ctx.device),
            eval_transform=DecodeResizeCenterCropNormalize(params.resize_size, params.crop_size, MEAN, STD,
                                                           ctx.device),
        )
    normalize = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    train_transform = transforms.Compose(
        [transforms.RandomResizedCrop(params.crop_size), transforms.RandomHorizontalFlip(), *normalize]
    )
    eval_transform = transforms.Compose(
        [transforms.Resize(params.resize_size), transforms.CenterCrop(params.crop_size), *normalize]
    )
    return DatasetBundle(
        num_classes=len(wnids),
        input_shape=(3, params.crop_size, params.crop_size),
        train=Split(inputs=ImageFiles(train_files, train_labels, train_transform), labels=train_labels),
        test=Split(inputs=ImageFiles(val_files, val_labels, eval_transform), labels=val_labels),
    )
