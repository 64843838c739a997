"""ImageNet with ``decode: batched``: workers read JPEG bytes and each batch is decoded and
augmented at once on the training device (here the CPU), by :mod:`kdcore_vision.jpeg`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from kdcore.api import DatasetContext
from kdcore_vision.datasets.imagenet import MEAN, STD, EncodedFiles, collate_encoded
from kdcore_vision.jpeg import CROP_RATIO, CROP_SCALE, decode_rgb, random_resized_crop_boxes
from tests.conftest import run_cli

CROP, RESIZE = 16, 20


@pytest.fixture
def build(registry):
    def build(device: str = "cpu", **params):
        spec = registry.get("dataset", "imagenet").spec
        return spec.builder()(spec.params(**params), DatasetContext(seed=0, device=device))
    return build


def _batch(split):
    """All items of a split, collated as the DataLoader would."""
    return split.collate([split.inputs[i] for i in range(len(split))])


def _pil_reference(image: Image.Image, box: list[int], flip: bool) -> torch.Tensor:
    crop = TF.resized_crop(image, *box, [CROP, CROP], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.normalize(TF.to_tensor(TF.hflip(crop) if flip else crop), MEAN, STD)


# Both decoders are libjpeg-turbo on the CPU and torchvision's uint8 antialiased resize follows
# PIL's, so here the two paths agree to about one grey level. On a GPU nvJPEG's IDCT and chroma
# upsampling differ from libjpeg's by a few grey levels: 0.05 in normalised units is about 3 of 255.
TOLERANCE = 0.05


def test_batched_evaluation_matches_pil(build, write_imagenet, tmp_path):
    write_imagenet(tmp_path)
    pil = build(root=str(tmp_path), crop_size=CROP, resize_size=RESIZE, decode="pil")
    batched = build(root=str(tmp_path), crop_size=CROP, resize_size=RESIZE, decode="batched")
    expected = torch.stack([pil.test.inputs[i][0] for i in range(len(pil.test))])
    encoded, labels = _batch(batched.test)
    assert isinstance(encoded, list) and torch.equal(labels, batched.test.labels)
    out = batched.eval_transform(encoded)
    assert out.shape == expected.shape == (6, 3, CROP, CROP) and out.dtype == torch.float32
    assert (out - expected).abs().mean() < TOLERANCE


def test_batched_training_crops_flips_and_normalises_like_pil(build, write_imagenet, tmp_path):
    """The same boxes and flips applied with PIL and torchvision's transforms give the same images,
    so boxes are read as (top, left, height, width) and flips are horizontal."""
    write_imagenet(tmp_path, size=(60, 45))
    bundle = build(root=str(tmp_path), crop_size=CROP, decode="batched")
    encoded, _ = _batch(bundle.train)
    out = bundle.train_transform(encoded, torch.Generator().manual_seed(1))
    assert out.shape == (12, 3, CROP, CROP) and out.dtype == torch.float32
    generator = torch.Generator().manual_seed(1)  # the transform's draws: boxes, then flips
    boxes = random_resized_crop_boxes(torch.full((12,), 45), torch.full((12,), 60), generator)
    flips = torch.rand(12, generator=generator) < 0.5
    assert 0 < int(flips.sum()) < 12
    with_pil = []
    for path, box, flip in zip(bundle.train.inputs.files, boxes.tolist(), flips.tolist()):
        with Image.open(path) as image:
            with_pil.append(_pil_reference(image.convert("RGB"), box, flip))
    assert (out - torch.stack(with_pil)).abs().mean() < TOLERANCE
    assert torch.equal(out, bundle.train_transform(encoded, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, bundle.train_transform(encoded, torch.Generator().manual_seed(2)))


def _reference_box(height: int, width: int, attempts: list[list[float]], position: list[float]) -> list[int]:
    """RandomResizedCrop's rule as torchvision documents it, one image at a time, on given
    uniform draws in [0, 1): (area, log-ratio) per attempt, then (row, column) of the box."""
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for area_draw, ratio_draw in attempts:
        area = height * width * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * area_draw)
        aspect = math.exp(log_low + (log_high - log_low) * ratio_draw)
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return [math.floor(position[0] * (height - h + 1)), math.floor(position[1] * (width - w + 1)), h, w]
    if width / height < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif width / height > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    return [(height - h) // 2, (width - w) // 2, h, w]


def test_random_resized_crop_boxes_follow_the_rule():
    generator = torch.Generator().manual_seed(0)
    sizes = torch.randint(300, 600, (400, 2), generator=generator)
    sizes[40:80] = torch.randint(1, 30, (40, 2), generator=generator)  # small: rounding decides
    sizes[:20] = torch.tensor([3, 500])  # very wide images: no attempt fits, the central box is taken
    sizes[20:40] = torch.tensor([500, 3])  # very tall images likewise
    heights, widths = sizes[:, 0], sizes[:, 1]
    boxes = random_resized_crop_boxes(heights, widths, torch.Generator().manual_seed(5))
    assert boxes.dtype == torch.int64 and boxes.shape == (400, 4)

    generator = torch.Generator().manual_seed(5)  # the same draws, applied one image at a time
    attempts = torch.rand(400, 10, 2, generator=generator, dtype=torch.float64).tolist()
    positions = torch.rand(400, 2, generator=generator, dtype=torch.float64).tolist()
    expected = [_reference_box(h, w, a, p) for h, w, a, p in zip(heights.tolist(), widths.tolist(), attempts, positions)]
    assert boxes.tolist() == expected
    assert (boxes[:20] == torch.tensor([0, 248, 3, 4])).all()  # height 3, width round(3 · 4/3)
    assert (boxes[20:40] == torch.tensor([248, 0, 4, 3])).all()

    top, left, height, width = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (height >= 1).all() and (width >= 1).all()
    assert (top + height <= heights).all() and (left + width <= widths).all()
    large = (heights >= 300) & (widths >= 300)  # rounding the sides moves area and ratio by < 1 %
    fraction = (height * width / (heights * widths))[large]
    aspect = (width / height)[large]
    assert (fraction >= CROP_SCALE[0] * 0.99).all() and (fraction <= CROP_SCALE[1]).all()
    assert (aspect >= CROP_RATIO[0] * 0.99).all() and (aspect <= CROP_RATIO[1] * 1.01).all()
    assert fraction.min() < 0.15 and fraction.max() > 0.9  # the whole scale range is drawn

    again = random_resized_crop_boxes(heights, widths, torch.Generator().manual_seed(5))
    other = random_resized_crop_boxes(heights, widths, torch.Generator().manual_seed(6))
    assert torch.equal(again, boxes) and not torch.equal(other, boxes)


def test_grayscale_cmyk_and_png_files_come_out_as_rgb(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    files = [tmp_path / f"{name}.JPEG" for name in ("gray", "cmyk", "png")]
    Image.fromarray(pixels).convert("L").save(files[0], format="JPEG")
    Image.fromarray(pixels).convert("CMYK").save(files[1], format="JPEG")
    Image.fromarray(pixels).save(files[2], format="PNG")  # as ILSVRC-2012's n02105855_2933.JPEG
    dataset = EncodedFiles(files, torch.tensor([0, 1, 2]))
    encoded, labels = collate_encoded([dataset[i] for i in range(3)])
    assert labels.tolist() == [0, 1, 2]
    images = decode_rgb(encoded, "cpu")
    assert [tuple(image.shape) for image in images] == [(3, 30, 40)] * 3
    assert torch.equal(images[0][0], images[0][1]) and torch.equal(images[0][0], images[0][2])


def test_auto_decodes_batched_on_a_gpu_only(build, write_imagenet, tmp_path):
    write_imagenet(tmp_path, train_per_class=1, val_per_class=1)
    on_gpu = build("cuda:0", root=str(tmp_path))
    assert on_gpu.train.collate is not None and on_gpu.train_transform.device == "cuda:0"
    on_cpu = build("cpu", root=str(tmp_path))
    assert on_cpu.train.collate is None and on_cpu.train_transform is None


def test_training_on_batched_decoding_is_finite_and_reproducible(write_imagenet, write_recipe, tmp_path,
                                                                monkeypatch, capsys):
    """Teacher and student stages through the kernel: DataLoader workers read bytes, the collate
    lists them, the transforms decode each batch (also the probe that sizes the distillers)."""
    write_imagenet(tmp_path / "data")
    recipe = {
        "name": "tiny-imagenet",
        "seed": 0,
        "data": {"name": "imagenet", "params": {"root": str(tmp_path / "data"), "crop_size": CROP,
                                                "resize_size": RESIZE, "decode": "batched"}},
        "optimizer": {"lr": 0.05, "momentum": 0.9},
        "teacher": {"arch": {"name": "mlp", "params": {"hidden": [16]}}, "objective": {"name": "ce"},
                    "epochs": 2, "batch_size": 5},
        "student": {"arch": {"name": "mlp", "params": {"hidden": [8]}}, "epochs": 2, "batch_size": 5,
                    "distillers": [{"name": "kd", "weight": 0.9}]},
        "runtime": {"device": "cpu", "threads": 1, "num_workers": 1},
    }
    path = write_recipe(recipe)
    logs = []
    for run in ("a", "b"):
        code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / run)
        assert code == 0, err
        log = [json.loads(line) for stage in ("teacher", "student")
               for line in (tmp_path / run / stage / "metrics.jsonl").read_text().splitlines()]
        logs.append([{key: value for key, value in record.items() if key != "seconds"} for record in log])
    assert [record["epoch"] for record in logs[0]] == [1, 2, 1, 2]
    assert all(math.isfinite(record["train/loss"]) and math.isfinite(record["test/nll"]) for record in logs[0])
    assert logs[0] == logs[1]
