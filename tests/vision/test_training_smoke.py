"""Training smoke tests for the vision plugin: one SGD step through every architecture, and the
paper's recipes run end to end (``kdcore run``) on tiny CIFAR pickles written by the conftest
fixtures, shrunk with ``--set`` to one or two epochs of small networks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from kdcore.api import ArchitectureContext
from kdcore.runs.progress import RichProgress
from tests.conftest import run_cli
from tests.vision.test_models import MODELS_BY_NAME

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

TV_INPUT = 32  # the torchvision networks accept 32×32 (1×1 after the last stage); 64×64 took 3× longer


def _architectures(registry) -> list[str]:
    """The vision plugin's fixed networks (the models by name need a name: test_model_hub.py)."""
    names = sorted(registry.names("architecture"))
    return [n for n in names if registry.get("architecture", n).provider.name == "vision" and n not in MODELS_BY_NAME]


def _build(registry, name: str, num_classes: int, size: int) -> torch.nn.Module:
    spec = registry.get("architecture", name).spec
    return spec.builder()(spec.params.model_validate({}), ArchitectureContext(num_classes, (3, size, size)))


def test_every_vision_architecture_is_covered(registry):
    names = _architectures(registry)
    assert {"resnet8", "resnet110", "resnet32x4", "wrn-40-2", "vgg13", "mobilenetv2-x0.1",
            "shufflenetv1", "shufflenetv2", "resnet50", "tv-resnet50", "tv-mobilenet_v2"} <= set(names)


def pytest_generate_tests(metafunc):
    if "architecture" in metafunc.fixturenames:
        from kdcore.registry import load_registry

        metafunc.parametrize("architecture", _architectures(load_registry()))


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two threads spin against other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_one_sgd_step(architecture, registry, one_thread):
    """Batch 2 (32×32, 100 classes, the torchvision networks too): the loss is finite, every
    parameter gets a finite gradient, and every parameter with a non-zero gradient moves."""
    torch.manual_seed(0)
    size = TV_INPUT if architecture.startswith("tv-") else 32
    model = _build(registry, architecture, 100, size).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 100)
    loss = F.cross_entropy(logits, torch.tensor([3, 97]))
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    moved = 0
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(parameter.grad).all(), name
        if parameter.grad.abs().sum() > 0:
            assert not torch.equal(parameter.detach(), before[name]), f"{name} did not change"
            moved += 1
    assert moved >= 0.9 * len(before)


# --- kdcore run on tiny data ---------------------------------------------------------------------


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def stage_steps(monkeypatch):
    """Total steps each (run, stage) announces to the progress bars: epochs × steps per epoch."""
    seen: dict[tuple[str, str], int] = {}
    original = RichProgress.on_stage_start

    def on_stage_start(self, stage):
        seen[(stage.run, stage.stage)] = stage.steps_per_epoch * stage.epochs
        original(self, stage)

    monkeypatch.setattr(RichProgress, "on_stage_start", on_stage_start)
    return seen


SMALL = ["runtime.device=cpu", "runtime.jobs=1", "runtime.threads=1", "runtime.checkpoint_every=1"]


def test_cifar100_table2_recipe_runs_end_to_end(write_cifar100, tmp_path, monkeypatch, capsys):
    """Table 2's recipe (method + KD) on 200 / 100 tiny CIFAR-100 images, resnet8 → resnet8,
    one method, a CE and an MSE teacher."""
    root = tmp_path / "data"
    write_cifar100(root, train=200, test=100)
    run = tmp_path / "run"
    code, _, err = run_cli(
        monkeypatch, capsys, "run", RECIPES / "cifar100/table2_resnet110_resnet20.yaml", "--run-dir", run,
        "--set", f"data.params.root={root}", *sum((["--set", s] for s in SMALL), []),
        "--set", "teacher.arch.name=resnet8", "--set", "student.arch.name=resnet8",
        "--set", "teacher.epochs=1", "--set", "student.epochs=2",
        "--set", "matrix.method=[{student.distillers.0: {name: pkt, weight: 30000.0}}]", "--set", "matrix.seed=[0]",
    )
    assert code == 0, err
    for objective in ("ce", "mse"):
        variant = run / f"method=pkt,objective={objective},seed=0"
        summary = json.loads((variant / "summary.json").read_text())
        assert 0 <= summary["teacher"]["test"]["top1"] <= 100
        assert 0 <= summary["student"]["test"]["top1"] <= 100
        teacher_log = records(variant / "teacher/metrics.jsonl")
        assert [r["epoch"] for r in teacher_log] == [1]
        assert f"train/{objective}" in teacher_log[0]
        student_log = records(variant / "student/metrics.jsonl")
        assert [r["epoch"] for r in student_log] == [1, 2]
        for record in student_log:
            assert {"train/ce", "train/kd", "train/pkt", "test/top1"} <= set(record)
            assert all(value == value for value in record.values())  # no NaN
            weighted = record["train/ce"] + 30000.0 * record["train/pkt"] + record["train/kd"]
            assert record["train/loss"] == pytest.approx(weighted, rel=1e-4)
    assert (run / "report.md").is_file()
    assert "objective=mse" in (run / "report.md").read_text()


def test_semisupervised_teacher_trains_on_the_labelled_images_only(write_cifar10, tmp_path, monkeypatch,
                                                                  capsys, stage_steps):
    root = tmp_path / "data"
    write_cifar10(root, per_batch=20, test=20)  # 100 training images
    run = tmp_path / "run"
    labeled, batch = 20, 8
    code, _, err = run_cli(
        monkeypatch, capsys, "run", RECIPES / "semisup/fig2_labels500.yaml", "--run-dir", run,
        "--set", f"data.params.root={root}", "--set", f"data.params.labeled={labeled}",
        *sum((["--set", s] for s in SMALL), []),
        "--set", "teacher.arch.name=resnet8", "--set", "student.arch.name=resnet8",
        "--set", "teacher.epochs=2", "--set", "student.epochs=1",
        "--set", f"teacher.batch_size={batch}", "--set", f"student.batch_size={batch}",
        "--set", "matrix.seed=[0]",
    )
    assert code == 0, err
    for objective in ("ce", "mse"):
        variant = f"objective={objective},seed=0"
        assert stage_steps[(variant, "teacher")] == 2 * -(-labeled // batch)  # 2 epochs × 3 steps
        assert stage_steps[(variant, "student")] == 1 * -(-100 // batch)  # every image, 13 steps
        assert len(records(run / variant / "teacher/metrics.jsonl")) == 2
        (student,) = records(run / variant / "student/metrics.jsonl")
        assert {"train/ce", "train/kd"} <= set(student)
        assert "student" in json.loads((run / variant / "summary.json").read_text())


def test_binary_cifar_recipe_runs_with_two_classes(write_cifar10, tmp_path, monkeypatch, capsys):
    """Table 4's KD recipe (MobileNetV2 ×0.1 student as written; a ResNet-8 teacher instead of
    VGG-13 to keep it fast) on tiny CIFAR-10, 1 epoch each."""
    root = tmp_path / "data"
    write_cifar10(root, per_batch=20, test=40)
    run = tmp_path / "run"
    code, _, err = run_cli(
        monkeypatch, capsys, "run", RECIPES / "binary/table4_cifar10_0-4_vs_5-9_kd.yaml", "--run-dir", run,
        "--set", f"data.params.root={root}", *sum((["--set", s] for s in SMALL), []),
        "--set", "teacher.arch.name=resnet8", "--set", "teacher.epochs=1", "--set", "student.epochs=1",
        "--set", "matrix.seed=[0]",
    )
    assert code == 0, err
    for objective in ("ce", "mse"):
        variant = run / f"method=kd,objective={objective},seed=0"
        summary = json.loads((variant / "summary.json").read_text())
        assert 0 <= summary["student"]["test"]["top1"] <= 100
        for stage, width in (("teacher", 64), ("student", 1280)):
            heads = [t for t in load_file(str(variant / stage / "model.safetensors")).values()
                     if t.ndim == 2 and t.shape[1] == width]
            assert [tuple(h.shape) for h in heads] == [(2, width)], stage
        (student,) = records(variant / "student/metrics.jsonl")
        assert {"train/ce", "train/kd"} <= set(student)


def test_gpu_speed_settings_also_run_on_cpu(write_cifar100, tmp_path, monkeypatch, capsys):
    """bf16 autocast, channels-last images and device-resident data (the defaults on a GPU),
    forced on here: the run trains and its losses stay finite."""
    root = tmp_path / "data"
    write_cifar100(root, train=64, test=32)
    run = tmp_path / "run"
    code, _, err = run_cli(
        monkeypatch, capsys, "run", RECIPES / "cifar100/table2_resnet110_resnet20.yaml", "--run-dir", run,
        "--set", f"data.params.root={root}", *sum((["--set", s] for s in SMALL), []),
        "--set", "teacher.arch.name=resnet8", "--set", "student.arch.name=resnet8",
        "--set", "teacher.epochs=1", "--set", "student.epochs=1",
        "--set", "matrix={seed: [0]}", "--set", "teacher.objective.name=mse",
        "--set", "runtime.precision=bf16", "--set", "runtime.channels_last=true", "--set", "runtime.data_on_device=true",
    )
    assert code == 0, err
    (student,) = records(run / "seed=0" / "student/metrics.jsonl")
    assert {"train/at", "train/kd"} <= set(student)
    assert all(math.isfinite(v) for k, v in student.items() if k.startswith("train/"))
