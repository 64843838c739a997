"""Recipe validation: every mistake gives one line with the file, the line, the field and the fix."""

import pytest

from kdcore.errors import KdcoreError
from kdcore.config.loader import load_variants
from tests.conftest import TINY_TOY

RECIPE = """\
name: broken
data:
  name: gaussian
optimizer: {lr: 0.1}
teacher:
  arch: {name: mlp}
  objective: {name: mse}
  epochs: 2
  batch_size: 8
"""


def error_of(path, registry, overrides=()):
    with pytest.raises(KdcoreError) as error:
        load_variants(path, list(overrides), registry)
    return str(error.value)


def test_valid_recipe_resolves_plugin_defaults(write_recipe, registry):
    _, [variant] = load_variants(write_recipe(RECIPE), [], registry)
    recipe = variant.recipe
    assert recipe.teacher.objective.params.reduction == "sum"
    assert recipe.data.params.num_classes == 3 and recipe.data.params.noise_var == 6.0
    assert recipe.teacher.optimizer.lr == 0.1
    assert recipe.teacher.schedule.name == "constant"
    assert variant.id == ""


def test_unknown_key_names_line_and_suggests_the_field(write_recipe, registry):
    path = write_recipe(RECIPE.replace("  epochs: 2", "  epohcs: 2"))
    message = error_of(path, registry)
    assert message.startswith(f"{path}:8: teacher.epohcs: unknown key; did you mean 'epochs'?")
    assert len(message.splitlines()) == 1


def test_unknown_param_key_is_checked_by_the_plugin_model(write_recipe, registry):
    path = write_recipe(RECIPE.replace("{name: mse}", "{name: mse, params: {scael: 2}}"))
    message = error_of(path, registry)
    assert f"{path}:7: teacher.objective.params.scael: unknown key; did you mean 'scale'?" in message


def test_wrong_type_gives_path_and_pydantic_reason(write_recipe, registry):
    message = error_of(write_recipe(RECIPE.replace("batch_size: 8", "batch_size: eight")), registry)
    assert ":9: teacher.batch_size: Input should be a valid integer" in message


def test_invalid_param_value(write_recipe, registry):
    message = error_of(write_recipe(RECIPE.replace("{name: mse}", "{name: mse, params: {scale: -1}}")), registry)
    assert "teacher.objective.params.scale: Input should be greater than 0" in message


def test_unknown_component_name_suggests_close_names(write_recipe, registry):
    message = error_of(write_recipe(RECIPE.replace("name: gaussian", "name: gausian")), registry)
    assert ":3: data.name: unknown dataset 'gausian'" in message
    assert "did you mean 'gaussian'?" in message


def test_missing_required_key(write_recipe, registry):
    message = error_of(write_recipe(RECIPE.replace("  arch: {name: mlp}\n", "")), registry)
    assert ":5: teacher.arch: required key is missing" in message


def test_missing_checkpoint_file(write_recipe, registry, tmp_path):
    recipe = RECIPE.replace("objective: {name: mse}", f"checkpoint: {tmp_path}/nope.safetensors")
    message = error_of(write_recipe(recipe), registry)
    assert f"checkpoint file {tmp_path}/nope.safetensors does not exist" in message


def test_objective_and_checkpoint_together_are_rejected(write_recipe, registry, tmp_path):
    weights = tmp_path / "t.safetensors"
    weights.write_bytes(b"")
    message = error_of(write_recipe(RECIPE + f"  checkpoint: {weights}\n"), registry)
    assert "give exactly one of 'objective' (train) or 'checkpoint' (load)" in message


def test_missing_optimizer_says_where_to_put_it(write_recipe, registry):
    message = error_of(write_recipe(RECIPE.replace("optimizer: {lr: 0.1}\n", "")), registry)
    assert "teacher.optimizer is missing: set 'optimizer' at the top level or in the stage" in message


def test_invalid_yaml_names_the_line(write_recipe, registry):
    path = write_recipe(RECIPE + "  bad: [unclosed\n")
    message = error_of(path, registry)
    assert message.startswith(f"{path}:11: teacher.bad: invalid YAML")


def test_set_overrides_any_field_and_reads_yaml_values(write_recipe, registry):
    _, [variant] = load_variants(
        write_recipe(RECIPE), ["teacher.epochs=7", "teacher.objective.params.scale=0.5", "seed=3"], registry
    )
    assert variant.recipe.teacher.epochs == 7
    assert variant.recipe.teacher.objective.params.scale == 0.5
    assert variant.recipe.seed == 3


def test_set_with_bad_syntax_or_index(write_recipe, registry):
    assert "expected key=value" in error_of(write_recipe(RECIPE), registry, ["teacher.epochs"])
    message = error_of(write_recipe(TINY_TOY), registry, ["student.distillers.3.weight=1"])
    assert "'3' is not an index of a list of 1 items" in message


def test_matrix_expands_to_the_cartesian_product(write_recipe, registry):
    recipe = dict(TINY_TOY, matrix={"teacher.objective.name": ["ce", "mse"], "seed": [0, 1, 2]})
    raw, variants = load_variants(write_recipe(recipe), [], registry)
    assert [v.id for v in variants] == [
        "objective=ce,seed=0", "objective=ce,seed=1", "objective=ce,seed=2",
        "objective=mse,seed=0", "objective=mse,seed=1", "objective=mse,seed=2",
    ]
    assert [(v.recipe.teacher.objective.name, v.recipe.seed) for v in variants][3] == ("mse", 0)
    assert raw["matrix"]["seed"] == [0, 1, 2]


def test_matrix_variant_errors_are_reported(write_recipe, registry):
    recipe = dict(TINY_TOY, matrix={"teacher.objective.name": ["ce", "msee"]})
    assert "unknown objective 'msee'" in error_of(write_recipe(recipe), registry)
    recipe = dict(TINY_TOY, matrix={"seed": []})
    assert "matrix.seed: must be a non-empty list" in error_of(write_recipe(recipe), registry)


def test_repeated_distiller_needs_a_label(write_recipe, registry):
    recipe = dict(TINY_TOY)
    recipe["student"] = dict(TINY_TOY["student"], distillers=[{"name": "kd"}, {"name": "kd"}])
    assert "distiller 'kd' appears twice; give each a distinct 'label'" in error_of(write_recipe(recipe), registry)


def test_envelope_validates_without_plugins(write_recipe):
    _, [variant] = load_variants(write_recipe(RECIPE.replace("name: mse", "name: anything")), [], None)
    assert variant.recipe.teacher.objective.params == {}


def test_extends_merges_a_base_and_reports_lines_in_the_right_file(write_recipe, registry, tmp_path):
    base = write_recipe("optimizer: {lr: 0.1, momentum: 0.8}\nteacher:\n  arch: {name: mlp}\n  epochs: 2\n  batch_size: 8\n", "base.yaml")
    child = write_recipe(
        "extends: base.yaml\nname: child\ndata: {name: gaussian}\noptimizer: {lr: 0.2}\nteacher:\n  objective: {name: ce}\n",
        "child.yaml",
    )
    _, [variant] = load_variants(child, [], registry)
    assert variant.recipe.teacher.optimizer.lr == 0.2 and variant.recipe.teacher.optimizer.momentum == 0.8
    assert variant.recipe.teacher.epochs == 2 and variant.recipe.name == "child"
    broken = write_recipe("extends: base.yaml\ndata: {name: gaussian}\nteacher: {objective: {name: ce}, epochs: zero}\n", "bad.yaml")
    assert f"{broken}:3: teacher.epochs: Input should be a valid integer" in error_of(broken, registry)
    base.write_text(base.read_text() + "  drop_lats: true\n")
    assert f"{base}:6: teacher.drop_lats: unknown key; did you mean 'drop_last'?" in error_of(child, registry)


def test_extends_cycle_and_missing_base_are_errors(write_recipe, registry):
    write_recipe("extends: b.yaml\n", "a.yaml")
    b = write_recipe("extends: a.yaml\n", "b.yaml")
    assert "makes a cycle" in error_of(b, registry)
    assert "extends: no such file" in error_of(write_recipe("extends: nowhere.yaml\n", "c.yaml"), registry)


def test_set_replaces_a_matrix_axis_whose_key_is_a_dotted_path(write_recipe, registry):
    recipe = dict(TINY_TOY, matrix={"teacher.objective.name": ["ce", "mse"], "seed": [0, 1]})
    _, variants = load_variants(write_recipe(recipe), ["matrix.teacher.objective.name=[mse]"], registry)
    assert [v.id for v in variants] == ["objective=mse,seed=0", "objective=mse,seed=1"]


def test_a_recipe_needs_at_least_one_stage(write_recipe, registry):
    message = error_of(write_recipe("name: empty\ndata: {name: gaussian}\noptimizer: {lr: 0.1}\n"), registry)
    assert "a recipe needs a teacher stage, a student stage, or both" in message


def test_a_student_with_nothing_to_learn_from_is_rejected(write_recipe, registry):
    recipe = dict(TINY_TOY)
    recipe["student"] = dict(TINY_TOY["student"], ce_weight=0.0, distillers=[])
    assert "the student has nothing to learn from" in error_of(write_recipe(recipe), registry)


def test_the_readme_recipe_example_validates(tmp_path, registry):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"## Recipes.*?```yaml\n(.*?)```", readme, re.S).group(1)
    path = tmp_path / "example.yaml"
    path.write_text(example)
    _, variants = load_variants(path, [], registry)
    assert len(variants) == 6 and variants[0].recipe.student.optimizer.lr == 0.01
