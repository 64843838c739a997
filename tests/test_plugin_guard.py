"""A plugin's code runs inside a guard: whatever it does wrong on import, in its hook, params
validation, build or forward pass ends in one line naming it, and the other plugins keep working."""

import copy
import json

from kdcore.registry import load_registry
from kdcore.testing import make_distribution
from tests.conftest import TINY_TOY, run_cli

BAD_DISTILLERS = '''
from pydantic import field_validator
from kdcore.api import DistillerSpec, Params, hookimpl

class Touchy(Params):
    level: int = 1

    @field_validator("level")
    @classmethod
    def _explode(cls, value):
        if value == 13:
            raise TypeError("unlucky")
        return value

@hookimpl
def kdcore_distillers():
    yield DistillerSpec(name="missing-code", summary="build string to a module that is not there",
                        build="fake_nowhere.module:Build")
    yield DistillerSpec(name="returns-float", summary="forward returns a float", build="fake_bad.losses:ReturnsFloat")
    yield DistillerSpec(name="returns-vector", summary="forward returns a per-sample loss",
                        build="fake_bad.losses:ReturnsVector")
    yield DistillerSpec(name="touchy", summary="a params validator that raises TypeError", params=Touchy,
                        build="fake_bad.losses:ReturnsFloat")
    yield DistillerSpec(name="markup", summary="a summary with rich markup [/x] and [bold]", build="x:y")
'''

LOSSES = '''
from kdcore.nn import Distiller

class ReturnsFloat(Distiller):
    def __init__(self, params, ctx):
        super().__init__()

    def forward(self, student, teacher, batch):
        return {"kl": 0.5}

class ReturnsVector(Distiller):
    def __init__(self, params, ctx):
        super().__init__()

    def forward(self, student, teacher, batch):
        return {"per_sample": (student["logits"] - teacher["logits"]).pow(2).sum(1)}
'''


def install_bad(fake_site):
    make_distribution(fake_site, "fake-bad", "0.9", {"fake_bad.__init__": BAD_DISTILLERS, "fake_bad.losses": LOSSES},
                      {"bad": "fake_bad"})
    make_distribution(fake_site, "fake-exits", "1.0", {"fake_exits": "import sys\nsys.exit(3)\n"}, {"exits": "fake_exits"})


def run_with(distiller, write_recipe, tmp_path, monkeypatch, capsys):
    recipe = copy.deepcopy(TINY_TOY)
    recipe["teacher"]["epochs"] = recipe["student"]["epochs"] = 1
    recipe["student"]["distillers"] = [distiller]
    return run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--run-dir", tmp_path / distiller["name"])


def test_a_plugin_that_exits_on_import_is_listed_and_takes_nothing_down(fake_site, monkeypatch, capsys):
    install_bad(fake_site)
    plugin = next(p for p in load_registry().plugins if p.name == "exits")
    assert plugin.status == "failed" and plugin.error == "called sys.exit(3) while importing"
    code, out, _ = run_cli(monkeypatch, capsys, "plugins", "--json")
    assert code == 0 and {"kd", "returns-float"} <= {c["name"] for c in json.loads(out)["components"]}


def test_markup_in_a_plugins_text_is_shown_as_written(fake_site, monkeypatch, capsys):
    install_bad(fake_site)
    code, out, err = run_cli(monkeypatch, capsys, "plugins", "--kind", "distiller")
    assert code == 0, err
    assert "[/x]" in out and "[bold]" in out


def test_a_build_that_cannot_import_its_code_names_the_plugin(fake_site, write_recipe, tmp_path, monkeypatch, capsys):
    install_bad(fake_site)
    code, _, err = run_with({"name": "missing-code"}, write_recipe, tmp_path, monkeypatch, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "distiller 'missing-code' (plugin bad of fake-bad 0.9) failed to build: ModuleNotFoundError" in err


def test_a_forward_that_returns_no_tensor_or_a_vector_names_the_plugin_and_term(
    fake_site, write_recipe, tmp_path, monkeypatch, capsys
):
    install_bad(fake_site)
    code, _, err = run_with({"name": "returns-float"}, write_recipe, tmp_path, monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "distiller 'returns-float' (plugin bad of fake-bad 0.9) returned float for its term 'kl'" in err
    code, _, err = run_with({"name": "returns-vector"}, write_recipe, tmp_path, monkeypatch, capsys)
    assert code == 2 and "returned a tensor of shape (32,) for its term 'per_sample'; each term must be a scalar" in err


def test_a_params_validator_that_raises_names_the_plugin(fake_site, write_recipe, tmp_path, monkeypatch, capsys):
    install_bad(fake_site)
    recipe = copy.deepcopy(TINY_TOY)
    recipe["student"]["distillers"] = [{"name": "touchy", "params": {"level": 13}}]
    code, _, err = run_cli(monkeypatch, capsys, "validate", write_recipe(recipe))
    assert code == 2 and "Traceback" not in err
    assert "params validation of distiller 'touchy' (plugin bad of fake-bad 0.9) raised TypeError: unlucky" in err


def test_an_error_message_with_markup_reaches_the_terminal_as_written(write_recipe, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "validate", write_recipe(TINY_TOY), "--set", "teacher.epohcs[/bold]=3")
    assert code == 2 and "epohcs[/bold]" in err and "Traceback" not in err
