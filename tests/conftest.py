"""Shared fixtures: tiny recipes and the command line run in-process; the registry of the
installed plugins and fake plugin distributions come from kdcore's test kit (kdcore.testing)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from kdcore.cli import main


@pytest.fixture(scope="session")
def registry(kdcore_registry):
    return kdcore_registry


def published_weights() -> dict[str, float]:
    """Each installed distiller's published loss weight, as its spec declares it."""
    from kdcore.registry import load_registry

    return {c.name: c.spec.published_weight for c in load_registry().all_components() if c.kind == "distiller"}


TINY_TOY = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "gaussian", "params": {"n_train": 256, "n_val": 128, "n_test": 512, "dim": 8}},
    "optimizer": {"lr": 0.05, "momentum": 0.9},
    "teacher": {
        "arch": {"name": "mlp", "params": {"hidden": [16]}},
        "objective": {"name": "mse"},
        "epochs": 3,
        "batch_size": 32,
    },
    "student": {
        "arch": {"name": "mlp", "params": {"hidden": [8]}},
        "ce_weight": 0.5,
        "distillers": [{"name": "kd", "weight": 0.5, "params": {"temperature": 2.0}}],
        "epochs": 3,
        "batch_size": 32,
    },
    "runtime": {"device": "cpu", "threads": 1},
}


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe dict (or YAML text) to a file and return its path."""

    def write(content: dict | str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(textwrap.dedent(text))
        return path

    return write


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run ``kdcore ARGS`` in this process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["kdcore", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def teacher_log(objective: str, tmp_path: Path, monkeypatch, capsys) -> list[dict]:
    """Train TINY_TOY's teacher with ``objective`` (then a one-epoch student) through ``kdcore
    run``; returns the teacher's ``metrics.jsonl`` records, one per epoch."""
    import copy
    import json

    recipe = copy.deepcopy(TINY_TOY)
    recipe["teacher"]["objective"] = {"name": objective}
    recipe["student"]["epochs"] = 1
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "run")
    assert code == 0, err
    return [json.loads(line) for line in (tmp_path / "run/teacher/metrics.jsonl").read_text().splitlines()]
