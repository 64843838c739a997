"""ImageNet (ILSVRC-2012) read from class folders: ``<root>/train/<wnid>/*.JPEG`` and
``<root>/val/<wnid>/*.JPEG`` (the validation images sorted into class folders, as the common
preparation scripts do). Images stay on disk. With ``decode: pil`` DataLoader workers decode
and augment each image with PIL and torchvision's transforms; with ``decode: batched`` they only
read the files' bytes, and the bundle's transforms decode and augment each batch on the training
device (:mod:`kdcore_vision.jpeg`).

Augmentation is the standard one (MDI's ImageNet recipes): RandomResizedCrop + horizontal flip
for training, Resize then CenterCrop for evaluation, with the ImageNet mean and std.

Bad data stop the run with one line naming the path: a class folder without images when the
dataset is built, a file that cannot be read or decoded (corrupt, truncated, not an image) when
it is met, in either decode path and also when it is read in a DataLoader worker.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_image, encode_jpeg

from kdcore.api import DatasetContext
from kdcore.errors import KdcoreError
from kdcore.nn import DatasetBundle, Split
from kdcore_vision.jpeg import (
    DecodeCropFlipNormalize,
    DecodeResizeCenterCropNormalize,
    EncodedBatch,
    decoder_reason,
)
from kdcore_vision.params import ImageNetParams

from .common import data_root, normalization

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpeg", ".jpg"}
JPEG_START = [0xFF, 0xD8, 0xFF]
IMAGE_FIX = "replace it with an intact copy from the ILSVRC-2012 archive, or delete it"


class ImageFileError(KdcoreError):
    """An image file that cannot be read or decoded: ``"<file>: <what is wrong>; <the fix>"``.

    Raised in a DataLoader worker, it reaches the main process as
    ``ImageFileError("Caught ImageFileError in DataLoader worker process 0.\\nOriginal Traceback
    ...")`` (torch.utils.data re-raises the type with the worker's traceback as its message); the
    message is then cut back to the original line, the traceback's last, so that the user still
    reads one line.
    """

    def __init__(self, message: str):
        lines = str(message).rstrip().splitlines()
        if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
            message = lines[-1].removeprefix(f"{type(self).__module__}.{type(self).__qualname__}: ")
        super().__init__(message)


class ImageFiles(Dataset):
    """Image files with known labels; items are ``(transform(image), label)``."""

    def __init__(self, files: list[Path], labels: Tensor, transform: Callable):
        self.files = files
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path = self.files[index]
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except Exception as error:  # opening and decoding only: any failure is the file's
            raise ImageFileError(f"{path}: {_pil_reason(error)}; {IMAGE_FIX}") from None
        return self.transform(image), int(self.labels[index])


def _pil_reason(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not an image file (PIL recognises no image format in it)"
    if isinstance(error, OSError) and error.errno is not None:
        return f"cannot be read ({error.strerror})"
    reason = " ".join(str(error).split()) or type(error).__name__
    return f"cannot be decoded (PIL: {reason if len(reason) <= 160 else reason[:160] + '...'})"


class EncodedFiles(Dataset):
    """Image files with known labels; items are ``(bytes, label, file)``, the bytes of a JPEG as
    a uint8 1-D tensor and the file's path (for :class:`~kdcore_vision.jpeg.EncodedBatch`). An
    image in another format (ILSVRC-2012's training set has a PNG named .JPEG) is re-encoded as a
    JPEG, which is all the batched decoder reads; a file that is no image torchvision can decode
    raises :class:`ImageFileError` here, a corrupt JPEG when its batch is decoded.

    The bytes are read into ordinary memory: ``torchvision.io.read_file`` maps the file instead,
    and a DataLoader worker cannot send such a tensor (the batch never arrives).
    """

    def __init__(self, files: list[Path], labels: Tensor):
        self.files = files
        self.labels = labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int, str]:
        path = self.files[index]
        try:
            data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
        except OSError as error:
            raise ImageFileError(f"{path}: cannot be read ({error.strerror or error}); {IMAGE_FIX}") from None
        if data[:len(JPEG_START)].tolist() != JPEG_START:
            try:
                data = encode_jpeg(decode_image(data, mode=ImageReadMode.RGB), quality=95)
            except (RuntimeError, ValueError) as error:
                raise ImageFileError(f"{path}: not a JPEG, nor another image format torchvision decodes "
                                     f"({decoder_reason(error)}); {IMAGE_FIX}") from None
        return data, int(self.labels[index]), str(path)


def collate_encoded(items: list[tuple[Tensor, int, str]]) -> tuple[EncodedBatch, Tensor]:
    """A batch of :class:`EncodedFiles` items: the byte tensors as a list (their lengths differ)
    that also holds their files, and the labels as a tensor."""
    data, labels, files = zip(*items)
    return EncodedBatch(data, files), torch.tensor(labels)


def list_images(folder: Path, wnids: list[str]) -> tuple[list[Path], Tensor]:
    """The JPEG files of each class folder, sorted, with the class's index in ``wnids``. A class
    may have no folder (the validation set need not hold every class), but a class folder without
    images is refused."""
    files, labels = [], []
    for label, wnid in enumerate(wnids):
        class_dir = folder / wnid
        if not class_dir.is_dir():
            continue
        found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise KdcoreError(
                f"{class_dir}: class folder without images (no .JPEG or .jpg file); copy the class's "
                f"images into it from the ILSVRC-2012 archive, or delete it in both train/ and val/"
            )
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

    mean, std = normalization(ctx, (MEAN, STD), "ImageNet")
    if params.decode == "batched" or (params.decode == "auto" and torch.device(ctx.device).type == "cuda"):
        return DatasetBundle(
            num_classes=len(wnids),
            input_shape=(3, params.crop_size, params.crop_size),
            train=Split(inputs=EncodedFiles(train_files, train_labels), labels=train_labels, collate=collate_encoded),
            test=Split(inputs=EncodedFiles(val_files, val_labels), labels=val_labels, collate=collate_encoded),
            train_transform=DecodeCropFlipNormalize(params.crop_size, mean, std, ctx.device),
            eval_transform=DecodeResizeCenterCropNormalize(params.resize_size, params.crop_size, mean, std,
                                                           ctx.device),
            normalization=(mean, std),
        )
    normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
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
        normalization=(mean, std),
    )
