"""MLKD's strong augmentation (crop, flip, RandAugment(2), Cutout), batched on tensors, checked
against Pillow applied image by image with the same random choices."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from kdcore.api import DatasetContext
from kdcore.errors import KdcoreError
from kdcore.registry import load_registry
from kdcore_vision.transforms import (
    RANDAUGMENT_OPS,
    CropFlipRandAugmentNormalize,
    apply_operation,
    draw_randaugment,
    normalize,
    random_crop_flip,
    randaugment_cutout,
)

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
NAMES = [name for name, _, _ in RANDAUGMENT_OPS]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 32, 32, 3) uint8: uniform noise, and every other image a low-contrast one (narrow
    histograms make auto-contrast and equalize do real work)."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    for i in range(0, n, 2):
        out[i] = np.clip(rng.integers(60, 180) + rng.normal(0, 12, (32, 32, 3)), 0, 255)
    return out


def as_batch(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def pillow(name: str, image: Image.Image, v: float) -> Image.Image:
    """The operation as MLKD's list describes it, written with Pillow's own functions."""
    w, h = image.size
    affine = {
        "shear_x": (1, v, 0, 0, 1, 0), "shear_y": (1, 0, 0, v, 1, 0),
        "translate_x": (1, 0, v * w, 0, 1, 0), "translate_y": (1, 0, 0, 0, 1, v * h),
    }
    if name in affine:
        return image.transform(image.size, Image.AFFINE, affine[name])
    enhance = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color,
               "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}
    if name in enhance:
        return enhance[name](image).enhance(v)
    return {
        "auto_contrast": lambda: ImageOps.autocontrast(image),
        "equalize": lambda: ImageOps.equalize(image),
        "identity": lambda: image,
        "posterize": lambda: ImageOps.posterize(image, max(1, int(v))),
        "rotate": lambda: image.rotate(v),
        "solarize": lambda: ImageOps.solarize(image, v),
    }[name]()


def magnitudes(name: str, n: int, seed: int) -> torch.Tensor:
    low, high = next((lo, hi) for op, lo, hi in RANDAUGMENT_OPS if op == name)
    return low + (high - low) * torch.rand(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_each_operation_equals_pillow_pixel_for_pixel(name):
    pixels = images(24, seed=1)
    v = magnitudes(name, 24, seed=2)
    ours = apply_operation(as_batch(pixels).float(), name, v)
    expected = np.stack([np.asarray(pillow(name, Image.fromarray(p), float(m))) for p, m in zip(pixels, v)])
    assert torch.equal(ours, as_batch(expected).float())


def test_constant_and_extreme_images_are_handled_like_pillow():
    pixels = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    pixels[1] = 255
    pixels[2] = 77
    pixels[3, :, :16] = 10  # two values per channel
    pixels[3, :, 16:] = 200
    batch = as_batch(pixels).float()
    for name in ("auto_contrast", "equalize", "contrast", "color", "sharpness", "solarize"):
        v = torch.full((4,), 0.5 if name != "solarize" else 128.0)
        expected = np.stack([np.asarray(pillow(name, Image.fromarray(p), float(m)))
                             for p, m in zip(pixels, v)])
        assert torch.equal(apply_operation(batch, name, v), as_batch(expected).float()), name


def reference_strong(pixels: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """MLKD's strong pipeline image by image with Pillow, from the same random draws (crop and
    flip, then the operations, their levels and the Cutout square, in that order)."""
    cropped = random_crop_flip(as_batch(pixels), generator).permute(0, 2, 3, 1).numpy()
    draw = draw_randaugment(len(pixels), 32, 32, generator)
    out = []
    for i, crop in enumerate(cropped):
        image = Image.fromarray(np.ascontiguousarray(crop))
        for op, level in zip(draw.ops[:, i].tolist(), draw.levels[:, i]):
            name, low, high = RANDAUGMENT_OPS[op]
            low, high = torch.tensor(low), torch.tensor(high)  # float32, as the batch computes
            image = pillow(name, image, float(low + (high - low) * level))
        side = float(draw.cutout[i]) * 32
        if side > 0:  # MLKD's CutoutAbs: corner int(max(0, c - s/2)), far corner min(w, x0 + s)
            x0 = int(max(0, float(draw.centres[0, i]) - side / 2))
            y0 = int(max(0, float(draw.centres[1, i]) - side / 2))
            image = image.copy()
            ImageDraw.Draw(image).rectangle((x0, y0, min(32, x0 + side), min(32, y0 + side)), (125, 123, 114))
        out.append(np.asarray(image))
    return normalize(as_batch(np.stack(out)), CIFAR100_MEAN, CIFAR100_STD)


def test_the_whole_view_equals_the_pillow_pipeline_with_the_same_draws():
    pixels = images(96, seed=3)
    transform = CropFlipRandAugmentNormalize(CIFAR100_MEAN, CIFAR100_STD)
    ours = transform(as_batch(pixels), torch.Generator().manual_seed(5))
    expected = reference_strong(pixels, torch.Generator().manual_seed(5))
    assert ours.shape == (96, 3, 32, 32) and ours.dtype == torch.float32
    assert torch.equal(ours, expected)


def test_values_are_integer_pixels_before_normalisation_and_in_range_after():
    pixels = as_batch(images(64, seed=4))
    generator = torch.Generator().manual_seed(6)
    raw = randaugment_cutout(pixels, draw_randaugment(64, 32, 32, generator))
    assert raw.dtype == torch.float32 and raw.shape == pixels.shape
    assert torch.equal(raw, raw.round()) and raw.min() >= 0 and raw.max() <= 255
    out = CropFlipRandAugmentNormalize(CIFAR100_MEAN, CIFAR100_STD)(pixels, generator)
    mean, std = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    assert (out >= -mean / std - 1e-6).all() and (out <= (1 - mean) / std + 1e-6).all()


def test_float_batches_are_refused():
    with pytest.raises(KdcoreError, match="uint8"):
        CropFlipRandAugmentNormalize(CIFAR100_MEAN, CIFAR100_STD)(torch.rand(2, 3, 32, 32), torch.Generator())


def test_seeded_generator_is_deterministic_and_seeds_differ():
    pixels = as_batch(images(32, seed=5))
    transform = CropFlipRandAugmentNormalize(CIFAR100_MEAN, CIFAR100_STD)
    first = transform(pixels, torch.Generator().manual_seed(7))
    assert torch.equal(first, transform(pixels, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, transform(pixels, torch.Generator().manual_seed(8)))


def test_images_draw_independently_and_do_not_affect_each_other():
    # 64 copies of one image come out (nearly) all different
    one = as_batch(images(1, seed=6)).expand(64, -1, -1, -1).contiguous()
    out = CropFlipRandAugmentNormalize(CIFAR100_MEAN, CIFAR100_STD)(one, torch.Generator().manual_seed(9))
    assert len({tuple(row.flatten().tolist()) for row in out}) >= 60
    # each image's result depends on its own pixels and draws only (no batch-wide statistics)
    pixels = as_batch(images(16, seed=7))
    draw = draw_randaugment(16, 32, 32, torch.Generator().manual_seed(10))
    together = randaugment_cutout(pixels, draw)
    for i in range(16):
        alone = randaugment_cutout(pixels[i:i + 1], type(draw)(
            draw.ops[:, i:i + 1], draw.levels[:, i:i + 1], draw.cutout[i:i + 1], draw.centres[:, i:i + 1]))
        assert torch.equal(alone[0], together[i])


def test_random_choices_follow_mlkds_distributions():
    n = 14_000
    draw = draw_randaugment(n, 32, 32, torch.Generator().manual_seed(11))
    ops = draw.ops.flatten()
    counts = torch.bincount(ops, minlength=14).float()
    expected = 2 * n / 14
    assert ((counts - expected).abs() < 5 * expected**0.5).all(), counts  # uniform, with replacement
    same = (draw.ops[0] == draw.ops[1]).float().mean()
    assert abs(same - 1 / 14) < 0.02  # the two slots are independent: repeats happen
    assert draw.levels.min() >= 0 and draw.levels.max() < 1 and abs(draw.levels.mean() - 0.5) < 0.01
    assert draw.cutout.min() >= 0 and draw.cutout.max() < 0.5 and abs(draw.cutout.mean() - 0.25) < 0.01
    assert draw.centres.min() > 1 and draw.centres.max() <= 32 and abs(draw.centres.mean() - 16.5) < 0.2
    # posterize keeps int(v) bits, v uniform in [4, 8): 4 to 7 bits, a quarter each
    bits = magnitudes("posterize", n, seed=12).floor()
    assert set(bits.unique().tolist()) == {4.0, 5.0, 6.0, 7.0}
    assert ((torch.bincount(bits.long())[4:] / n - 0.25).abs() < 0.02).all()


def test_a_cpu_generator_drives_a_device_batch_like_a_cpu_one():
    device = "cuda" if torch.cuda.is_available() else None
    if device is None:
        pytest.skip("no CUDA device")
    pixels = as_batch(images(64, seed=8))
    transform = CropFlipRandAugmentNormalize(CIFAR100_MEAN, CIFAR100_STD)
    on_cpu = transform(pixels, torch.Generator().manual_seed(13))
    on_device = transform(pixels.to(device), torch.Generator().manual_seed(13))
    assert on_device.device.type == "cuda"
    assert torch.equal(on_device.cpu(), on_cpu)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_bundles_offer_the_strong_view(name, write_cifar10, write_cifar100, tmp_path):
    (write_cifar10 if name == "cifar10" else write_cifar100)(tmp_path)
    spec = load_registry().get("dataset", name).spec
    bundle = spec.builder()(spec.params(root=str(tmp_path)), DatasetContext(seed=0))
    strong = bundle.views["strong"]
    assert isinstance(strong, CropFlipRandAugmentNormalize)
    assert strong == CropFlipRandAugmentNormalize(bundle.train_transform.mean, bundle.train_transform.std)
    batch = bundle.train.inputs[:8]
    out = strong(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == torch.float32
