"""Export and load: the weights files of a run carry what rebuilds their network (architecture,
params, classes, input shape, normalisation, kdcore version); kdcore.load rebuilds the trained
network from a file alone; kdcore export writes ONNX (run here with onnxruntime), TorchScript
(run with torch.jit.load) and safetensors files that give the network's own logits, for a batch
of another size than the one they were traced with."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

import kdcore
from kdcore.api import ArchitectureContext, DatasetContext, DatasetSpec
from kdcore.errors import KdcoreError
from kdcore.nn import DatasetBundle, Split
from kdcore.runs.layout import load_weights, read_weights_metadata
from kdcore.testing import run_recipe
from tests.conftest import TINY_TOY, run_cli

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
CLASSES = 4


def normalise(batch: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (batch.float() / 255 - mean.to(batch.device)) / std.to(batch.device)


def build_tiny_uint8_images(params, ctx) -> DatasetBundle:
    """uint8 images normalised by the bundle's transforms, as CIFAR's are, declaring it."""
    generator = torch.Generator().manual_seed(0)

    def split(count: int) -> Split:
        labels = torch.arange(count) % CLASSES
        noise = torch.randint(0, 100, (count, 3, 32, 32), generator=generator)
        return Split(inputs=(noise + labels[:, None, None, None] * 40).to(torch.uint8), labels=labels)

    return DatasetBundle(num_classes=CLASSES, input_shape=(3, 32, 32), train=split(32), val=split(16),
                         test=split(16), train_transform=lambda batch, generator: normalise(batch),
                         eval_transform=normalise, normalization=(MEAN, STD))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, kdcore_registry):
    recipe = copy.deepcopy(TINY_TOY)
    recipe["teacher"]["epochs"] = recipe["student"]["epochs"] = 1
    directory = tmp_path_factory.mktemp("toy") / "run"
    summary = run_recipe(recipe, directory, kdcore_registry)
    return directory, summary


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, kdcore_registry):
    recipe = {
        "name": "tiny-uint8",
        "data": {"name": "tiny-uint8-images"},
        "optimizer": {"lr": 0.05, "momentum": 0.9},
        "student": {"arch": {"name": "resnet8"}, "epochs": 1, "batch_size": 16},
        "runtime": {"device": "cpu", "threads": 1},
    }
    spec = DatasetSpec(name="tiny-uint8-images", summary="test", build=build_tiny_uint8_images)
    directory = tmp_path_factory.mktemp("images") / "run"
    run_recipe(recipe, directory, kdcore_registry, components=[spec])
    return directory


def rebuilt(registry, arch: dict, num_classes: int, input_shape: tuple[int, ...], weights) -> torch.nn.Module:
    """The network built by hand from the recipe's architecture and the weights file."""
    spec = registry.get("architecture", arch["name"]).spec
    params = spec.params.model_validate(arch.get("params", {}))
    model = spec.builder()(params, ArchitectureContext(num_classes, input_shape))
    load_weights(model, weights)
    return model.eval()


def test_the_weights_files_carry_their_networks_metadata(toy_run):
    directory, _ = toy_run
    for stage, file, hidden in [("student", "model.safetensors", [8]), ("student", "best.safetensors", [8]),
                                ("teacher", "model.safetensors", [16])]:
        metadata = read_weights_metadata(directory / stage / file)
        assert metadata["format"] == 1 and metadata["kdcore"] == kdcore.__version__
        assert metadata["architecture"]["name"] == "mlp"
        assert metadata["architecture"]["params"]["hidden"] == hidden
        assert (metadata["num_classes"], metadata["input_shape"]) == (3, [8])
        assert metadata["normalization"] is None  # the toy data are used as stored
        assert (metadata["stage"], metadata["recipe"]) == (stage, "tiny")


def test_load_returns_the_trained_network_in_eval_mode(toy_run, registry):
    directory, summary = toy_run
    network = kdcore.load(directory)
    assert not network.training and network.kdcore_metadata["stage"] == "student"
    by_hand = rebuilt(registry, TINY_TOY["student"]["arch"], 3, (8,), directory / "student" / "model.safetensors")
    inputs = torch.randn(7, 8)
    with torch.no_grad():
        assert torch.equal(network(inputs), by_hand(inputs))
    # the very network the run evaluated: its test NLL is the summary's
    test = registry.get("dataset", "gaussian").spec
    data = test.builder()(test.params.model_validate(TINY_TOY["data"]["params"]), DatasetContext(seed=0))
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(network(data.test.inputs), data.test.labels).item()
    assert nll == pytest.approx(summary["student"]["test"]["nll"], abs=1e-5)
    teacher = kdcore.load(directory / "teacher" / "model.safetensors")
    assert teacher.kdcore_metadata["stage"] == "teacher" and not teacher.training
    assert kdcore.load(directory, stage="teacher", weights="best").kdcore_metadata["architecture"]["params"][
        "hidden"] == [16]


def test_onnx_export_runs_in_onnxruntime_with_any_batch_size(image_run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "student.onnx"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "export", image_run, "--weights", "best", "--format", "onnx",
                                   "--out", out)
    assert code == 0, stderr
    assert "checked with onnxruntime" in stdout and "mean (0.4, 0.5, 0.6)" in stdout
    network = kdcore.load(image_run, weights="best")
    assert network.kdcore_metadata["normalization"] == {"mean": list(MEAN), "std": list(STD)}
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    stored = json.loads(session.get_modelmeta().custom_metadata_map["kdcore"])
    assert stored["architecture"]["name"] == "resnet8" and stored["input_shape"] == [3, 32, 32]
    for batch in (5, 1):  # the export traced a batch of 2
        inputs = torch.randn(batch, 3, 32, 32)
        (logits,) = session.run(["logits"], {"inputs": inputs.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), network(inputs), atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_gives_the_networks_logits(image_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "student.pt"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "export", image_run, "--format", "torchscript", "--out", out)
    assert code == 0, stderr
    assert "checked with torch.jit.load" in stdout
    extra = {"kdcore.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["kdcore.json"])["num_classes"] == CLASSES
    network = kdcore.load(image_run)
    inputs = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(inputs), network(inputs), atol=1e-4, rtol=0)


def test_weights_without_metadata_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"weight": torch.zeros(3, 8)}, str(plain))
    code, _, stderr = run_cli(monkeypatch, capsys, "export", plain, "--format", "torchscript",
                              "--out", tmp_path / "x.pt")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert str(plain) in stderr and "kdcore export RUN_DIR --format safetensors" in stderr
    with pytest.raises(KdcoreError, match="carries no kdcore metadata"):
        kdcore.load(plain)
    assert not (tmp_path / "x.pt").exists()


def test_an_older_runs_weights_get_their_metadata_from_its_recipe(toy_run, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    old = tmp_path / "old"
    shutil.copytree(toy_run[0], old, symlinks=True)
    shutil.copy(toy_run[0].parent / "run.recipe.yaml", old / "recipe.yaml")  # kdcore run writes it there
    weights = old / "student" / "model.safetensors"
    safetensors.torch.save_file(safetensors.torch.load_file(str(weights)), str(weights))  # as kdcore 0.1 wrote them
    assert read_weights_metadata(weights) is None
    with pytest.raises(KdcoreError, match="re-export it"):
        kdcore.load(old)
    out = tmp_path / "student.safetensors"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "export", old, "--format", "safetensors", "--out", out)
    assert code == 0, stderr
    assert read_weights_metadata(out)["architecture"]["params"]["hidden"] == [8]
    inputs = torch.randn(4, 8)
    with torch.no_grad():
        assert torch.equal(kdcore.load(out)(inputs), kdcore.load(toy_run[0])(inputs))


def test_onnx_without_its_packages_says_what_to_install(toy_run, tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *more: None if name == "onnxscript" else find_spec(name, *more))
    code, _, stderr = run_cli(monkeypatch, capsys, "export", toy_run[0], "--format", "onnx",
                              "--out", tmp_path / "x.onnx")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "needs" in stderr and "onnxscript" in stderr and "pip install 'kdcore[export]'" in stderr


def test_a_folder_that_is_no_run_is_refused(toy_run, tmp_path):
    with pytest.raises(KdcoreError, match="pass one of them"):
        kdcore.load(toy_run[0].parent)
    with pytest.raises(KdcoreError, match="no student/ folder"):
        kdcore.load(tmp_path)
