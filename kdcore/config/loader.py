"""Reads a recipe file: YAML with line numbers, ``--set`` overrides, ``matrix`` expansion, and
validation errors turned into one line each: ``file:line: field.path: what is wrong``."""

from __future__ import annotations

import copy
import difflib
import itertools
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kdcore.errors import KdcoreError
from kdcore.api import RuntimeOptionSpec
from kdcore.config.schema import ComponentRef, Recipe, RuntimeConfig
from kdcore.registry import Registry

Location = tuple[str | int, ...]


@dataclass(frozen=True)
class Variant:
    """One run of a recipe: the recipe after the matrix overrides of this variant."""

    id: str
    overrides: dict[str, Any]
    recipe: Recipe


@dataclass(frozen=True)
class RecipeSource:
    """A recipe file's data, after ``extends``, and the file and line of every key."""

    path: Path
    data: dict[str, Any]
    lines: dict[Location, tuple[Path, int]]


def read_recipe(path: Path, extending: tuple[Path, ...] = ()) -> RecipeSource:
    """Parse the YAML safely, remembering where every key is written.

    ``extends: base.yaml`` (a path relative to the file, or a list of them, applied in order)
    starts from the base recipe and merges this file over it: mappings merge key by key, any
    other value replaces the base's. Shared settings are thereby written once.
    """
    data, lines = _parse(path)
    parents = data.pop("extends", None)
    if parents is None:
        return RecipeSource(path, data, lines)
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise KdcoreError(f"{path}:{lines[('extends',)][1]}: extends must be a file path or a list of them")
    merged: dict[str, Any] = {}
    merged_lines: dict[Location, tuple[Path, int]] = {}
    for parent in parents:
        parent_path = (path.parent / parent).resolve()
        if parent_path in extending or parent_path == path.resolve():
            raise KdcoreError(f"{path}: extends {parent} makes a cycle")
        if not parent_path.is_file():
            raise KdcoreError(f"{path}:{lines[('extends',)][1]}: extends: no such file {parent_path}")
        base = read_recipe(parent_path, extending + (path.resolve(),))
        merged = deep_merge(merged, base.data)
        merged_lines.update(base.lines)
    return RecipeSource(path, deep_merge(merged, data), {**merged_lines, **lines})


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse(path: Path) -> tuple[dict[str, Any], dict[Location, tuple[Path, int]]]:
    try:
        text = path.read_text()
    except OSError as error:
        raise KdcoreError(f"{path}: cannot read recipe ({error.strerror})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise KdcoreError(f"{where}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise KdcoreError(f"{path}: a recipe must be a mapping of keys to values")
    lines: dict[Location, int] = {}
    _index_lines(node, (), lines)
    return data, {location: (path, line) for location, line in lines.items()}


def _index_lines(node: yaml.Node, location: Location, lines: dict[Location, int]) -> None:
    lines[location] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = location + (str(key_node.value),)
            _index_lines(value_node, child, lines)
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            _index_lines(item, location + (position,), lines)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.0.c=value``; the value is read as YAML (``0.1``, ``[1, 2]``, ``mse``).
    ``matrix.<field path>=[...]`` sets one axis of the matrix (its key is itself a dotted path)."""
    key, separator, raw_value = assignment.partition("=")
    if not separator or not key:
        raise KdcoreError(f"--set {assignment!r}: expected key=value, e.g. --set teacher.epochs=10")
    try:
        value = yaml.safe_load(raw_value)
    except yaml.YAMLError:
        raise KdcoreError(f"--set {assignment!r}: the value is not valid YAML") from None
    if key.startswith("matrix.") and isinstance(data.get("matrix", {}), dict):
        data.setdefault("matrix", {})[key.removeprefix("matrix.")] = value
        return
    set_path(data, key, value, what=f"--set {key}")


def set_path(data: dict[str, Any], dotted: str, value: Any, what: str) -> None:
    parts = dotted.split(".")
    target: Any = data
    for position, part in enumerate(parts[:-1]):
        target = _child(target, part, create=True, what=what, upto=".".join(parts[: position + 1]))
    last = parts[-1]
    if isinstance(target, list):
        target[_list_index(target, last, what)] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise KdcoreError(f"{what}: {'.'.join(parts[:-1])} is not a mapping or a list")


def _child(target: Any, part: str, create: bool, what: str, upto: str) -> Any:
    if isinstance(target, list):
        return target[_list_index(target, part, what)]
    if not isinstance(target, dict):
        raise KdcoreError(f"{what}: {upto} is not a mapping or a list")
    if part not in target or target[part] is None:
        target[part] = {}
    return target[part]


def _list_index(target: list, part: str, what: str) -> int:
    if not part.isdigit() or int(part) >= len(target):
        raise KdcoreError(f"{what}: '{part}' is not an index of a list of {len(target)} items")
    return int(part)


def expand_matrix(matrix: Any, source: Path) -> list[dict[str, Any]]:
    """The overrides of each run: the cartesian product of the matrix's value lists."""
    if matrix is None:
        return [{}]
    if not isinstance(matrix, dict) or not matrix:
        raise KdcoreError(f"{source}: matrix must map field paths to lists of values")
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            raise KdcoreError(
                f"{source}: matrix.{key} must be a non-empty list of values, e.g. [ce, mse]"
            )
    keys = list(matrix)
    return [dict(zip(keys, combination)) for combination in itertools.product(*matrix.values())]


def variant_id(overrides: dict[str, Any]) -> str:
    """A short, readable directory name: ``objective=mse,seed=3``."""
    labels = [_short_label(key) for key in overrides]
    if len(set(labels)) < len(labels):
        labels = list(overrides)
    return ",".join(f"{label}={_value_label(value)}" for label, value in zip(labels, overrides.values()))


def _short_label(key: str) -> str:
    parts = [p for p in key.split(".") if p not in ("name", "params") and not p.isdigit()]
    return parts[-1] if parts else key


def _value_label(value: Any) -> str:
    if isinstance(value, dict):
        return str(value["name"]) if "name" in value else "-".join(_value_label(v) for v in value.values())
    if isinstance(value, list):
        return "-".join(_value_label(v) for v in value)
    return str(value).replace("/", "_").replace(" ", "")


def load_variants(
    path: Path, overrides: list[str] = (), registry: Registry | None = None
) -> tuple[dict[str, Any], list[Variant]]:
    """Read, override, expand and validate a recipe. Returns the data after ``--set`` (the
    matrix included) and one validated variant per run."""
    source = read_recipe(path)
    data = copy.deepcopy(source.data)
    for assignment in overrides:
        apply_override(data, assignment)
    data.setdefault("name", path.stem)
    matrix = data.get("matrix")
    base = {key: value for key, value in data.items() if key != "matrix"}
    variants = []
    for run_overrides in expand_matrix(matrix, path):
        run_data = copy.deepcopy(base)
        for key, value in run_overrides.items():
            set_path(run_data, key, copy.deepcopy(value), what=f"{path}: matrix.{key}")
        recipe = validate_recipe(run_data, source, registry)
        variants.append(Variant(variant_id(run_overrides), run_overrides, recipe))
    ids = [v.id for v in variants]
    if len(set(ids)) < len(ids):
        raise KdcoreError(f"{path}: matrix produces the same run twice; remove repeated values")
    return data, variants


def validate_recipe(data: dict[str, Any], source: RecipeSource, registry: Registry | None) -> Recipe:
    try:
        return Recipe.model_validate(data, context={"registry": registry})
    except ValidationError as error:
        messages = [_describe(e, data, source, registry) for e in error.errors()]
        raise KdcoreError("\n".join(messages)) from None
    except KdcoreError as error:
        raise KdcoreError(f"{source.path}: {error}") from None


def _describe(error: dict, data: dict, source: RecipeSource, registry: Registry | None) -> str:
    location = tuple(error["loc"])
    field = ".".join(str(part) for part in location) or "(top level)"
    found = _nearest_line(location, source.lines)
    where = f"{found[0]}:{found[1]}" if found else str(source.path)
    if error["type"] == "extra_forbidden":
        message = _unknown_key_message(location, data, registry)
    elif error["type"] == "missing":
        message = "required key is missing"
    else:
        message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {field}: {message}"


def _nearest_line(location: Location, lines: dict[Location, tuple[Path, int]]) -> tuple[Path, int] | None:
    for end in range(len(location), -1, -1):
        if location[:end] in lines:
            return lines[location[:end]]
    return None


def _unknown_key_message(location: Location, data: dict, registry: Registry | None) -> str:
    allowed = _allowed_keys(location[:-1], data, registry)
    if allowed is None:
        return "unknown key"
    close = difflib.get_close_matches(str(location[-1]), allowed, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown key; {hint}allowed keys: {', '.join(allowed) or 'none'}"


def _allowed_keys(location: Location, data: Any, registry: Registry | None) -> list[str] | None:
    """The field names of the model that validates the mapping at ``location``."""
    model: Any = Recipe
    node: Any = data
    for part in location:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if issubclass(model, ComponentRef) and part == "params":
            name = node.get("name") if isinstance(node, dict) else None
            if registry is None or name not in registry.components[model.kind]:
                return None
            model = registry.get(model.kind, name).spec.params
        else:
            model = _field_model(model, part)
            if model is None:
                return None
        node = node.get(part) if isinstance(node, dict) else None
    allowed = set(model.model_fields)
    if model is RuntimeConfig and registry is not None:
        allowed |= set(registry.names(RuntimeOptionSpec.kind))
    return sorted(allowed)


def _field_model(model: type[BaseModel], field_name: str) -> type[BaseModel] | None:
    """The pydantic model a field holds, looking through Optional and list."""
    field = model.model_fields.get(field_name)
    if field is None:
        return None
    candidates = [field.annotation]
    while candidates:
        annotation = candidates.pop()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        candidates.extend(typing.get_args(annotation))
    return None
