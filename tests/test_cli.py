"""The command line: exit codes, one-line errors, listings."""

import json

from tests.conftest import TINY_TOY, run_cli


def test_validate_ok_and_broken(write_recipe, monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "validate", write_recipe(TINY_TOY))
    assert code == 0 and "ok" in out
    broken = dict(TINY_TOY, seeed=1)
    code, out, err = run_cli(monkeypatch, capsys, "validate", write_recipe(broken, "broken.yaml"))
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]  # one line
    assert "broken.yaml" in err and "seeed: unknown key; did you mean 'seed'?" in err and "Traceback" not in err


def test_missing_recipe_file_is_a_usage_error(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "run", tmp_path / "nope.yaml")
    assert code == 2 and "does not exist" in err


def test_resume_without_a_previous_run(write_recipe, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(TINY_TOY), "--resume", "--out", tmp_path / "runs")
    assert code == 2 and "no run of 'tiny'" in err


def test_dry_run_lists_variants_without_training(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = dict(TINY_TOY, matrix={"seed": [0, 1]})
    code, out, _ = run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--dry-run", "--out", tmp_path / "runs")
    assert code == 0 and "seed=0" in out and "seed=1" in out
    assert not (tmp_path / "runs").exists()


def test_plugins_params_shows_types_defaults_and_descriptions(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(monkeypatch, capsys, "plugins", "--params", "mse")
    assert code == 0
    row = next(line for line in out.splitlines() if "reduction" in line)
    assert "'sum'" in row and "Literal['sum', 'mean']" in row
    code, out, _ = run_cli(monkeypatch, capsys, "plugins", "--params", "mse", "--json")
    assert json.loads(out)["properties"]["scale"]["default"] == 1.0
    code, _, err = run_cli(monkeypatch, capsys, "plugins", "--params", "msee")
    assert code == 2 and "did you mean 'mse'" in err


def test_plugins_kind_filter(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "plugins", "--json", "--kind", "objective")
    assert code == 0
    assert {c["name"] for c in json.loads(out)["components"]} == {"ce", "mse", "soteacher", "mcmi"}


def test_unexpected_errors_are_one_line_unless_debug(write_recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("kdcore.distill.run.Run.execute", lambda self: 1 / 0)
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(TINY_TOY), "--run-dir", tmp_path / "r")
    assert code == 1 and "ZeroDivisionError" in err and "--debug" in err and "Traceback" not in err


def test_cuda_graphs_without_compile_or_without_a_gpu_are_one_line_errors(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = dict(TINY_TOY, runtime={"device": "cpu", "compile": False, "cuda_graphs": True})
    code, _, err = run_cli(monkeypatch, capsys, "validate", write_recipe(recipe))
    assert code == 2 and "runtime: cuda_graphs replays compiled passes: set compile: true" in err
    recipe = dict(TINY_TOY, runtime={"device": "cpu", "cuda_graphs": True})
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--out", tmp_path / "runs")
    assert code == 2 and err.strip().splitlines() == [err.strip()]
    assert "runtime.cuda_graphs needs a CUDA device, and this run trains on cpu" in err
