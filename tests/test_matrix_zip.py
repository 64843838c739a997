"""Zip axes of a matrix: a key that is not a recipe field path names an axis whose entries set
several fields together (kdcore/config/loader.py; README, Recipes)."""

from __future__ import annotations

import copy

import pytest
import yaml

from kdcore.config.loader import load_variants, variant_id
from kdcore.errors import KdcoreError
from tests.conftest import TINY_TOY, run_cli

METHODS = [
    {"student.distillers.0": {"name": "kd", "params": {"temperature": 4.0}}, "student.ce_weight": 0.1},
    {"student.distillers.0": {"name": "dkd", "params": {"beta": 2.0}}, "student.ce_weight": 1.0},
]


def tiny(matrix: dict) -> dict:
    return dict(copy.deepcopy(TINY_TOY), matrix=matrix)


def error_of(path, registry, overrides=()) -> str:
    with pytest.raises(KdcoreError) as error:
        load_variants(path, list(overrides), registry)
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_a_zip_axis_sets_its_fields_together_crossed_with_the_other_axes(write_recipe, registry):
    raw, variants = load_variants(write_recipe(tiny({"method": METHODS, "seed": [0, 1]})), [], registry)
    assert [v.id for v in variants] == ["method=kd,seed=0", "method=kd,seed=1", "method=dkd,seed=0", "method=dkd,seed=1"]
    for v in variants:
        (distiller,) = v.recipe.student.distillers
        assert v.recipe.student.ce_weight == {"kd": 0.1, "dkd": 1.0}[distiller.name]
    assert variants[0].recipe.student.distillers[0].params.temperature == 4.0
    assert variants[2].recipe.student.distillers[0].params.beta == 2.0
    assert variants[2].recipe.student.distillers[0].weight == 1.0  # dkd's published weight: not repeated
    assert raw["matrix"]["method"] == METHODS


def test_the_overrides_keep_the_flattened_field_paths_and_the_label(write_recipe, registry):
    _, variants = load_variants(write_recipe(tiny({"method": METHODS, "teacher.objective.name": ["ce", "mse"]})),
                                [], registry)
    assert variants[1].overrides == {
        "teacher.objective.name": "mse", "method": "kd",
        "student.distillers.0": {"name": "kd", "params": {"temperature": 4.0}}, "student.ce_weight": 0.1,
    }
    # the reports read the group back from these overrides: the label stands for its fields
    assert variant_id(variants[1].overrides) == "objective=mse,method=kd"
    assert variants[1].id == "method=kd,objective=mse"


def test_an_entry_may_name_itself_with_a_label(write_recipe, registry):
    methods = [dict(METHODS[0], label="kd-t4"), dict(METHODS[0], label="kd-t2")]
    methods[1]["student.distillers.0"] = {"name": "kd", "params": {"temperature": 2.0}}
    _, variants = load_variants(write_recipe(tiny({"method": methods})), [], registry)
    assert [v.id for v in variants] == ["method=kd-t4", "method=kd-t2"]
    assert [v.recipe.student.distillers[0].params.temperature for v in variants] == [4.0, 2.0]
    assert "label" not in variants[0].overrides and variants[0].overrides["method"] == "kd-t4"


def test_the_label_defaults_to_the_first_value_of_the_entry(write_recipe, registry):
    entries = [{"student.ce_weight": 0.25, "student.epochs": 2}, {"student.ce_weight": 0.75, "student.epochs": 4}]
    _, variants = load_variants(write_recipe(tiny({"weights": entries})), [], registry)
    assert [v.id for v in variants] == ["weights=0.25", "weights=0.75"]
    assert [(v.recipe.student.ce_weight, v.recipe.student.epochs) for v in variants] == [(0.25, 2), (0.75, 4)]


def test_set_replaces_a_zip_axis(write_recipe, registry):
    path = write_recipe(tiny({"method": METHODS, "seed": [0, 1]}))
    _, variants = load_variants(
        path, ["matrix.method=[{student.distillers.0: {name: dkd}, student.ce_weight: 0.5}]"], registry)
    assert [v.id for v in variants] == ["method=dkd,seed=0", "method=dkd,seed=1"]
    assert variants[0].recipe.student.ce_weight == 0.5


def test_entries_must_set_the_same_fields(write_recipe, registry):
    text = yaml.safe_dump(copy.deepcopy(TINY_TOY), sort_keys=False) + (
        "matrix:\n"
        "  method:\n"
        "    - {student.distillers.0: {name: kd}, student.ce_weight: 0.1}\n"
        "    - {student.distillers.0: {name: dkd}}\n"
    )
    path = write_recipe(text)
    message = error_of(path, registry)
    assert message.startswith(f"{path}:{len(text.splitlines())}: matrix.method.1: sets student.distillers.0 but entry 0 sets "
                              "student.ce_weight, student.distillers.0; give every entry of a zip axis the same "
                              "field paths")


def test_an_entry_must_be_a_mapping_of_field_paths(write_recipe, registry):
    message = error_of(write_recipe(tiny({"method": [METHODS[0], "kd"]})), registry)
    assert "matrix.method.1: a zip axis entry must map field paths to values" in message
    message = error_of(write_recipe(tiny({"sed": [0, 1]})), registry)
    assert "matrix.sed.0: a zip axis entry must map field paths to values" in message
    assert "('sed' is not a recipe field, so this is a zip axis; did you mean 'seed'?)" in message
    message = error_of(write_recipe(tiny({"method": [{"studnt.ce_weight": 0.1}]})), registry)
    assert "matrix.method.0: 'studnt.ce_weight' is not a recipe field path" in message
    assert "did you mean 'student'?" in message


def test_a_key_that_is_neither_a_field_path_nor_a_zip_name(write_recipe, registry):
    message = error_of(write_recipe(tiny({"teachr.epochs": [1, 2]})), registry)
    assert "matrix.teachr.epochs: not a recipe field path" in message and "did you mean 'teacher'?" in message
    assert "nor a zip axis name (letters, digits, - and _ only)" in message


def test_labels_must_be_distinct_and_short_names(write_recipe, registry):
    methods = [METHODS[1], dict(METHODS[1], **{"student.ce_weight": 0.5})]
    message = error_of(write_recipe(tiny({"method": methods})), registry)
    assert "matrix.method.1: the label 'dkd' is also entry 0's" in message and "give one a distinct" in message
    message = error_of(write_recipe(tiny({"method": [dict(METHODS[0], label="a b/c")]})), registry)
    assert "matrix.method.0.label: must be a short name" in message


def test_two_axes_may_not_set_the_same_field(write_recipe, registry):
    message = error_of(write_recipe(tiny({"method": METHODS, "student.ce_weight": [0.1, 0.2]})), registry)
    assert "matrix.student.ce_weight: sets student.ce_weight, which matrix.method sets too" in message


def test_an_error_inside_an_entry_names_the_line_of_its_value(write_recipe, registry):
    text = yaml.safe_dump(dict(copy.deepcopy(TINY_TOY)), sort_keys=False) + (
        "matrix:\n"
        "  method:\n"
        "    - {student.distillers.0: {name: kd}, student.ce_weight: 0.1}\n"
        "    - student.distillers.0: {name: dkd, params: {betta: 2.0}}\n"
        "      student.ce_weight: true\n"
    )
    lines = text.splitlines()
    path = write_recipe(text)
    assert error_of(path, registry).startswith(
        f"{path}:{len(lines)}: student.ce_weight: expected a number, got the boolean true")
    path = write_recipe(text.replace("true", "1.0"))
    assert error_of(path, registry).startswith(
        f"{path}:{len(lines) - 1}: student.distillers.0.params.betta: unknown key; did you mean 'beta'?")


def test_the_zip_axis_counts_in_the_matrix_size(write_recipe, registry):
    entries = [{"student.epochs": e} for e in range(1, 101)]
    message = error_of(write_recipe(tiny({"method": entries, "seed": list(range(101))})), registry)
    assert "matrix: 100 x 101 = 10,100 runs, more than the limit of 10,000" in message


def test_the_readme_zip_example_validates(monkeypatch, capsys, write_recipe):
    example = {
        "method": [
            {"student.distillers.0": {"name": "at"}, "student.ce_weight": 1.0},
            {"student.distillers.0": {"name": "kd", "params": {"temperature": 4.0}}, "student.ce_weight": 0.1},
        ],
        "teacher.objective.name": ["ce", "mse"],
        "seed": [0, 1, 2, 3, 4],
    }
    recipe = tiny(example)
    recipe["data"] = {"name": "cifar100"}
    recipe["teacher"]["arch"] = {"name": "resnet56"}
    recipe["student"]["arch"] = {"name": "resnet20"}
    code, out, err = run_cli(monkeypatch, capsys, "validate", write_recipe(recipe))
    assert code == 0 and "(20 runs)" in out, err
