"""Reading a recipe is bounded and never discloses: every bad input ends in one line
``file:line: field: what is wrong; the fix`` (or ``--set '...': field: ...``) with exit code 2,
no traceback, nothing of a foreign file, and in bounded time (kdcore/config/loader.py)."""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import pytest
import yaml

from kdcore.api import RuntimeOptionSpec
from kdcore.config import loader
from kdcore.config.loader import load_variants
from kdcore.errors import KdcoreError
from kdcore.registry import PluginInfo
from tests.conftest import TINY_TOY, run_cli

SECRET = "s3cr3t-Pa55w0rd-do-not-print"
# file:line: field: what; fix   or   --set '...': field: what
ONE_LINE = re.compile(r"^(?P<where>.+?:\d+|--set '.*?'): (?P<field>\S.*?): (?P<what>.+)$")


def tiny(**changes) -> dict:
    recipe = copy.deepcopy(TINY_TOY)
    recipe.update(changes)
    return recipe


def refused(monkeypatch, capsys, *args) -> tuple[re.Match, str, float]:
    """``kdcore validate ARGS`` fails with one line and exit code 2; returns its parts."""
    start = time.perf_counter()
    code, out, err = run_cli(monkeypatch, capsys, "validate", *args)
    elapsed = time.perf_counter() - start
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Error:" not in err.split(":", 1)[0]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0].removeprefix("error: ")
    match = ONE_LINE.match(line)
    assert match, line
    return match, line, elapsed


# --- extends: a base must be a recipe, and nothing of another file is printed -----------------


@pytest.mark.parametrize("content", [
    f"root:$6${SECRET}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",  # a shadow file: one YAML string
    f"password: {SECRET}\n{SECRET}: 1\nuser: root\n",                      # a mapping of other keys
    f"name: x\n{SECRET}: 1\n",                                            # recipe keys, then not
    f"- {SECRET}\n- two\n",                                               # a list
    "",                                                                    # empty
], ids=["shadow", "foreign-mapping", "recipe-then-foreign-key", "list", "empty"])
def test_extends_of_a_file_that_is_not_a_recipe_names_only_its_path(tmp_path, write_recipe, monkeypatch, capsys,
                                                                     content):
    foreign = tmp_path / "elsewhere" / "shadow"
    foreign.parent.mkdir()
    foreign.write_text(content)
    for target in (str(foreign), "../recipes/../elsewhere/shadow"):  # absolute, and escaping the folder
        (tmp_path / "recipes").mkdir(exist_ok=True)
        recipe = write_recipe(f"extends: {target}\nname: child\n", "recipes/child.yaml")
        match, line, _ = refused(monkeypatch, capsys, recipe)
        assert SECRET not in line and "daemon" not in line and "password" not in line
        assert match["where"] == f"{recipe}:1" and match["field"] == "extends"
        assert f"{foreign} is not a recipe" in line and "extend a recipe" in line


def test_extends_of_a_binary_or_huge_file_names_only_its_path(tmp_path, write_recipe, monkeypatch, capsys):
    binary = tmp_path / "binary.bin"
    binary.write_bytes(SECRET.encode() + b"\xff\xfe\x00" + SECRET.encode())
    match, line, _ = refused(monkeypatch, capsys, write_recipe(f"extends: {binary}\n"))
    assert SECRET not in line and match["where"] == f"{binary}:1" and "not UTF-8 text" in line
    huge = tmp_path / "huge.txt"
    huge.write_text((SECRET + "\n") * 20000)
    match, line, _ = refused(monkeypatch, capsys, write_recipe(f"extends: {huge}\n"))
    assert SECRET not in line and "larger than 128 KiB" in line


def test_extends_of_invalid_yaml_quotes_nothing_of_it(tmp_path, write_recipe, monkeypatch, capsys):
    broken = tmp_path / "broken.txt"
    broken.write_text(f"key: *{SECRET}{SECRET}\n")
    match, line, _ = refused(monkeypatch, capsys, write_recipe(f"extends: {broken}\n"))
    assert SECRET not in line and match["where"] == f"{broken}:1" and "invalid YAML" in line


def test_a_base_with_a_misspelt_top_level_key_gets_a_hint_without_the_key(write_recipe, monkeypatch, capsys):
    write_recipe("teachr:\n  epochs: 2\n", "base.yaml")
    match, line, _ = refused(monkeypatch, capsys, write_recipe("extends: base.yaml\nname: x\n"))
    assert "its line 1 has a key that is not a recipe key; did you mean 'teacher'?" in line
    assert "teachr" not in line


def test_an_unknown_key_is_quoted_shortened(write_recipe, monkeypatch, capsys):
    long_key = "x" * 5000
    recipe = tiny()
    recipe["teacher"] = dict(recipe["teacher"], **{long_key: 1})
    match, line, _ = refused(monkeypatch, capsys, write_recipe(recipe))
    assert long_key not in line and f"teacher.{'x' * 29}...: unknown key" in line
    assert len(line) < 600


def test_extends_chains_are_bounded(write_recipe, monkeypatch, capsys):
    # a diamond of bases, each extending the next one twice: 2^20 reads unless bounded
    for level in range(20):
        write_recipe(f"extends: [b{level + 1}.yaml, b{level + 1}.yaml]\n", f"b{level}.yaml")
    write_recipe("seed: 1\n", "b20.yaml")
    match, line, elapsed = refused(monkeypatch, capsys, write_recipe("extends: b0.yaml\nname: x\n"))
    assert "more than 64 files to read" in line and match["field"] == "extends" and elapsed < 5


# --- bytes: UTF-8 text, no NUL, bounded size --------------------------------------------------


def test_a_recipe_that_is_not_utf8(tmp_path, monkeypatch, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: x\ndata: {name: caf\xe9}\n".encode("latin-1"))
    match, line, _ = refused(monkeypatch, capsys, path)
    assert match["where"] == f"{path}:2" and "not UTF-8 text (byte 0xe9 at column 17); save the recipe as UTF-8" in line


def test_nul_bytes(tmp_path, monkeypatch, capsys):
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"name: x\ndata: {na\x00me: gaussian}\n")
    match, line, _ = refused(monkeypatch, capsys, path)
    assert match["where"] == f"{path}:2" and "a NUL byte at column 10" in line


def test_control_characters(tmp_path, monkeypatch, capsys):
    path = tmp_path / "bell.yaml"
    path.write_text("name: x\n\ndata: {name: \x07}\n")
    match, line, _ = refused(monkeypatch, capsys, path)
    assert match["where"] == f"{path}:3" and "the character U+0007 is not allowed" in line


def test_a_large_file_is_refused_without_reading_it_all(tmp_path, monkeypatch, capsys):
    path = tmp_path / "large.yaml"
    path.write_text("name: x\n" + "# padding\n" * 20000)
    match, line, elapsed = refused(monkeypatch, capsys, path)
    assert match["where"] == f"{path}:1" and "larger than 128 KiB, the limit for a recipe" in line
    assert elapsed < 5


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_is_refused_quickly(monkeypatch, capsys):
    match, line, elapsed = refused(monkeypatch, capsys, "/dev/zero")
    assert match["where"] == "/dev/zero:1" and "larger than 128 KiB" in line and elapsed < 5


# --- YAML: duplicate keys, aliases, nesting ---------------------------------------------------


def test_duplicate_keys_are_rejected_with_both_lines(write_recipe, monkeypatch, capsys):
    path = write_recipe("name: x\ndata: {name: gaussian}\noptimizer: {lr: 0.1}\nteacher:\n"
                        "  arch: {name: mlp}\n  objective: {name: ce}\n  epochs: 2\n  batch_size: 8\n  epochs: 3\n")
    match, line, _ = refused(monkeypatch, capsys, path)
    assert match["where"] == f"{path}:9" and match["field"] == "teacher.epochs"
    assert "duplicate key: also at line 7" in line


def test_duplicate_keys_in_a_flow_mapping_and_in_a_set_value(write_recipe, monkeypatch, capsys):
    path = write_recipe(tiny())
    match, line, _ = refused(monkeypatch, capsys, path, "--set", "teacher.objective={name: ce, name: mse}")
    assert match["where"] == "--set 'teacher.objective={name: ce, name: mse}'"
    assert "duplicate key: also at line 1" in line
    path = write_recipe("name: x\ndata: {name: gaussian, name: digits}\n")
    match, line, _ = refused(monkeypatch, capsys, path)
    assert match["where"] == f"{path}:2" and match["field"] == "data.name" and "also at line 2" in line


def test_yaml_merge_keys_may_still_be_overridden(write_recipe, registry):
    path = write_recipe("name: x\ndata: {name: gaussian}\noptimizer: &base {lr: 0.1, momentum: 0.5}\n"
                        "student:\n  arch: {name: mlp}\n  epochs: 1\n  batch_size: 8\n"
                        "  optimizer: {<<: *base, lr: 0.2}\n")
    [variant] = load_variants(path, [], registry)[1]
    assert (variant.recipe.student.optimizer.lr, variant.recipe.student.optimizer.momentum) == (0.2, 0.5)


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["  a0: &a0 [" + ", ".join(["1"] * width) + "]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_quickly(write_recipe, monkeypatch, capsys):
    text = yaml.safe_dump(tiny(), sort_keys=False) + "x-anchors:\n" + alias_bomb() + "x-use: *a8\n"
    match, line, elapsed = refused(monkeypatch, capsys, write_recipe(text))
    assert "YAML aliases here expand to more than 100,000 values" in line and elapsed < 5


def test_more_than_100_aliases_are_refused(write_recipe, monkeypatch, capsys):
    text = "name: x\nshared: &s 1\nlist: [" + ", ".join(["*s"] * 101) + "]\n"
    match, line, _ = refused(monkeypatch, capsys, write_recipe(text))
    assert match["field"] == "list.100" and "more than 100 YAML aliases" in line


def test_a_recursive_alias_is_refused(write_recipe, monkeypatch, capsys):
    match, line, _ = refused(monkeypatch, capsys, write_recipe("name: x\ndata: &d [1, *d]\n"))
    assert match["field"] == "data.1" and "refers to a value that contains it" in line


@pytest.mark.parametrize("text, field", [
    ("name: x\ndata: " + "[" * 5000 + "]" * 5000 + "\n", "(top level)"),
    ("name: x\ndata: " + "{a: " * 40 + "1" + "}" * 40 + "\n", "(top level)"),
    ("".join("  " * i + f"k{i}:\n" for i in range(40)) + "  " * 40 + "x: 1\n", "k0.k1.k2."),
    ("name: x\n" + "data:\n" + "- " * 5000 + "1\n", "data.0.0."),
])
def test_deep_nesting_is_refused_without_recursion_error(write_recipe, monkeypatch, capsys, text, field):
    match, line, elapsed = refused(monkeypatch, capsys, write_recipe(text))
    assert match["field"].startswith(field) and "nested more than 32 levels deep" in line and elapsed < 5


def test_deep_nesting_through_aliases_is_refused(write_recipe, monkeypatch, capsys):
    text = "a0: &a0 " + "[" * 20 + "]" * 20 + "\n" + "".join(
        f"a{i}: &a{i} [[[[[[[[[[*a{i - 1}]]]]]]]]]]\n" for i in range(1, 10))
    match, line, _ = refused(monkeypatch, capsys, write_recipe(text))
    assert "nested more than 32 levels deep once YAML aliases are expanded" in line


# --- numbers: no booleans, bounded integers ---------------------------------------------------


def test_set_true_for_an_integer_names_the_set_argument(write_recipe, monkeypatch, capsys):
    match, line, _ = refused(monkeypatch, capsys, write_recipe(tiny()), "--set", "teacher.epochs=true")
    assert match["where"] == "--set 'teacher.epochs=true'" and match["field"] == "teacher.epochs"
    assert "expected a number, got the boolean true; write an integer such as 1" in line


@pytest.mark.parametrize("where, value, field", [
    (("optimizer", "lr"), "yes", "optimizer.lr"),
    (("student", "ce_weight"), "on", "student.ce_weight"),
    (("seed",), "false", "seed"),
    (("runtime", "threads"), "true", "runtime.threads"),
])
def test_booleans_are_not_numbers_in_the_envelope(write_recipe, monkeypatch, capsys, where, value, field):
    recipe = tiny()
    target = recipe
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = f"@{value}@"
    text = yaml.safe_dump(recipe, sort_keys=False).replace(f"'@{value}@'", value)
    match, line, _ = refused(monkeypatch, capsys, write_recipe(text))
    assert match["field"] == field and "expected a number, got the boolean" in line


def test_booleans_are_not_numbers_in_lists_and_plugin_params(write_recipe, monkeypatch, capsys):
    recipe = tiny(schedule={"name": "multistep", "milestones": [1, True]})
    match, line, _ = refused(monkeypatch, capsys, write_recipe(recipe))
    assert match["field"] == "schedule.milestones.1" and "got the boolean true" in line
    recipe = tiny()
    recipe["student"]["distillers"][0]["params"]["temperature"] = True
    match, line, _ = refused(monkeypatch, capsys, write_recipe(recipe))
    assert match["field"] == "student.distillers.0.params.temperature" and "got the boolean true" in line
    recipe = tiny()
    recipe["teacher"]["arch"]["params"]["hidden"] = [16, False]
    match, line, _ = refused(monkeypatch, capsys, write_recipe(recipe))
    assert match["field"] == "teacher.arch.params.hidden.1" and "got the boolean false" in line


def test_booleans_stay_booleans_and_integers_still_fill_floats(write_recipe, registry):
    recipe = tiny(optimizer={"lr": 1, "momentum": 0, "nesterov": True})
    recipe["runtime"] = dict(recipe["runtime"], channels_last=False)
    recipe["student"]["distillers"][0]["params"] = {"temperature": 4}
    [variant] = load_variants(write_recipe(recipe), [], registry)[1]
    assert variant.recipe.teacher.optimizer.lr == 1.0 and isinstance(variant.recipe.teacher.optimizer.lr, float)
    assert variant.recipe.teacher.optimizer.nesterov is True and variant.recipe.runtime.channels_last is False
    assert variant.recipe.student.distillers[0].params.temperature == 4.0


def test_booleans_are_not_numbers_in_runtime_options(write_recipe, registry):
    provider = PluginInfo(name="t", distribution="t", version="0", status="ok", error=None)
    spec = RuntimeOptionSpec(name="flush_every", summary="epochs between flushes", type=int, default=3)
    with_option = registry.with_component("runtime-option", spec, provider)
    recipe = tiny()
    recipe["runtime"] = dict(recipe["runtime"], flush_every=True)
    with pytest.raises(KdcoreError, match="runtime.flush_every: expected a number, got the boolean true"):
        load_variants(write_recipe(recipe), [], with_option)
    recipe["runtime"]["flush_every"] = 5
    assert load_variants(write_recipe(recipe), [], with_option)[1][0].recipe.runtime.options["flush_every"] == 5


@pytest.mark.parametrize("field, value", [
    ("seed", 2**31), ("teacher.epochs", 2**40), ("student.batch_size", 10**20), ("teacher.eval_batch_size", 2**31),
    ("runtime.jobs", 2**63), ("runtime.num_workers", 2**32), ("runtime.checkpoint_every", 2**31),
])
def test_integers_that_torch_cannot_hold_are_refused_in_the_envelope(write_recipe, monkeypatch, capsys, field, value):
    match, line, _ = refused(monkeypatch, capsys, write_recipe(tiny()), "--set", f"{field}={value}")
    assert match["field"] == field and "less than or equal to 2147483647" in line


def test_integers_that_torch_cannot_hold_are_refused_in_plugin_params(write_recipe, monkeypatch, capsys):
    recipe = tiny()
    recipe["teacher"]["arch"]["params"]["hidden"] = [16, 99999999999999999999]
    match, line, _ = refused(monkeypatch, capsys, write_recipe(recipe))
    assert match["field"] == "teacher.arch.params.hidden.1"
    assert "integer 99999999999999999999 is out of range; use a number between -2147483647 and 2147483647" in line


def test_an_integer_too_long_to_read(write_recipe, monkeypatch, capsys):
    path = write_recipe(yaml.safe_dump(tiny(), sort_keys=False) + "extra: " + "9" * 5000 + "\n")
    match, line, _ = refused(monkeypatch, capsys, path)
    assert match["field"] == "extra" and "an integer of 5000 digits" in line and "9" * 50 not in line
    match, line, _ = refused(monkeypatch, capsys, write_recipe(tiny()), "--set", "seed=" + "9" * 5000)
    assert "the value is not valid YAML (an integer of 5000 digits" in line


def test_negative_and_zero_counts_are_refused(write_recipe, monkeypatch, capsys):
    for field, value in [("teacher.batch_size", -8), ("student.epochs", 0), ("seed", -1), ("runtime.num_workers", -1)]:
        match, line, _ = refused(monkeypatch, capsys, write_recipe(tiny()), "--set", f"{field}={value}")
        assert match["field"] == field and "greater than or equal to" in line


def test_negative_layer_sizes_are_refused(write_recipe, monkeypatch, capsys):
    recipe = tiny()
    recipe["teacher"]["arch"]["params"]["hidden"] = [-5]
    match, line, _ = refused(monkeypatch, capsys, write_recipe(recipe))
    assert match["field"] == "teacher.arch.params.hidden.0"


def test_non_finite_floats_are_refused(write_recipe, monkeypatch, capsys):
    match, line, _ = refused(monkeypatch, capsys, write_recipe(tiny()), "--set", "optimizer.lr=.inf")
    assert match["field"] == "optimizer.lr" and "finite number" in line


# --- matrix: size counted before expanding, errors at the line of the value --------------------


def test_an_astronomical_matrix_is_refused_quickly_showing_the_product(write_recipe, monkeypatch, capsys):
    matrix = {"seed": list(range(300)), "teacher.epochs": list(range(1, 301)),
              "student.epochs": list(range(1, 301)), "student.batch_size": list(range(1, 301))}
    path = write_recipe(tiny(matrix=matrix))
    match, line, elapsed = refused(monkeypatch, capsys, path)
    assert match["field"] == "matrix" and elapsed < 5
    assert "300 x 300 x 300 x 300 = 8,100,000,000 runs, more than the limit of 10,000" in line


def test_a_matrix_at_the_limit_is_counted_not_refused(write_recipe):
    axes = [loader._Axis(str(i), False, tuple(loader._Entry(v, ()) for v in range(10))) for i in range(4)]
    assert loader._check_matrix_size(axes, Path("x"), {}) == 10_000
    with pytest.raises(KdcoreError, match="10 x 10 x 10 x 10 x 2 = 20,000 runs"):
        loader._check_matrix_size(axes + [loader._Axis("s", False, (loader._Entry(0, ()),) * 2)], Path("x"), {})


def test_an_error_in_a_matrix_value_names_the_line_of_that_value(write_recipe, monkeypatch, capsys):
    text = yaml.safe_dump(tiny(), sort_keys=False) + "matrix:\n  teacher.epochs:\n    - 2\n    - true\n    - 4\n"
    path = write_recipe(text)
    value_line = text.splitlines().index("    - true") + 1
    match, line, _ = refused(monkeypatch, capsys, path)
    assert match["where"] == f"{path}:{value_line}" and match["field"] == "teacher.epochs"
    text = yaml.safe_dump(tiny(), sort_keys=False) + "matrix:\n  teacher.arch:\n    - {name: mlp}\n" \
        "    - {name: mlp, params: {hiddn: [4]}}\n"
    path = write_recipe(text)
    match, line, _ = refused(monkeypatch, capsys, path)
    assert match["where"] == f"{path}:{len(text.splitlines())}" and match["field"] == "teacher.arch.params.hiddn"
    assert "unknown key; did you mean 'hidden'?" in line


def test_an_error_in_a_set_value_names_the_set_argument(write_recipe, monkeypatch, capsys):
    path = write_recipe(tiny(matrix={"seed": [0, 1]}))
    match, line, _ = refused(monkeypatch, capsys, path, "--set", "matrix.teacher.epochs=[2, on]")
    assert match["where"] == "--set 'matrix.teacher.epochs=[2, on]'" and match["field"] == "teacher.epochs"
    match, line, _ = refused(monkeypatch, capsys, path, "--set", "teacher.objective={name: mse, params: {scael: 1}}")
    assert match["where"] == "--set 'teacher.objective={name: mse, params: {scael: 1}}'"
    assert match["field"] == "teacher.objective.params.scael" and "did you mean 'scale'?" in line


def test_a_matrix_that_is_not_a_mapping_or_has_empty_axes(write_recipe, monkeypatch, capsys):
    path = write_recipe(yaml.safe_dump(tiny(), sort_keys=False) + "matrix: [0, 1]\n")
    match, line, _ = refused(monkeypatch, capsys, path)
    assert match["field"] == "matrix" and "must map field paths" in line
    match, line, _ = refused(monkeypatch, capsys, write_recipe(tiny(matrix={"seed": 3})))
    assert match["field"] == "matrix.seed" and "must be a non-empty list of values" in line


# --- teacher.checkpoint: relative to the file that states it ----------------------------------


def test_teacher_checkpoint_is_relative_to_the_recipe_file(tmp_path, write_recipe, registry, monkeypatch, capsys):
    (tmp_path / "recipes" / "weights").mkdir(parents=True)
    (tmp_path / "recipes" / "weights" / "t.safetensors").write_bytes(b"")
    recipe = tiny()
    recipe["teacher"] = {"arch": {"name": "mlp", "params": {"hidden": [16]}}, "checkpoint": "weights/t.safetensors"}
    path = write_recipe(recipe, "recipes/r.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    [variant] = load_variants(path, [], registry)[1]
    assert variant.recipe.teacher.checkpoint == tmp_path / "recipes" / "weights" / "t.safetensors"
    code, out, _ = run_cli(monkeypatch, capsys, "validate", path)
    assert code == 0 and "ok" in out
    # from a base file: relative to the base
    write_recipe({"teacher": recipe["teacher"]}, "recipes/base.yaml")
    child = write_recipe({"extends": "recipes/base.yaml", **{k: v for k, v in recipe.items() if k != "teacher"}},
                         "child.yaml")
    assert load_variants(child, [], registry)[1][0].recipe.teacher.checkpoint.is_file()
    # on the command line: relative to the working directory
    match, line, _ = refused(monkeypatch, capsys, path, "--set", "teacher.checkpoint=weights/t.safetensors")
    assert match["where"] == "--set 'teacher.checkpoint=weights/t.safetensors'"
    assert match["field"] == "teacher.checkpoint" and "checkpoint file weights/t.safetensors does not exist" in line
    monkeypatch.chdir(tmp_path / "recipes")
    assert load_variants(path, ["teacher.checkpoint=weights/t.safetensors"], registry)[1][0].recipe.teacher.checkpoint \
        == Path("weights/t.safetensors")
    # a missing file is named where it was looked for
    recipe["teacher"]["checkpoint"] = "nope.safetensors"
    path = write_recipe(recipe, "recipes/r2.yaml")
    match, line, _ = refused(monkeypatch, capsys, path)
    assert match["where"] == f"{path}:{path.read_text().splitlines().index('  checkpoint: nope.safetensors') + 1}"
    assert f"checkpoint file {tmp_path / 'recipes' / 'nope.safetensors'} does not exist" in line


# --- the message itself -----------------------------------------------------------------------


def test_terminal_markup_in_a_key_cannot_break_the_message(write_recipe, monkeypatch, capsys):
    recipe = tiny()
    recipe["teacher"] = dict(recipe["teacher"], **{"[/]": 1, "[bold]x": 2})
    code, _, err = run_cli(monkeypatch, capsys, "validate", write_recipe(recipe))
    assert code == 2 and "Traceback" not in err
    assert "teacher.[/]: unknown key" in err and "teacher.[bold]x: unknown key" in err


def test_many_problems_are_capped(write_recipe, monkeypatch, capsys):
    recipe = tiny()
    recipe["teacher"] = dict(recipe["teacher"], **{f"unknown{i}": i for i in range(50)})
    code, _, err = run_cli(monkeypatch, capsys, "validate", write_recipe(recipe))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 21 and "... and 30 more problems; fix these first" in lines[-1]
