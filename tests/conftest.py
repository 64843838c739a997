"""Shared fixtures: a registry of the installed plugins, tiny recipes, fake plugin distributions."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from kdcore.cli import main
from kdcore.registry import load_registry


@pytest.fixture(scope="session")
def registry():
    return load_registry()


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


def make_distribution(site: Path, name: str, version: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
    """A fake installed distribution: importable modules plus a dist-info folder whose
    entry_points.txt registers them in the ``kdcore`` group, as pip would lay it out."""
    for module, source in modules.items():
        path = site / Path(*module.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[kdcore]\n{lines}\n")


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """A directory on sys.path where tests lay out fake plugin distributions."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    for module in [m for m in sys.modules if m.startswith("fake_")]:
        del sys.modules[module]


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run ``kdcore ARGS`` in this process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["kdcore", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
