"""Batch transforms for in-memory image sets: the whole batch at once, on the batch's device.

Images are stored as uint8 (N, C, H, W). Training batches get the standard CIFAR augmentation
(RandomCrop(32, padding=4) then RandomHorizontalFlip, as in RepDistiller) before normalisation;
cropping the uint8 images pads with 0, i.e. with black pixels, as torchvision does on PIL images.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def normalize(batch: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 images to float32 in [0, 1], then ``(x - mean) / std`` per channel."""
    shape = (1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).to(batch.device, non_blocking=True).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32).to(batch.device, non_blocking=True).view(shape)
    return (batch.float() / 255 - mean_t) / std_t


def random_crop_flip(batch: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """For each image independently: zero-pad by ``padding``, crop back to the original size at a
    uniformly drawn offset, then flip horizontally with probability 1/2.

    Randomness is drawn on the generator's device and moved to the batch's without waiting for
    the device (the copy is staged at once), so a CPU generator drives a GPU batch reproducibly.
    """
    n, _, height, width = batch.shape
    padded = F.pad(batch, (padding, padding, padding, padding))
    draw = {"generator": generator, "device": generator.device}
    offsets = torch.randint(0, 2 * padding + 1, (2, n), **draw).to(batch.device, non_blocking=True)
    flips = (torch.rand(n, **draw) < 0.5).to(batch.device, non_blocking=True)
    rows = offsets[0, :, None] + torch.arange(height, device=batch.device)
    cols = offsets[1, :, None] + torch.arange(width, device=batch.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    samples = torch.arange(n, device=batch.device)[:, None, None]
    # (n, h, w, c) gathered from the channels-last view, then back to (n, c, h, w)
    cropped = padded.permute(0, 2, 3, 1)[samples, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class Normalize:
    """The evaluation transform: normalisation only."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, batch: Tensor) -> Tensor:
        return normalize(batch, self.mean, self.std)


@dataclass(frozen=True)
class CropFlipNormalize:
    """The training transform: :func:`random_crop_flip`, then :func:`normalize`."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    padding: int = 4

    def __call__(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        return normalize(random_crop_flip(batch, generator, self.padding), self.mean, self.std)
