"""Batch transforms for in-memory image sets: the whole batch at once, on the batch's device.

Images are stored as uint8 (N, C, H, W). Training batches get the standard CIFAR augmentation
(RandomCrop(32, padding=4) then RandomHorizontalFlip, as in RepDistiller) before normalisation;
cropping the uint8 images pads with 0, i.e. with black pixels, as torchvision does on PIL images.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcore.errors import KdcoreError


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


# --- The strong augmentation of MLKD (Jin et al., CVPR 2023) ------------------------------------
#
# MLKD's strong view (``mdistiller/dataset/cifar100.py`` of Jin-Ying/Multi-Level-Logit-Distillation,
# ``get_cifar100_train_transform_strong``) is, on each PIL image: RandomCrop(32, padding=4),
# RandomHorizontalFlip, then its ``RandAugment(2, 10)`` -- two operations drawn uniformly with
# replacement from 14, each at a magnitude drawn uniformly from the operation's range (the ``m``
# argument is unused), then a Cutout of a random square -- then ToTensor and Normalize.
# Here the same pipeline runs on a whole uint8 batch at once, each operation reproducing what
# Pillow computes for it (same rounding, nearest-neighbour resampling, black fill).

RANDAUGMENT_OPS: tuple[tuple[str, float, float], ...] = (
    ("auto_contrast", 0.0, 1.0),
    ("brightness", 0.05, 0.95),
    ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95),
    ("equalize", 0.0, 1.0),
    ("identity", 0.0, 1.0),
    ("posterize", 4.0, 8.0),
    ("rotate", -30.0, 30.0),
    ("sharpness", 0.05, 0.95),
    ("shear_x", -0.3, 0.3),
    ("shear_y", -0.3, 0.3),
    ("solarize", 0.0, 256.0),
    ("translate_x", -0.3, 0.3),
    ("translate_y", -0.3, 0.3),
)
"""MLKD's operation list: (name, low, high) of the magnitude, drawn uniformly in [low, high).
The enhancement factors (brightness, colour, contrast, sharpness) stay below 1, so those
operations always weaken the image; rotations are in degrees (counter-clockwise), shears are
the affine coefficient, translations a fraction of the image side, posterize keeps ``int(v)``
bits (4 to 7) and solarize inverts the pixels at or above the threshold ``v``."""

OP_INDEX = {name: i for i, (name, _, _) in enumerate(RANDAUGMENT_OPS)}
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
CUTOUT_FILL = (125.0, 123.0, 114.0)
"""The grey MLKD's Cutout paints (RGB, 0-255)."""


@dataclass(frozen=True)
class RandAugmentDraw:
    """The random choices of the strong augmentation for a batch of ``n`` images (after the
    crop and flip, which :func:`random_crop_flip` draws).

    Attributes:
        ops: (num_ops, n) indices into :data:`RANDAUGMENT_OPS`, applied in row order.
        levels: (num_ops, n) in [0, 1): operation ``k`` at level ``u`` has the magnitude
            ``low_k + (high_k - low_k)·u``.
        cutout: (n,) the Cutout square's side as a fraction of the image width, in [0, max).
        centres: (2, n) the square's (x, y) centre in pixels, in (1, W] and (1, H] (MLKD draws
            ``np.random.uniform(w)``, i.e. uniformly between 1 and ``w``).
    """

    ops: Tensor
    levels: Tensor
    cutout: Tensor
    centres: Tensor


def draw_randaugment(n: int, height: int, width: int, generator: torch.Generator, num_ops: int = 2,
                     cutout_max: float = 0.5, device: torch.device | None = None) -> RandAugmentDraw:
    """Draw every random choice of :func:`randaugment_cutout` from ``generator`` (on its
    device), then move them to ``device`` without waiting for it."""
    draw = {"generator": generator, "device": generator.device}
    ops = torch.randint(0, len(RANDAUGMENT_OPS), (num_ops, n), **draw)
    levels = torch.rand(num_ops, n, **draw)
    cutout = torch.rand(n, **draw) * cutout_max
    sides = torch.tensor([width, height], dtype=torch.float32, device=generator.device)[:, None]
    centres = sides - (sides - 1) * torch.rand(2, n, **draw)
    device = generator.device if device is None else device
    return RandAugmentDraw(*(t.to(device, non_blocking=True) for t in (ops, levels, cutout, centres)))


def _per_image(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _blend(degenerate: Tensor, images: Tensor, factor: Tensor) -> Tensor:
    """Pillow's ``Image.blend(degenerate, image, f)`` for 0 <= f <= 1 (``ImageEnhance``):
    ``degenerate + f·(image − degenerate)``, truncated to an integer."""
    return (degenerate + _per_image(factor) * (images - degenerate)).clamp(0, 255).floor()


def _luma(images: Tensor) -> Tensor:
    """(n, 1, H, W) Pillow's RGB → L conversion: ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``
    (exact in float32: the sum stays below 2^24)."""
    weights = torch.tensor([19595.0, 38470.0, 7471.0], device=images.device).view(1, 3, 1, 1)
    return torch.floor(((images * weights).sum(1, keepdim=True) + 32768.0) / 65536.0)


def auto_contrast(images: Tensor) -> Tensor:
    """``ImageOps.autocontrast``: each channel of each image stretched so that its darkest
    value becomes 0 and its lightest 255 (``int(p·s − lo·s)``, ``s = 255/(hi − lo)``);
    constant channels unchanged."""
    # in double precision, as Pillow computes the table (MPS has none: float32 there)
    wide = images.to(torch.float32 if images.device.type == "mps" else torch.float64)
    low = wide.amin(dim=(2, 3), keepdim=True)
    high = wide.amax(dim=(2, 3), keepdim=True)
    span = (high - low).clamp(min=1)
    scale = torch.full_like(span, 255.0) / span  # a true division (255.0 / t may not be)
    stretched = (wide * scale + (-low * scale)).trunc().clamp(0, 255).to(images.dtype)
    return torch.where(high > low, stretched, images)


def equalize(images: Tensor) -> Tensor:
    """``ImageOps.equalize`` per channel: with ``step = (N − h_last) // 255`` (``h_last`` the
    count of the highest occupied value), value ``i`` maps to ``(step//2 + Σ_{j<i} h_j) // step``
    (at most 255); channels with one occupied value or ``step = 0`` are unchanged."""
    n, channels, height, width = images.shape
    values = images.long().reshape(n * channels, height * width)
    hist = torch.zeros(n * channels, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, values, torch.ones_like(values))
    occupied = hist > 0
    last = 255 - occupied.flip(1).long().argmax(dim=1, keepdim=True)
    step = (height * width - hist.gather(1, last)) // 255
    before = hist.cumsum(1) - hist
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp(max=255)
    keep = (occupied.sum(1, keepdim=True) <= 1) | (step == 0)
    lut = torch.where(keep, torch.arange(256, device=images.device).expand_as(lut), lut)
    return lut.gather(1, values).view(n, channels, height, width).to(images.dtype)


def posterize(images: Tensor, magnitude: Tensor) -> Tensor:
    """``ImageOps.posterize(img, int(v))``: keep the ``int(v)`` high bits of every value."""
    bits = magnitude.floor().clamp(1, 8)
    unit = _per_image(torch.exp2(8 - bits))
    return torch.floor(images / unit) * unit


def solarize(images: Tensor, magnitude: Tensor) -> Tensor:
    """``ImageOps.solarize(img, v)``: values ``p >= v`` become ``255 − p``."""
    return torch.where(images < _per_image(magnitude), images, 255 - images)


def smooth(images: Tensor) -> Tensor:
    """Pillow's ``ImageFilter.SMOOTH`` (3×3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, rounded),
    the border pixels left as they are: the degenerate image of ``ImageEnhance.Sharpness``."""
    n, channels, height, width = images.shape
    kernel = torch.ones(1, 1, 3, 3, device=images.device)
    kernel[0, 0, 1, 1] = 5.0
    inner = F.conv2d(images.reshape(n * channels, 1, height, width), kernel).view(
        n, channels, height - 2, width - 2)
    out = images.clone()
    out[:, :, 1:-1, 1:-1] = torch.floor(inner / 13.0 + 0.5)
    return out


def _wide(device: torch.device) -> torch.dtype:
    """Double precision, as Pillow computes, except on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def affine_matrices(ops: Tensor, magnitudes: Tensor, height: int, width: int) -> Tensor:
    """(n, 2, 3) output-to-input maps of each image's geometric operation (identity for the
    others), as Pillow builds them: ``rotate(v)`` about the centre ``(W/2, H/2)``,
    ``shear_x`` ``(1, v, 0, 0, 1, 0)``, ``shear_y`` ``(1, 0, 0, v, 1, 0)``, ``translate_x``
    ``(1, 0, v·W, 0, 1, 0)``, ``translate_y`` ``(1, 0, 0, 0, 1, v·H)``."""
    n = ops.shape[0]
    v = magnitudes.to(_wide(magnitudes.device))
    matrix = torch.zeros(n, 2, 3, device=v.device, dtype=v.dtype)
    matrix[:, 0, 0] = matrix[:, 1, 1] = 1.0

    def where(op: str, entry: tuple[int, int], value: Tensor) -> None:
        row, col = entry
        matrix[:, row, col] = torch.where(ops == OP_INDEX[op], value, matrix[:, row, col])

    angle = -torch.deg2rad(v)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = width / 2, height / 2
    for entry, value in (((0, 0), cos), ((0, 1), sin), ((0, 2), cx - cos * cx - sin * cy),
                         ((1, 0), -sin), ((1, 1), cos), ((1, 2), cy + sin * cx - cos * cy)):
        where("rotate", entry, value)
    where("shear_x", (0, 1), v)
    where("shear_y", (1, 0), v)
    where("translate_x", (0, 2), v * width)
    where("translate_y", (1, 2), v * height)
    return matrix


def warp_nearest(images: Tensor, matrix: Tensor) -> Tensor:
    """Pillow's ``Image.transform(AFFINE, NEAREST)``: output pixel ``(x, y)`` takes the input
    pixel at ``M·(x + ½, y + ½, 1)`` rounded down, black where that falls outside the image.
    Like Pillow, a map without cross terms (a translation, the identity) is evaluated in double
    precision, and any other (rotation, shear) in 16.16 fixed point: ``A = ⌊65536·M + ½⌋``, the
    offsets taken at the first pixel centre, the source pixel ``(A·(x, y) + offset) >> 16``."""
    n, channels, height, width = images.shape
    device = images.device
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                            indexing="ij")
    xs, ys = xs.flatten(), ys.flatten()
    # without cross terms: floor of the map at the pixel centres
    centres = torch.stack([xs + 0.5, ys + 0.5, torch.ones_like(xs, dtype=matrix.dtype)]).to(matrix.dtype)
    direct = torch.floor(matrix @ centres).long()  # (n, 2, H·W)
    # with them: Pillow's fixed-point walk
    fixed = torch.floor(matrix * 65536.0 + 0.5).long()
    offsets = torch.floor((matrix[:, :, 2] + 0.5 * matrix[:, :, 0] + 0.5 * matrix[:, :, 1])
                          * 65536.0 + 0.5).long()  # (n, 2)
    stepped = (fixed[:, :, 0:1] * xs + fixed[:, :, 1:2] * ys + offsets[:, :, None]) >> 16
    crossed = (matrix[:, 0, 1] != 0) | (matrix[:, 1, 0] != 0)
    source = torch.where(crossed[:, None, None], stepped, direct)
    col, row = source[:, 0], source[:, 1]
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    flat = row.clamp(0, height - 1) * width + col.clamp(0, width - 1)
    taken = images.reshape(n, channels, height * width).gather(2, flat[:, None].expand(-1, channels, -1))
    return (taken * inside[:, None]).view(n, channels, height, width)


def apply_operation(images: Tensor, name: str, magnitude: Tensor) -> Tensor:
    """One operation of :data:`RANDAUGMENT_OPS` on every image of a float batch of integer
    values in [0, 255] (``magnitude``: one value per image)."""
    n, _, height, width = images.shape
    if name in GEOMETRIC_OPS:
        ops = torch.full((n,), OP_INDEX[name], device=images.device)
        return warp_nearest(images, affine_matrices(ops, magnitude, height, width))
    return _COLOUR_OPS[name](images, magnitude)


_COLOUR_OPS = {
    "auto_contrast": lambda x, v: auto_contrast(x),
    "brightness": lambda x, v: _blend(torch.zeros_like(x), x, v),
    "color": lambda x, v: _blend(_luma(x).expand_as(x), x, v),
    "contrast": lambda x, v: _blend(
        torch.floor(_luma(x).mean(dim=(2, 3), keepdim=True) + 0.5).expand_as(x), x, v),
    "equalize": lambda x, v: equalize(x),
    "identity": lambda x, v: x,
    "posterize": posterize,
    "sharpness": lambda x, v: _blend(smooth(x), x, v),
    "solarize": solarize,
}


def randaugment(images: Tensor, ops: Tensor, levels: Tensor) -> Tensor:
    """Apply, per image, the operations ``ops[0]``, then ``ops[1]``, ... at the magnitudes of
    ``levels`` (see :class:`RandAugmentDraw`). Every operation is computed for the whole batch
    and selected per image, so nothing waits for the device."""
    _, _, height, width = images.shape
    lows = torch.tensor([low for _, low, _ in RANDAUGMENT_OPS], device=images.device)
    highs = torch.tensor([high for _, _, high in RANDAUGMENT_OPS], device=images.device)
    out = images.float()
    for op, level in zip(ops, levels):
        magnitude = lows[op] + (highs[op] - lows[op]) * level
        out = warp_nearest(out, affine_matrices(op, magnitude, height, width))
        selected = out
        for name, transform in _COLOUR_OPS.items():
            if name == "identity":
                continue
            index = OP_INDEX[name]
            own = lows[index] + (highs[index] - lows[index]) * level
            selected = torch.where(_per_image(op == index), transform(out, own), selected)
        out = selected
    return out


def cutout(images: Tensor, fraction: Tensor, centres: Tensor,
           fill: tuple[float, ...] = CUTOUT_FILL) -> Tensor:
    """MLKD's Cutout with Pillow's filled rectangle: side ``s = fraction·W``, corner
    ``(x0, y0) = int(max(0, centre − s/2))``, far corner ``int(min(W, x0 + s))`` (and the same
    in y), both included; images whose fraction is 0 are left alone."""
    _, _, height, width = images.shape
    side = fraction * width
    x0 = (centres[0] - side / 2).clamp(min=0).floor()
    y0 = (centres[1] - side / 2).clamp(min=0).floor()
    x1 = torch.minimum(x0 + side, torch.full_like(side, float(width))).floor()
    y1 = torch.minimum(y0 + side, torch.full_like(side, float(height))).floor()
    cols = torch.arange(width, device=images.device)
    rows = torch.arange(height, device=images.device)
    in_cols = (cols >= x0[:, None]) & (cols <= x1[:, None])
    in_rows = (rows >= y0[:, None]) & (rows <= y1[:, None])
    square = (in_rows[:, :, None] & in_cols[:, None, :] & (fraction > 0)[:, None, None])[:, None]
    colour = torch.tensor(fill, device=images.device).view(1, -1, 1, 1)
    return torch.where(square, colour, images)


def randaugment_cutout(images: Tensor, draw: RandAugmentDraw) -> Tensor:
    """:func:`randaugment` then :func:`cutout`, as float values in [0, 255]."""
    out = randaugment(images, draw.ops, draw.levels)
    return cutout(out, draw.cutout, draw.centres)


@dataclass(frozen=True)
class CropFlipRandAugmentNormalize:
    """MLKD's strong view of a uint8 batch: :func:`random_crop_flip` (its own draw, independent
    of the weak view's), ``num_ops`` RandAugment operations and a Cutout
    (:func:`randaugment_cutout`), then :func:`normalize`. Each image draws its own operations,
    magnitudes and square from ``generator``.

    Each operation computes what Pillow computes for it (the same rounding and truncation,
    Pillow's double-precision and 16.16 fixed-point sampling coordinates), so that a batch
    equals, pixel for pixel, MLKD's pipeline run image by image with the same random choices.
    Departures: the random numbers come from ``generator`` (torch), not from Python's ``random``
    and NumPy, and are float32; on MPS, which has no double precision, the auto-contrast table
    and the coordinates are computed in float32 (rare off-by-one pixels).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    padding: int = 4
    num_ops: int = 2
    cutout_max: float = 0.5

    def __call__(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        if batch.dtype != torch.uint8:
            raise KdcoreError(
                f"the strong (RandAugment) view works on uint8 images, got a {batch.dtype} batch"
            )
        cropped = random_crop_flip(batch, generator, self.padding)
        n, _, height, width = cropped.shape
        draw = draw_randaugment(n, height, width, generator, self.num_ops, self.cutout_max,
                                device=batch.device)
        return normalize(randaugment_cutout(cropped, draw), self.mean, self.std)
