"""The out-of-tree example plugin, discovered through its entry point like any installed package."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kdcore-example-plugin"


@pytest.fixture
def installed_example(tmp_path, monkeypatch):
    """Lay out the example as pip would: its package importable and a dist-info whose
    entry_points.txt is generated from the example's own pyproject.toml."""
    import tomllib

    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    site = tmp_path / "site"
    info = site / f"kdcore_example_plugin-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    entries = "\n".join(f"{k} = {v}" for k, v in project["entry-points"]["kdcore"].items())
    (info / "entry_points.txt").write_text(f"[kdcore]\n{entries}\n")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(site))
    return os.pathsep.join([str(site), str(EXAMPLE)])


def test_kdcore_plugins_lists_the_example(installed_example):
    env = {**os.environ, "PYTHONPATH": installed_example}
    result = subprocess.run([sys.executable, "-m", "kdcore.cli", "plugins", "--json"],
                            capture_output=True, text=True, env=env, check=True)
    data = json.loads(result.stdout)
    plugin = next(p for p in data["plugins"] if p["name"] == "example")
    assert (plugin["distribution"], plugin["version"], plugin["status"]) == ("kdcore-example-plugin", "0.1.0", "ok")
    provided = {(c["kind"], c["name"]) for c in data["components"] if c["provider"] == "example"}
    assert provided == {("distiller", "logit-matching"), ("dataset", "two-moons")}


def test_recipe_using_the_example_components_runs(installed_example, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["kdcore", "run", str(EXAMPLE / "two_moons.yaml"), "--run-dir", str(tmp_path / "run"),
                                      "--set", "teacher.epochs=5", "--set", "student.epochs=5"])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    assert exit_info.value.code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["teacher"]["test"]["top1"] > 75  # two moons are nearly separable
    log = [json.loads(line) for line in (tmp_path / "run/student/metrics.jsonl").read_text().splitlines()]
    assert "train/logit-matching" in log[0]
    assert log[-1]["train/logit-matching"] < log[0]["train/logit-matching"]


def test_the_examples_own_tests_pass_with_kdcores_test_kit(installed_example):
    """The example's tests import ``kdcore.testing``, which pytest loads as a plugin (entry point
    ``pytest11``) because kdcore is installed."""
    env = {**os.environ, "PYTHONPATH": installed_example}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                            capture_output=True, text=True, env=env, cwd=EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_pytest_loads_the_test_kit_as_a_plugin():
    result = subprocess.run([sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                            capture_output=True, text=True, cwd=EXAMPLE, env={**os.environ, "PYTHONPATH": str(EXAMPLE)})
    assert "kdcore_registry" in result.stdout and "fake_site" in result.stdout
