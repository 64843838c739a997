"""Shared teachers: one teacher per identity, trained once, reused across runs and sweeps."""

import copy

from kdcore.recipe_loader import load_variants
from kdcore.teacher_store import teacher_key
from tests.conftest import TINY_TOY, run_cli


def test_key_changes_with_what_determines_the_teacher_only(write_recipe, registry):
    def key(**overrides):
        recipe = copy.deepcopy(TINY_TOY)
        for path, value in overrides.items():
            section, field = path.split("__")
            recipe[section][field] = value
        return teacher_key(load_variants(write_recipe(recipe), [], registry)[1][0].recipe)

    base = key()
    assert key(student__ce_weight=0.9) == base
    assert key(teacher__eval_batch_size=7) == base
    assert key(runtime__threads=2) == base
    assert key(teacher__epochs=4) != base
    assert key(teacher__objective={"name": "ce"}) != base
    assert base.startswith("mlp-mse-")


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
