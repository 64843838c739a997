"""ImageNet folders with bad data: a class folder without images is refused when the dataset is
built, and a file that cannot be decoded stops training with one line naming it, in both decode
paths, also when a DataLoader worker meets it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from kdcore.api import DatasetContext
from kdcore.errors import KdcoreError
from kdcore_vision.datasets.imagenet import ImageFileError
from kdcore_vision.jpeg import decode_rgb
from tests.conftest import run_cli

CROP, RESIZE = 16, 20
WNID = "n01443537"  # the second class: its training images are items 4-7


@pytest.fixture
def build(registry):
    def build(decode: str, root: Path):
        spec = registry.get("dataset", "imagenet").spec
        params = spec.params(root=str(root), crop_size=CROP, resize_size=RESIZE, decode=decode)
        return spec.builder()(params, DatasetContext(seed=0, device="cpu"))
    return build


def _one_line(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    half = len(data) // 2
    path.write_bytes({
        "truncated": data[:half],
        "garbled": data[:half] + b"\xff" * (len(data) - half),  # the second half overwritten
        "no markers": data[:3] + b"\x00" * (len(data) - 3),  # a JPEG's first bytes, then zeros
        "text": b"not an image, only text\n",
        "empty": b"",
    }[how])


# --- class folders ---------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("leftover", [None, "notes.txt"])
def test_a_class_folder_without_images_is_refused(build, write_imagenet, tmp_path, split, leftover):
    write_imagenet(tmp_path)
    folder = tmp_path / split / WNID
    for image in folder.iterdir():
        image.unlink()
    if leftover:
        (folder / leftover).write_text("not an image")
    for decode in ("pil", "batched"):
        with pytest.raises(KdcoreError) as error:
            build(decode, tmp_path)
        message = _one_line(error, folder)
        assert "class folder without images (no .JPEG or .jpg file)" in message
        assert "ILSVRC-2012 archive, or delete it in both train/ and val/" in message


def test_a_class_missing_from_val_is_still_allowed(build, write_imagenet, tmp_path):
    write_imagenet(tmp_path)
    for image in (tmp_path / "val" / WNID).iterdir():
        image.unlink()
    (tmp_path / "val" / WNID).rmdir()
    assert build("pil", tmp_path).test.labels.tolist() == [0, 0, 2, 2]


# --- bad files, decode: pil ------------------------------------------------------------------

@pytest.mark.parametrize("how, problem", [
    ("truncated", "cannot be decoded (PIL: image file is truncated"),
    ("garbled", "cannot be decoded (PIL: image file is truncated"),
    ("no markers", "not an image file (PIL recognises no image format in it)"),
    ("text", "not an image file (PIL recognises no image format in it)"),
    ("empty", "not an image file (PIL recognises no image format in it)"),
])
def test_pil_names_a_bad_file(build, write_imagenet, tmp_path, how, problem):
    write_imagenet(tmp_path)
    bundle = build("pil", tmp_path)
    bad = bundle.train.inputs.files[5]
    _damage(bad, how)
    bundle.train.inputs[4]  # the others still load
    with pytest.raises(ImageFileError) as error:
        bundle.train.inputs[5]
    message = _one_line(error, bad)
    assert problem in message and message.endswith("; replace it with an intact copy from the ILSVRC-2012 "
                                                   "archive, or delete it")


def test_a_worker_error_reaches_the_main_process_as_one_line(build, write_imagenet, tmp_path):
    """torch.utils.data re-raises a worker's exception with its traceback as the message; the
    message is cut back to the original line."""
    write_imagenet(tmp_path)
    for decode in ("pil", "batched"):
        bundle = build(decode, tmp_path)
        bad = bundle.train.inputs.files[6]
        _damage(bad, "text")
        loader = DataLoader(bundle.train.inputs, batch_size=4, num_workers=1, collate_fn=bundle.train.collate)
        with pytest.raises(ImageFileError) as error:
            list(loader)
        _one_line(error, bad)
        bad.unlink()
        write_imagenet(tmp_path)


# --- bad files, decode: batched --------------------------------------------------------------

@pytest.mark.parametrize("how, problem", [
    ("text", "not a JPEG, nor another image format torchvision decodes (Unsupported image file);"),
    ("empty", "not a JPEG, nor another image format torchvision decodes (Expected a non empty"),
])
def test_batched_names_a_file_that_is_no_image(build, write_imagenet, tmp_path, how, problem):
    write_imagenet(tmp_path)
    bundle = build("batched", tmp_path)
    bad = bundle.train.inputs.files[5]
    _damage(bad, how)
    with pytest.raises(ImageFileError) as error:
        bundle.train.inputs[5]
    assert problem in _one_line(error, bad)


@pytest.mark.parametrize("how, problem", [
    ("truncated", "not a decodable JPEG (Image is incomplete or truncated)"),
    ("garbled", "not a decodable JPEG (Image is incomplete or truncated)"),
    ("no markers", "not a decodable JPEG ("),
])
def test_batched_names_a_corrupt_jpeg_when_its_batch_is_decoded(build, write_imagenet, tmp_path, how, problem):
    write_imagenet(tmp_path)
    bundle = build("batched", tmp_path)
    bad = bundle.train.inputs.files[5]
    _damage(bad, how)
    encoded, _ = bundle.train.collate([bundle.train.inputs[i] for i in range(4, 8)])  # reading is fine
    assert encoded.files == [str(path) for path in bundle.train.inputs.files[4:8]]
    with pytest.raises(KdcoreError) as error:
        bundle.train_transform(encoded, torch.Generator().manual_seed(0))
    assert problem in _one_line(error, bad)
    with pytest.raises(KdcoreError) as error:
        bundle.eval_transform(encoded)
    assert problem in _one_line(error, bad)
    with pytest.raises(KdcoreError, match=r"^image 1 of a batch of 4: not a decodable JPEG \("):
        decode_rgb(list(encoded), "cpu")  # a plain list carries no file names


# --- through a training run ------------------------------------------------------------------

@pytest.mark.parametrize("decode, how", [("pil", "truncated"), ("batched", "truncated"), ("batched", "text")])
def test_training_stops_with_one_line_naming_the_file(write_imagenet, write_recipe, tmp_path, monkeypatch,
                                                      capsys, decode, how):
    torch.set_num_threads(1)
    write_imagenet(tmp_path / "data")
    bad = tmp_path / "data" / "train" / WNID / f"{WNID}_2.JPEG"
    _damage(bad, how)
    recipe = {
        "name": "bad-imagenet",
        "seed": 0,
        "data": {"name": "imagenet", "params": {"root": str(tmp_path / "data"), "crop_size": CROP,
                                                "resize_size": RESIZE, "decode": decode}},
        "optimizer": {"lr": 0.05, "momentum": 0.9},
        "teacher": {"arch": {"name": "mlp", "params": {"hidden": [8]}}, "objective": {"name": "ce"},
                    "epochs": 1, "batch_size": 4},
        "student": {"arch": {"name": "mlp", "params": {"hidden": [8]}}, "epochs": 1, "batch_size": 4,
                    "distillers": [{"name": "kd", "weight": 1.0}]},
        "runtime": {"device": "cpu", "threads": 1, "num_workers": 1},
    }
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--run-dir", tmp_path / "run")
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {bad}: "), err
    assert "Traceback" not in err and "DataLoader worker" not in err
