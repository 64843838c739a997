"""Batch transforms of encoded JPEGs: a whole batch is decoded at once on the training device
(``torchvision.io.decode_jpeg``, nvJPEG on a GPU), then cropped, resized, flipped and normalised
there, so that DataLoader workers only read files.

The augmentation is the one torchvision's transforms apply to PIL images: RandomResizedCrop and a
horizontal flip for training, Resize of the shorter side then CenterCrop for evaluation, resizing
uint8 images bilinearly with antialiasing. Random numbers are drawn on the CPU from the stage's
generator, so a batch decoded on a GPU is augmented as reproducibly as one on the CPU.

An image that fails to decode stops training with one line naming its file (when the batch is an
:class:`EncodedBatch`, which carries the file names), not with the decoder's message for the
whole batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import center_crop, resize, resized_crop

from kdcore.errors import KdcoreError
from kdcore_vision.transforms import normalize

CROP_SCALE = (0.08, 1.0)
"""RandomResizedCrop's range of the crop's area, as a fraction of the image's."""
CROP_RATIO = (3 / 4, 4 / 3)
"""RandomResizedCrop's range of the crop's aspect ratio, width / height."""
CROP_ATTEMPTS = 10


class EncodedBatch(list):
    """A batch of JPEG file bytes (uint8 1-D tensors on the CPU) and, in :attr:`files`, the
    files they were read from, so that an image that fails to decode can be named."""

    def __init__(self, data=(), files=()):
        super().__init__(data)
        self.files = [str(file) for file in files]


def decode_rgb(encoded: list[Tensor], device: str) -> list[Tensor]:
    """uint8 (3, H, W) images on ``device`` from JPEG file bytes (uint8 1-D tensors on the CPU);
    grayscale and CMYK JPEGs come out as RGB too.

    When the batch fails to decode, each image is decoded alone (on the CPU, then on ``device``)
    to find the first that fails, and a :class:`KdcoreError` names it: its file, given an
    :class:`EncodedBatch`, else its position in the batch.
    """
    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except (RuntimeError, ValueError) as error:
        raise _undecodable(encoded, device, error) from None


def _undecodable(encoded: list[Tensor], device: str, error: Exception) -> KdcoreError:
    files = getattr(encoded, "files", None) or [f"image {i} of a batch of {len(encoded)}" for i in range(len(encoded))]
    fix = "replace it with an intact copy (extract it again from the dataset's archive) or delete it"
    for file, data in zip(files, encoded):
        for where in dict.fromkeys(["cpu", str(device)]):
            try:
                decode_jpeg(data, mode=ImageReadMode.RGB, device=where)
            except (RuntimeError, ValueError) as alone:
                return KdcoreError(f"{file}: not a decodable JPEG ({decoder_reason(alone)}); {fix}")
    return KdcoreError(f"{files[0]} and the {len(files) - 1} other images of its batch: decoding them "
                       f"together on {device} failed ({decoder_reason(error)}) although each decodes "
                       f"alone; retry, or set the dataset's decode param to pil")


def decoder_reason(error: Exception) -> str:
    """The reason in a torchvision.io decoder's message, on one line, without the C++ source
    location it starts with (``"decode_jpeg, .../decode_jpeg.cpp:171, Image is truncated"``)."""
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    if ".cpp:" in reason:
        reason = reason[reason.index(".cpp:"):].partition(", ")[2] or reason
    reason = reason.split(". ")[0]  # the first sentence: torchvision's next ones are advice
    return reason if len(reason) <= 160 else reason[:160] + "..."


def random_resized_crop_boxes(heights: Tensor, widths: Tensor, generator: torch.Generator) -> Tensor:
    """RandomResizedCrop's box ``(top, left, height, width)`` in each image of the given sizes, as
    int64 (n, 4).

    The rule, per image: up to :data:`CROP_ATTEMPTS` times, draw an area uniformly from
    :data:`CROP_SCALE` times the image's and an aspect ratio log-uniformly from
    :data:`CROP_RATIO`; the first box whose rounded sides fit in the image is taken, at a uniformly
    drawn position. When none fits, the central box: the whole image, or its largest part whose
    aspect ratio is the nearest bound of :data:`CROP_RATIO`. Every image draws the same amount of
    random numbers however many attempts it needs.
    """
    count = len(heights)
    height, width = heights.double(), widths.double()
    draws = torch.rand(count, CROP_ATTEMPTS, 2, generator=generator, dtype=torch.float64)
    area = (height * width)[:, None] * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * draws[..., 0])
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    aspect = torch.exp(log_low + (log_high - log_low) * draws[..., 1])
    box_width, box_height = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (box_width > 0) & (box_width <= width[:, None]) & (box_height > 0) & (box_height <= height[:, None])
    first = fits.int().argmax(dim=1, keepdim=True)  # the first attempt that fits (0 when none does)
    found = fits.any(dim=1)
    image_ratio = width / height
    box_width = torch.where(found, box_width.gather(1, first)[:, 0],
                            torch.where(image_ratio > CROP_RATIO[1], (height * CROP_RATIO[1]).round(), width))
    box_height = torch.where(found, box_height.gather(1, first)[:, 0],
                             torch.where(image_ratio < CROP_RATIO[0], (width / CROP_RATIO[0]).round(), height))
    position = torch.rand(count, 2, generator=generator, dtype=torch.float64)
    top = torch.where(found, (position[:, 0] * (height - box_height + 1)).floor(),
                      ((height - box_height) / 2).floor())
    left = torch.where(found, (position[:, 1] * (width - box_width + 1)).floor(),
                       ((width - box_width) / 2).floor())
    return torch.stack([top, left, box_height, box_width], dim=1).long()


@dataclass(frozen=True)
class DecodeCropFlipNormalize:
    """The training transform: decode on ``device``, RandomResizedCrop to ``crop_size`` (boxes by
    :func:`random_resized_crop_boxes`), horizontal flip with probability 1/2, normalise."""

    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: str

    def __call__(self, encoded: list[Tensor], generator: torch.Generator) -> Tensor:
        images = decode_rgb(encoded, self.device)
        sizes = torch.tensor([image.shape[1:] for image in images])
        boxes = random_resized_crop_boxes(sizes[:, 0], sizes[:, 1], generator)
        flips = torch.rand(len(images), generator=generator) < 0.5
        output_size = [self.crop_size, self.crop_size]
        crops = []
        for image, (top, left, height, width), flip in zip(images, boxes.tolist(), flips.tolist()):
            crop = resized_crop(image, top, left, height, width, output_size, antialias=True)
            crops.append(crop.flip(-1) if flip else crop)
        return normalize(torch.stack(crops), self.mean, self.std)


@dataclass(frozen=True)
class DecodeResizeCenterCropNormalize:
    """The evaluation transform: decode on ``device``, resize the shorter side to
    ``resize_size``, take the central ``crop_size`` square, normalise."""

    resize_size: int
    crop_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: str

    def __call__(self, encoded: list[Tensor]) -> Tensor:
        output_size = [self.crop_size, self.crop_size]
        crops = [center_crop(resize(image, [self.resize_size], antialias=True), output_size)
                 for image in decode_rgb(encoded, self.device)]
        return normalize(torch.stack(crops), self.mean, self.std)
