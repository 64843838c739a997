"""Shared teachers: one teacher per identity, trained once, reused across runs and sweeps."""

import copy
import dataclasses
import json
import re
import signal
import subprocess
import sys
import time

from kdcore.config.loader import load_variants
from kdcore.distill.store import teacher_key
from kdcore.registry import Registry
from tests.conftest import TINY_TOY, run_cli


def test_key_changes_with_what_determines_the_teacher_only(write_recipe, registry):
    def key(**overrides):
        recipe = copy.deepcopy(TINY_TOY)
        for path, value in overrides.items():
            section, field = path.split("__")
            recipe[section][field] = value
        return teacher_key(load_variants(write_recipe(recipe), [], registry)[1][0].recipe, registry)

    base = key()
    assert key(student__ce_weight=0.9) == base
    assert key(teacher__eval_batch_size=7) == base
    assert key(runtime__threads=2) == base
    assert key(teacher__epochs=4) != base
    assert key(teacher__objective={"name": "ce"}) != base
    assert base.startswith("mlp-mse-")


def with_provider_version(registry, kind, name, version):
    """The registry with the component ``kind``/``name`` provided by another release."""
    [component] = registry.components[kind][name]
    provider = dataclasses.replace(component.provider, version=version)
    copied = Registry(plugins=list(registry.plugins),
                      components={k: dict(by_name) for k, by_name in registry.components.items()})
    copied.components[kind][name] = [dataclasses.replace(component, provider=provider)]
    return copied


def test_key_changes_with_the_release_of_the_plugins_that_define_the_teacher(write_recipe, registry):
    """A teacher trained by version 1.0 of an objective plugin is not reused once the plugin's
    release changes (its loss may have); the student's plugins do not matter."""
    recipe = load_variants(write_recipe(TINY_TOY), [], registry)[1][0].recipe
    base = teacher_key(recipe, registry)
    for kind, name in (("objective", "mse"), ("architecture", "mlp"), ("dataset", "gaussian")):
        changed = teacher_key(recipe, with_provider_version(registry, kind, name, "99.0"))
        assert changed != base, kind
        assert changed.startswith("mlp-mse-")
    assert teacher_key(recipe, with_provider_version(registry, "distiller", "kd", "99.0")) == base


def test_students_of_a_sweep_share_one_teacher_trained_once_also_in_parallel(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = dict(copy.deepcopy(TINY_TOY), matrix={"student.ce_weight": [0.25, 0.5, 1.0]})
    recipe["runtime"] = {"device": "cpu", "jobs": 2}
    path = write_recipe(recipe)
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "sweep")
    assert code == 0, err
    [stored] = [p for p in (tmp_path / "teachers").iterdir() if not p.name.startswith(".")]
    assert len((stored / "metrics.jsonl").read_text().splitlines()) == 3  # trained once, 3 epochs
    runs = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]
    assert len(runs) == 3
    assert all((run / "teacher").resolve() == stored.resolve() for run in runs)
    before = (stored / "model.safetensors").stat().st_mtime_ns

    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "again",
                           "--set", "matrix.student.ce_weight=[0.75]")
    assert code == 0, err
    assert (stored / "model.safetensors").stat().st_mtime_ns == before
    assert (tmp_path / "again/ce_weight=0.75/teacher").resolve() == stored.resolve()


def test_an_interrupted_sweep_resumes_without_retraining_finished_runs_or_teachers(write_recipe, tmp_path):
    recipe = dict(copy.deepcopy(TINY_TOY), matrix={"student.ce_weight": [0.25, 0.5, 1.0]})
    recipe["data"]["params"]["n_train"] = 2000
    recipe["student"]["epochs"] = 6
    path = write_recipe(recipe)
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "kdcore.cli", "run", str(path), "--run-dir", str(sweep)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = sweep / "ce_weight=0.25"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not (first / "summary.json").exists():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (first / "summary.json").exists(), "the first run did not finish before the kill"
    assert not (sweep / "ce_weight=1.0/summary.json").exists(), "the sweep finished before the kill"
    finished = (first / "summary.json").stat().st_mtime_ns
    teacher_log = (first / "teacher/metrics.jsonl").resolve()
    teacher_epochs = teacher_log.read_text()

    result = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert re.search(r"[12] of 3 runs already finished", result.stdout)
    assert (first / "summary.json").stat().st_mtime_ns == finished
    assert teacher_log.read_text() == teacher_epochs  # the shared teacher was not trained again
    for run in ("ce_weight=0.5", "ce_weight=1.0"):
        summary = json.loads((sweep / run / "summary.json").read_text())
        assert summary["student"]["test"]["top1"] > 0
    assert (sweep / "report.md").exists()
