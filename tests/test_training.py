"""The trainer end to end on the toy set: run directory, metrics, determinism, resume after a
kill, non-finite losses, loading a teacher."""

import copy
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kdcore.api import ObjectiveSpec
from kdcore.errors import NonFiniteLossError
from kdcore.callbacks import Callback
from kdcore.config.loader import load_variants
from kdcore.registry import PluginInfo
from kdcore.distill.run import Run
from tests.conftest import TINY_TOY, run_cli


def weights(path):
    return load_file(str(path))


def assert_same_weights(first, second):
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_run_writes_the_run_directory(write_recipe, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "run", write_recipe(TINY_TOY), "--run-dir", tmp_path / "run")
    assert code == 0, err
    run = tmp_path / "run"
    for name in ("recipe.yaml", "env.json", "summary.json", "report.md",
                 "teacher/model.safetensors", "teacher/checkpoint.pt", "teacher/metrics.jsonl",
                 "student/model.safetensors", "student/metrics.jsonl"):
        assert (run / name).is_file(), name
    env = json.loads((run / "env.json").read_text())
    assert env["seed"] == 0 and env["torch"] == torch.__version__ and env["device"] == "cpu"
    student_log = [json.loads(line) for line in (run / "student/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in student_log] == [1, 2, 3]
    assert {"train/loss", "train/ce", "train/kd", "val/top1", "val/top5", "val/mse_to_true", "lr"} <= set(student_log[0])
    weighted = 0.5 * student_log[0]["train/ce"] + 0.5 * student_log[0]["train/kd"]
    assert student_log[0]["train/loss"] == pytest.approx(weighted, rel=1e-5)
    summary = json.loads((run / "summary.json").read_text())
    for stage in ("teacher", "student"):
        assert {"test", "val", "train"} <= set(summary[stage])
        assert 0 <= summary[stage]["test"]["top1"] <= 100
        assert summary[stage]["train"]["mse_to_true"] > 0 and summary[stage]["train"]["ce_to_true"] > 0
    assert (run / "recipe.yaml").read_text().count("reduction: sum") == 1  # defaults resolved
    best = summary["student"]["best_val"]
    val_top1 = [r["val/top1"] for r in student_log]
    assert best["val_top1"] == max(val_top1) and best["epoch"] == val_top1.index(max(val_top1)) + 1
    assert set(best["test"]) >= {"top1", "nll"} and (run / "student/best.safetensors").is_file()


def test_same_seed_gives_identical_weights_and_other_seed_differs(write_recipe, tmp_path, monkeypatch, capsys):
    path = write_recipe(TINY_TOY)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / name, "--set", f"seed={seed}")[0] == 0
    assert_same_weights(tmp_path / "a/student/model.safetensors", tmp_path / "b/student/model.safetensors")
    assert not torch.equal(*[weights(tmp_path / n / "student/model.safetensors")["classifier.weight"] for n in "ac"])


def test_resume_after_kill_reaches_the_same_weights(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = copy.deepcopy(TINY_TOY)
    recipe["data"]["params"]["n_train"] = 4000
    recipe["student"]["epochs"] = 8
    path = write_recipe(recipe)
    assert run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "whole")[0] == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "kdcore.cli", "run", str(path), "--run-dir", str(killed)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    log = killed / "student/metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(log.read_text().splitlines())
    assert 2 <= done < 8, "the run was not killed in the middle of the student stage"
    assert not (killed / "student/model.safetensors").exists()

    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", killed, "--resume")
    assert code == 0, err
    assert_same_weights(tmp_path / "whole/student/model.safetensors", killed / "student/model.safetensors")
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert epochs == list(range(1, 9))


def test_resume_refuses_a_changed_recipe(write_recipe, tmp_path, monkeypatch, capsys):
    path = write_recipe(TINY_TOY)
    assert run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "r")[0] == 0
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "r", "--resume", "--set", "seed=5")
    assert code == 2 and "differs from the one this run started with" in err


def test_a_run_never_overwrites_another(write_recipe, tmp_path, monkeypatch, capsys):
    path = write_recipe(TINY_TOY)
    assert run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "r")[0] == 0
    before = (tmp_path / "r/student/model.safetensors").read_bytes()
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "r")
    assert code == 2 and "directory is not empty" in err
    assert (tmp_path / "r/student/model.safetensors").read_bytes() == before
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert run_cli(monkeypatch, capsys, "run", path, "--set", "student.epochs=1", "--set", "teacher.epochs=1")[0] == 0
    assert len(list((tmp_path / "runs/tiny").iterdir())) == 2


def test_teacher_loaded_from_checkpoint_gives_the_same_student(write_recipe, tmp_path, monkeypatch, capsys):
    path = write_recipe(TINY_TOY)
    assert run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "trained")[0] == 0
    recipe = copy.deepcopy(TINY_TOY)
    del recipe["teacher"]["objective"]
    recipe["teacher"]["checkpoint"] = str(tmp_path / "trained/teacher/model.safetensors")
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe, "load.yaml"), "--run-dir", tmp_path / "loaded")
    assert code == 0, err
    assert_same_weights(tmp_path / "trained/student/model.safetensors", tmp_path / "loaded/student/model.safetensors")


def test_teacher_checkpoint_of_another_architecture_is_a_clear_error(write_recipe, tmp_path, monkeypatch, capsys):
    path = write_recipe(TINY_TOY)
    assert run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "trained")[0] == 0
    recipe = copy.deepcopy(TINY_TOY)
    del recipe["teacher"]["objective"]
    recipe["teacher"]["checkpoint"] = str(tmp_path / "trained/teacher/model.safetensors")
    recipe["teacher"]["arch"]["params"]["hidden"] = [32]
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe, "load.yaml"), "--run-dir", tmp_path / "bad")
    assert code == 2
    assert "model.safetensors: weights do not fit MLP" in err and "Traceback" not in err


class NaNAfter(nn.Module):
    """An objective that turns NaN after a number of steps."""

    def __init__(self, params, ctx):
        super().__init__()
        self.steps = 0

    def forward(self, logits, labels):
        self.steps += 1
        loss = nn.functional.cross_entropy(logits, labels)
        return loss * float("nan") if self.steps > 10 else loss


def test_non_finite_loss_stops_with_stage_epoch_and_term_keeping_last_good_checkpoint(registry, write_recipe, tmp_path):
    patched = registry.with_component("objective", ObjectiveSpec(name="nan-after", summary="test", build=NaNAfter),
                                      PluginInfo("test", "tests", "0"))
    recipe = copy.deepcopy(TINY_TOY)
    recipe["teacher"]["objective"] = {"name": "nan-after"}
    [variant] = load_variants(write_recipe(recipe), [], patched)[1]
    with pytest.raises(NonFiniteLossError, match=r"teacher stage, epoch 2: loss term '(loss|nan-after)' is nan"):
        Run(variant.recipe, tmp_path / "run", patched).execute()
    state = torch.load(tmp_path / "run/teacher/checkpoint.pt", weights_only=True)
    assert state["epochs_done"] == 1
    assert all(torch.isfinite(t).all() for t in state["trainable"].values())
    assert not (tmp_path / "run/teacher/model.safetensors").exists()


def test_matrix_run_writes_report_with_one_row_per_group(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = dict(copy.deepcopy(TINY_TOY), matrix={"teacher.objective.name": ["ce", "mse"], "seed": [0, 1]})
    recipe["teacher"]["epochs"] = recipe["student"]["epochs"] = 1
    code, out, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--run-dir", tmp_path / "m")
    assert code == 0, err
    dirs = sorted(p.name for p in (tmp_path / "m").iterdir() if p.is_dir())
    assert dirs == ["objective=ce,seed=0", "objective=ce,seed=1", "objective=mse,seed=0", "objective=mse,seed=1"]
    report = (tmp_path / "m/report.md").read_text()
    assert "| objective=ce | 2 |" in report and "| objective=mse | 2 |" in report
    assert (tmp_path / "m/bcpd_scatter.png").read_bytes()[:4] == b"\x89PNG"
    # Resuming a finished sweep trains nothing again.
    stamp = (tmp_path / "m/objective=ce,seed=0/summary.json").stat().st_mtime_ns
    code, out, _ = run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--run-dir", tmp_path / "m", "--resume")
    assert code == 0 and "4 of 4 runs already finished" in out
    assert (tmp_path / "m/objective=ce,seed=0/summary.json").stat().st_mtime_ns == stamp


def test_cached_teacher_features_equal_computed_ones():
    from kdcore.distill.student import _cached_targets
    from kdcore.distill.taps import FeatureRecorder
    from kdcore.nn import Batch, Split
    from kdcore_toy.mlp import MLP

    teacher = MLP(4, [6, 5], 3).eval().requires_grad_(False)
    recorder = FeatureRecorder(teacher, {"stages": ("layers.1", "layers.3")}, ["stages"])
    split = Split(inputs=torch.randn(10, 4), labels=torch.zeros(10, dtype=torch.long))
    batch = Batch(inputs=split.inputs[[7, 2, 5]], labels=torch.zeros(3), index=torch.tensor([7, 2, 5]), epoch=0, epochs=1)
    cached = _cached_targets(recorder, split, torch.device("cpu"), 4)(batch)
    computed = recorder(batch.inputs)
    assert torch.allclose(cached["logits"], computed["logits"], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(cached["stages"], computed["stages"]))
    assert not cached["logits"].requires_grad


def test_student_alone_without_a_teacher(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = copy.deepcopy(TINY_TOY)
    del recipe["teacher"]
    recipe["student"]["distillers"] = []
    recipe["student"]["ce_weight"] = 1.0
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--run-dir", tmp_path / "alone")
    assert code == 0, err
    summary = json.loads((tmp_path / "alone/summary.json").read_text())
    assert set(summary) == {"student"} and not (tmp_path / "alone/teacher").exists()
    recipe["student"]["distillers"] = [{"name": "kd"}]
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe, "kd.yaml"), "--run-dir", tmp_path / "kd")
    assert code == 2 and "distiller 'kd' reads the teacher's features; add a teacher stage" in err


def test_non_finite_outputs_on_held_out_data_stop_the_stage(registry, write_recipe, tmp_path, monkeypatch):
    from kdcore.engine import evaluate as evaluation

    real = evaluation._batch_sums
    monkeypatch.setattr(evaluation, "_batch_sums", lambda logits, labels, p: real(logits * float("nan"), labels, p))
    [variant] = load_variants(write_recipe(TINY_TOY), [], registry)[1]
    with pytest.raises(NonFiniteLossError, match=r"teacher stage, epoch 1: the network's outputs on the val split are not finite"):
        Run(variant.recipe, tmp_path / "run", registry).execute()


@pytest.mark.parametrize("deterministic", [None, False])
def test_a_run_sets_its_kernel_choice_inside_and_restores_the_callers_settings(
    deterministic, registry, write_recipe, tmp_path
):
    """On a CPU a run is deterministic by default; ``deterministic: false`` lets cuDNN benchmark."""
    seen = {}

    def settings():
        return (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory,
                torch.backends.cudnn.benchmark)

    class Spy(Callback):
        def on_stage_start(self, stage):
            seen[stage.stage] = settings()

    recipe = copy.deepcopy(TINY_TOY)
    recipe["runtime"]["deterministic"] = deterministic
    before = settings()
    [variant] = load_variants(write_recipe(recipe), [], registry)[1]
    Run(variant.recipe, tmp_path / "run", registry, callbacks=Spy()).execute()
    expected = (True, False, False) if deterministic is None else (False, False, True)
    assert seen == {"teacher": expected, "student": expected}
    assert settings() == before


def test_cross_entropy_of_weight_zero_is_logged_but_not_trained_on(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = copy.deepcopy(TINY_TOY)
    recipe["student"]["ce_weight"] = 0.0
    assert run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--run-dir", tmp_path / "r")[0] == 0
    log = [json.loads(line) for line in (tmp_path / "r/student/metrics.jsonl").read_text().splitlines()]
    for record in log:
        assert record["train/ce"] > 0
        assert record["train/loss"] == pytest.approx(0.5 * record["train/kd"], rel=1e-5)


def test_a_resumed_stage_gets_back_the_best_weights_of_its_checkpoint(tmp_path):
    """A best-weights file written after the last checkpoint belongs to an epoch the resumed
    stage forgets; on non-deterministic hardware the redone epochs may never write over it. The
    checkpoint pins the best files as they were, and resuming puts those back."""
    from kdcore.callbacks import Callback
    from kdcore.testing import run_recipe

    recipe = copy.deepcopy(TINY_TOY)
    recipe["student"]["epochs"] = 4
    recipe["runtime"]["checkpoint_every"] = 2
    student = tmp_path / "run/student"
    at_checkpoint = {}

    class StopAfterEpoch3(Callback):
        def on_checkpoint(self, stage, epochs_done):
            if stage.stage == "student":
                at_checkpoint.update({p.name: p.read_bytes() for p in student.glob("best*.safetensors")})

        def on_epoch_end(self, stage, record):
            if stage.stage == "student" and record["epoch"] == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "run", callbacks=StopAfterEpoch3())
    assert set(at_checkpoint) == {"best.safetensors"} and (student / "best.safetensors.at-2").exists()
    (student / "best.safetensors").write_bytes(b"written by epoch 3 of the stopped process")

    class StopAtStart(Callback):
        def on_stage_start(self, stage):
            if stage.stage == "student":
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "run", callbacks=StopAtStart())
    assert (student / "best.safetensors").read_bytes() == at_checkpoint["best.safetensors"]
    summary = run_recipe(recipe, tmp_path / "run")
    assert summary["student"]["best_val"]["epoch"] >= 1
    assert not list(student.glob("*.at-*")), "a finished stage keeps no pins"
