"""Reads a recipe file: YAML with line numbers, ``--set`` overrides, ``matrix`` expansion, and
validation errors turned into one line each: ``file:line: field.path: what is wrong; the fix``.

Reading is bounded: a recipe is at most ``MAX_RECIPE_BYTES`` of UTF-8 text without NUL bytes,
nested at most ``MAX_NESTING`` levels, with at most ``MAX_ALIASES`` YAML aliases that expand to at
most ``MAX_NODES`` values; duplicate keys are errors; ``extends`` reads at most
``MAX_EXTENDS_FILES`` files, each a recipe (a mapping of recipe keys); a matrix makes at most
``MAX_RUNS`` runs, counted before anything is expanded. An error quotes no more of a file than
the offending key or value, shortened to ``MAX_QUOTE`` characters."""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kdcore.errors import KdcoreError
from kdcore.api import RuntimeOptionSpec
from kdcore.config.schema import MAX_INT, ComponentRef, Recipe, RuntimeConfig
from kdcore.registry import Registry

Location = tuple[str | int, ...]
# Where a value was written: (file, line), or (None, "--set 'key=value'") for the command line.
Origin = tuple[Path | None, int | str]

MAX_RECIPE_BYTES = 128 * 1024
MAX_NESTING = 32
MAX_ALIASES = 100
MAX_NODES = 100_000
MAX_EXTENDS_FILES = 64
MAX_RUNS = 10_000
MAX_QUOTE = 32
MAX_ERROR_LINES = 20
MAX_INT_DIGITS = 40

RECIPE_KEYS = ("extends", "matrix", *Recipe.model_fields)
ZIP_AXIS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
ZIP_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_INT_TAG = "tag:yaml.org,2002:int"
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Variant:
    """One run of a recipe: the recipe after the matrix overrides of this variant.

    ``overrides`` holds the field paths the matrix set and their values (the field axes first,
    in matrix order), then for each zip axis its name with the entry's label, followed by the
    field paths that entry set: ``{"seed": 3, "method": "kd", "student.distillers.0": {...}}``.
    :func:`variant_id` reads this order back."""

    id: str
    overrides: dict[str, Any]
    recipe: Recipe


@dataclass(frozen=True)
class RecipeSource:
    """A recipe file's data, after ``extends``, and the file and line of every key."""

    path: Path
    data: dict[str, Any]
    lines: dict[Location, Origin]


# ---------------------------------------------------------------------------------------------
# Reading YAML


class _Refused(Exception):
    """A problem found while reading YAML text; the caller adds the file (or --set argument)."""

    def __init__(self, line: int | None, field: str | None, message: str, quotes_the_file: bool = False):
        super().__init__(message)
        self.line, self.field, self.message = line, field, message
        self.quotes_the_file = quotes_the_file


def _where(origin: Origin) -> str:
    path, line = origin
    return str(line) if path is None else f"{path}:{line}"


def _place(found: Origin | None, path: Path) -> str:
    """Where a value was written, else the recipe's first line."""
    return _where(found) if found else f"{_printable(str(path))}:1"


def _problem(where: str, refused: _Refused) -> KdcoreError:
    prefix = where if refused.line is None else f"{where}:{refused.line}"
    field = f" {refused.field}:" if refused.field is not None else ""
    return KdcoreError(f"{prefix}:{field} {refused.message}")


def _printable(text: str) -> str:
    """One line without control characters."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text)


def _quote(value: Any, limit: int = MAX_QUOTE) -> str:
    """A key or value of a file as an error may show it: printable and at most ``limit`` long."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return _printable(text)


def _field_text(location: Location) -> str:
    text = ".".join(_quote(part) for part in location) or "(top level)"
    return text if len(text) <= 100 else f"{text[:48]}...{text[-48:]}"


def _shorten_quotes(text: str, limit: int = 400) -> str:
    """A message on one line, every quoted word shortened (YAML and plugins quote what they
    read), and at most ``limit`` long."""
    text = " ".join(text.split())
    text = re.sub(r"'([^'\s]{%d,})'" % (MAX_QUOTE + 1), lambda m: f"'{_quote(m.group(1))}'", text)
    text = re.sub(r'"([^"\s]{%d,})"' % (MAX_QUOTE + 1), lambda m: f'"{_quote(m.group(1))}"', text)
    return _quote(text, limit)


def _line_at(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _node_key(key_node: yaml.Node) -> str:
    return str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting aliases and nesting while it composes."""

    def __init__(self, text: str):
        super().__init__(text)
        self.aliases = 0
        self.path: list[str | int] = []

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        part = index.value if isinstance(index, yaml.ScalarNode) else index if isinstance(index, int) else None
        if part is not None:
            self.path.append(part)
        try:
            event = self.peek_event()
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise _Refused(line, _field_text(tuple(self.path)),
                                   f"more than {MAX_ALIASES} YAML aliases (*name) in one file; write the "
                                   "values out, or share settings through extends")
            elif len(self.path) >= MAX_NESTING:
                raise _Refused(line, _field_text(tuple(self.path)),
                               f"nested more than {MAX_NESTING} levels deep; a recipe needs a few levels of keys")
            return super().compose_node(parent, index)
        except yaml.MarkedYAMLError as error:
            if not hasattr(error, "kdcore_location"):
                error.kdcore_location = tuple(self.path)  # where it happened, before the stack unwinds
            raise
        finally:
            if part is not None:
                self.path.pop()


def _children(node: yaml.Node, location: Location) -> list[tuple[yaml.Node, Location]]:
    if isinstance(node, yaml.MappingNode):
        return [pair for key, value in node.value
                for pair in ((key, location), (value, location + (_node_key(key),)))]
    if isinstance(node, yaml.SequenceNode):
        return [(item, location + (position,)) for position, item in enumerate(node.value)]
    return []


def _check_node(node: yaml.Node, location: Location) -> None:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                continue
            key_line = key.start_mark.line + 1
            if (key.tag, key.value) in seen:
                raise _Refused(key_line, _field_text(location + (key.value,)),
                               f"duplicate key: also at line {seen[key.tag, key.value]}, and only one "
                               "would count; keep one of them")
            seen[key.tag, key.value] = key_line
    elif isinstance(node, yaml.ScalarNode) and node.tag == _INT_TAG and len(node.value) > MAX_INT_DIGITS:
        raise _Refused(line, _field_text(location),
                       f"an integer of {len(node.value)} digits; integers must lie between -{MAX_INT} and {MAX_INT}")


def _check_nodes(root: yaml.Node) -> None:
    """Duplicate keys, over-long integers, and what aliases expand to (values, depth, loops),
    each shared node visited once, without recursion."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, Location, bool]] = [(root, (), False)]
    while stack:
        node, location, finished = stack.pop()
        key = id(node)
        line = node.start_mark.line + 1
        if finished:
            children = [child for child, _ in _children(node, location)]
            size[key] = 1 + sum(size[id(child)] for child in children)
            depth[key] = 1 + max((depth[id(child)] for child in children), default=0)
            open_nodes.discard(key)
            if size[key] > MAX_NODES:
                raise _Refused(line, _field_text(location),
                               f"the YAML aliases here expand to more than {MAX_NODES:,} values; write the "
                               "values out, or share settings through extends")
            if depth[key] + len(location) > MAX_NESTING:
                raise _Refused(line, _field_text(location),
                               f"nested more than {MAX_NESTING} levels deep once YAML aliases are expanded; "
                               "a recipe needs a few levels of keys")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise _Refused(line, _field_text(location),
                           "a YAML alias refers to a value that contains it (a loop); write the value out")
        open_nodes.add(key)
        _check_node(node, location)
        stack.append((node, location, True))
        stack.extend(reversed([(child, child_location, False) for child, child_location in _children(node, location)]))


_FLOW_TOKENS = re.compile(r"""(?:^|(?<=[\s\[{,:]))[\[{'"#]|[\]}]""")
_SINGLE_QUOTE_END = re.compile(r"'(?!')|''")
_DOUBLE_QUOTE_END = re.compile(r'(?<!\\)(?:\\\\)*"')


def _check_flow_nesting(text: str) -> None:
    """Refuse ``[[[[...`` nested deeper than MAX_NESTING before PyYAML's scanner, whose work
    grows with the square of the flow depth, sees it (quoted text and comments skipped)."""
    depth = 0
    position = 0
    while True:
        match = _FLOW_TOKENS.search(text, position)
        if match is None:
            return
        token, position = match.group(), match.end()
        if token in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise _Refused(_line_at(text, match.start()), "(top level)",
                               f"brackets nested more than {MAX_NESTING} levels deep; a recipe needs a few "
                               "levels of keys")
        elif token in "]}":
            depth = max(depth - 1, 0)
        elif token == "#":
            end = text.find("\n", position)
            position = len(text) if end < 0 else end
        elif token == "'":
            end = _SINGLE_QUOTE_END.search(text, position)
            while end is not None and end.group() == "''":
                end = _SINGLE_QUOTE_END.search(text, end.end())
            position = len(text) if end is None else end.end()
        else:
            end = _DOUBLE_QUOTE_END.search(text, position)
            position = len(text) if end is None else end.end()


def _load_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    """Compose, check and construct one YAML document; problems raise :class:`_Refused`."""
    nul = text.find("\x00")
    if nul >= 0:
        column = nul - text.rfind("\n", 0, nul)
        raise _Refused(_line_at(text, nul), "(top level)",
                       f"a NUL byte at column {column}: this is binary data, not YAML text; check the path")
    _check_flow_nesting(text)
    loader = None
    try:
        loader = _RecipeLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_nodes(node)
        return loader.construct_document(node), node
    except yaml.reader.ReaderError as error:
        character = f"U+{error.character:04X}" if isinstance(error.character, int) else "a byte"
        raise _Refused(_line_at(text, error.position), "(top level)",
                       f"the character {character} is not allowed in YAML text; remove it") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = _shorten_quotes(error.problem or error.context or "unreadable")
        field = _field_text(getattr(error, "kdcore_location", ()))
        raise _Refused(mark.line + 1 if mark else 1, field,
                       f"invalid YAML: {problem}; check the indentation, quotes and brackets here", True) from None
    except yaml.YAMLError as error:
        raise _Refused(1, "(top level)", f"invalid YAML: {_shorten_quotes(str(error))}", True) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as error:
        raise _Refused(1, "(top level)", f"a value cannot be read ({type(error).__name__}); check numbers and "
                       "dates for typos") from None
    finally:
        if loader is not None:
            loader.dispose()


def _read_text(path: Path) -> str:
    """The file's bytes, at most MAX_RECIPE_BYTES of them, as UTF-8 text."""
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_RECIPE_BYTES + 1)
    except OSError as error:
        raise KdcoreError(f"{_printable(str(path))}:1: (top level): cannot read the recipe ({error.strerror}); "
                          "check the path and its permissions") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise KdcoreError(f"{_printable(str(path))}:1: (top level): the file is larger than "
                          f"{MAX_RECIPE_BYTES // 1024} KiB, the limit for a recipe; check the path (a recipe "
                          "is a short YAML text file)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - raw.rfind(b"\n", 0, error.start)
        raise KdcoreError(f"{_printable(str(path))}:{line}: (top level): not UTF-8 text (byte "
                          f"0x{raw[error.start]:02x} at column {column}); save the recipe as UTF-8") from None


def _parse(path: Path, base: bool = False) -> tuple[Any, dict[Location, Origin]]:
    """The data of a file and the line of each location. A ``base`` of extends may be any file
    a path led to: its problems then name lines, never its keys or text."""
    text = _read_text(path)
    try:
        data, node = _load_yaml(text)
    except _Refused as refused:
        if base:
            message = ("invalid YAML; check the indentation, quotes and brackets here" if refused.quotes_the_file
                       else refused.message)
            refused = _Refused(refused.line, "(top level)", message)
        raise _problem(_printable(str(path)), refused) from None
    lines: dict[Location, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return data, {location: (path, line) for location, line in lines.items()}


def _index_lines(node: yaml.Node, location: Location, lines: dict[Location, int]) -> None:
    lines[location] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = location + (_node_key(key_node),)
            _index_lines(value_node, child, lines)
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            _index_lines(item, location + (position,), lines)


# ---------------------------------------------------------------------------------------------
# extends


def read_recipe(path: Path, extending: tuple[Path, ...] = (), _budget: list[int] | None = None) -> RecipeSource:
    """Parse the YAML safely, remembering where every key is written.

    ``extends: base.yaml`` (a path relative to the file, or a list of them, applied in order)
    starts from the base recipe and merges this file over it: mappings merge key by key, any
    other value replaces the base's. Shared settings are thereby written once. A base must be a
    recipe (a mapping of recipe keys); anything else is refused naming only its path.
    """
    budget = [MAX_EXTENDS_FILES] if _budget is None else _budget
    data, lines = _parse(path)
    if not isinstance(data, dict):
        line = lines.get((), (path, 1))[1]
        raise KdcoreError(f"{_printable(str(path))}:{line}: (top level): a recipe must be a mapping of keys to "
                          "values; start it with keys such as 'name:' and 'data:'")
    return _extend(path, data, lines, extending, budget)


def _extend(path: Path, data: dict[str, Any], lines: dict[Location, Origin], extending: tuple[Path, ...],
            budget: list[int]) -> RecipeSource:
    parents = data.pop("extends", None)
    if parents is None:
        return RecipeSource(path, data, lines)
    where = f"{_printable(str(path))}:{lines.get(('extends',), (path, 1))[1]}"
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise KdcoreError(f"{where}: extends: must be a file path or a list of them, e.g. extends: base.yaml")
    merged: dict[str, Any] = {}
    merged_lines: dict[Location, Origin] = {}
    for parent in parents:
        parent_path = (path.parent / parent).resolve()
        shown = _printable(str(parent_path))
        if parent_path in extending or parent_path == path.resolve():
            raise KdcoreError(f"{where}: extends: {shown} makes a cycle; remove it from extends")
        if not parent_path.is_file():
            problem = "is not a regular file" if parent_path.exists() else "does not exist"
            raise KdcoreError(f"{where}: extends: no such file {shown} (it {problem}); give the path of a recipe "
                              "file, relative to this file")
        budget[0] -= 1
        if budget[0] < 0:
            raise KdcoreError(f"{where}: extends: more than {MAX_EXTENDS_FILES} files to read; extend fewer files")
        base_data, base_lines = _parse(parent_path, base=True)
        _require_recipe(base_data, base_lines, where, shown)
        base = _extend(parent_path, base_data, base_lines, extending + (path.resolve(),), budget)
        merged = deep_merge(merged, base.data)
        merged_lines.update(base.lines)
    return RecipeSource(path, deep_merge(merged, data), {**merged_lines, **lines})


def _require_recipe(data: Any, lines: dict[Location, Origin], where: str, shown: str) -> None:
    """A base of ``extends`` must be a mapping of recipe keys. Nothing of it is quoted: a path
    that leads to some other file must not print that file."""
    fix = f"extend a recipe, whose top-level keys are among {', '.join(RECIPE_KEYS)}"
    if not isinstance(data, dict):
        raise KdcoreError(f"{where}: extends: {shown} is not a recipe (not a YAML mapping of keys); {fix}")
    for key in data:
        if not isinstance(key, str) or key not in RECIPE_KEYS:
            line = lines.get((str(key),), (None, "?"))[1]
            close = difflib.get_close_matches(str(key), RECIPE_KEYS, n=1, cutoff=0.8)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise KdcoreError(f"{where}: extends: {shown} is not a recipe (its line {line} has a key that is not "
                              f"a recipe key{hint}); {fix}")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ---------------------------------------------------------------------------------------------
# --set


def _set_label(assignment: str) -> str:
    return f"--set '{_quote(assignment, 60)}'"


def _location(dotted: str) -> Location:
    return tuple(int(part) if part.isdigit() else part for part in dotted.split("."))


def apply_override(data: dict[str, Any], assignment: str, lines: dict[Location, Origin] | None = None) -> None:
    """Apply ``a.b.0.c=value``; the value is read as YAML (``0.1``, ``[1, 2]``, ``mse``).
    ``matrix.<key>=[...]`` sets one axis of the matrix (its key is itself a dotted path, or the
    name of a zip axis). ``lines`` then records the argument as where the value was written."""
    label = _set_label(assignment)
    key, separator, raw_value = assignment.partition("=")
    if not separator or not key:
        raise KdcoreError(f"{label}: expected key=value, e.g. --set teacher.epochs=10")
    if len(raw_value) > MAX_RECIPE_BYTES:
        raise KdcoreError(f"{label}: {_quote(key)}: the value is longer than {MAX_RECIPE_BYTES // 1024} KiB; "
                          "put it in the recipe")
    try:
        value, _ = _load_yaml(raw_value)
    except _Refused as refused:
        raise KdcoreError(f"{label}: {_quote(key)}: the value is not valid YAML ({refused.message})") from None
    if key.startswith("matrix.") and isinstance(data.get("matrix", {}), dict):
        data.setdefault("matrix", {})[key.removeprefix("matrix.")] = value
        location: Location = ("matrix", key.removeprefix("matrix."))
    else:
        set_path(data, key, value, what=label)
        location = _location(key)
    if lines is not None:
        for stale in [loc for loc in lines if loc[: len(location)] == location]:
            del lines[stale]
        lines[location] = (None, label)


def set_path(data: dict[str, Any], dotted: str, value: Any, what: str) -> None:
    parts = dotted.split(".")
    target: Any = data
    for position, part in enumerate(parts[:-1]):
        target = _child(target, part, create=True, what=what, upto=".".join(parts[: position + 1]))
    last = parts[-1]
    if isinstance(target, list):
        target[_list_index(target, last, what, dotted)] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise KdcoreError(f"{what}: {_quote(dotted, 80)}: {_quote('.'.join(parts[:-1]), 80)} is not a mapping "
                          "or a list; set a field inside a mapping")


def _child(target: Any, part: str, create: bool, what: str, upto: str) -> Any:
    if isinstance(target, list):
        return target[_list_index(target, part, what, upto)]
    if not isinstance(target, dict):
        raise KdcoreError(f"{what}: {_quote(upto, 80)}: not a mapping or a list; set a field inside a mapping")
    if part not in target or target[part] is None:
        target[part] = {}
    return target[part]


def _list_index(target: list, part: str, what: str, upto: str = "") -> int:
    if not part.isdigit() or int(part) >= len(target):
        field = f" {_quote(upto, 80)}:" if upto else ""
        raise KdcoreError(f"{what}:{field} '{_quote(part)}' is not an index of a list of {len(target)} items; "
                          f"use 0 to {len(target) - 1}" if target else
                          f"{what}:{field} '{_quote(part)}' is not an index of a list of 0 items; the list is empty")
    return int(part)


# ---------------------------------------------------------------------------------------------
# matrix


@dataclass(frozen=True)
class _Entry:
    """One value of a matrix axis: its label in run names and the fields it sets, each with
    the location of its value in the recipe (for the line of an error)."""

    label: Any
    fields: tuple[tuple[str, Any, Location], ...]


@dataclass(frozen=True)
class _Axis:
    key: str
    zip: bool
    entries: tuple[_Entry, ...]


def _is_field_path(key: str) -> bool:
    return key.split(".")[0] in Recipe.model_fields


def _close_field(key: str) -> str:
    close = difflib.get_close_matches(key.split(".")[0], list(Recipe.model_fields), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _matrix_axes(matrix: Any, path: Path, lines: dict[Location, Origin]) -> list[_Axis]:
    """The matrix's axes, each checked; nothing is expanded."""
    if matrix is None:
        return []

    def where(location: Location) -> str:
        found = _nearest_line(location, lines)
        return _place(found, path)

    if not isinstance(matrix, dict) or not matrix:
        raise KdcoreError(f"{where(('matrix',))}: matrix: must map field paths (or zip axis names) to lists of "
                          "values, e.g. seed: [0, 1, 2]")
    axes = []
    set_by: dict[str, str] = {}
    for key, values in matrix.items():
        location = ("matrix", key)
        field = f"matrix.{_quote(key)}"
        if not isinstance(key, str):
            raise KdcoreError(f"{where(location)}: {field}: a matrix key must be a field path or a zip axis name")
        if not isinstance(values, list) or not values:
            raise KdcoreError(f"{where(location)}: {field}: must be a non-empty list of values, e.g. [0, 1, 2]")
        if _is_field_path(key):
            axis = _Axis(key, False, tuple(_Entry(value, ((key, value, location + (i,)),))
                                           for i, value in enumerate(values)))
        elif ZIP_AXIS_NAME.match(key):
            axis = _zip_axis(key, values, where)
        else:
            raise KdcoreError(f"{where(location)}: {field}: not a recipe field path (those start with "
                              f"{', '.join(Recipe.model_fields)}){_close_field(key)} nor a zip axis name "
                              "(letters, digits, - and _ only)")
        for entry_path in {p for entry in axis.entries for p, _, _ in entry.fields}:
            if entry_path in set_by and set_by[entry_path] != key:
                raise KdcoreError(f"{where(location)}: {field}: sets {_quote(entry_path, 80)}, which "
                                  f"matrix.{_quote(set_by[entry_path])} sets too; let one axis set it")
            set_by[entry_path] = key
        axes.append(axis)
    return axes


def _zip_axis(key: str, entries: list, where: typing.Callable[[Location], str]) -> _Axis:
    field = f"matrix.{_quote(key)}"
    hint = ""
    if not any(isinstance(entry, dict) for entry in entries):
        hint = (f" ('{_quote(key)}' is not a recipe field, so this is a zip axis{_close_field(key)})"
                if _close_field(key) else "")
    parsed: list[_Entry] = []
    first_paths: list[str] = []
    labels: dict[str, int] = {}
    for i, entry in enumerate(entries):
        location = ("matrix", key, i)
        if not isinstance(entry, dict) or not [p for p in entry if p != "label"]:
            raise KdcoreError(f"{where(location)}: {field}.{i}: a zip axis entry must map field paths to values, "
                              f"e.g. {{student.ce_weight: 0.1, student.epochs: 240}}{hint}")
        paths = [p for p in entry if p != "label"]
        for entry_path in paths:
            if not isinstance(entry_path, str) or not _is_field_path(entry_path):
                raise KdcoreError(f"{where(location + (str(entry_path),))}: {field}.{i}: '{_quote(entry_path)}' is "
                                  f"not a recipe field path (those start with {', '.join(Recipe.model_fields)})"
                                  f"{_close_field(str(entry_path))}")
        if i == 0:
            first_paths = paths
        elif set(paths) != set(first_paths):
            raise KdcoreError(f"{where(location)}: {field}.{i}: sets {_path_list(paths)} but entry 0 sets "
                              f"{_path_list(first_paths)}; give every entry of a zip axis the same field paths")
        if "label" in entry:
            label = entry["label"]
            if isinstance(label, bool) or not isinstance(label, (str, int, float)) or not ZIP_LABEL.match(str(label)):
                raise KdcoreError(f"{where(location + ('label',))}: {field}.{i}.label: must be a short name of "
                                  "letters, digits, '_', '.', '+' and '-' (at most 64), e.g. label: kd-ls")
            label = str(label)
        else:
            label = _value_label(entry[paths[0]])
        if label in labels:
            raise KdcoreError(f"{where(location)}: {field}.{i}: the label '{_quote(label)}' is also entry "
                              f"{labels[label]}'s, so both runs would get one name; give one a distinct "
                              "'label: <name>'")
        labels[label] = i
        parsed.append(_Entry(label, tuple((p, entry[p], location + (p,)) for p in paths)))
    return _Axis(key, True, tuple(parsed))


def _path_list(paths: list[str]) -> str:
    shown = ", ".join(_quote(p, 40) for p in sorted(map(str, paths))[:6])
    return shown + (", ..." if len(paths) > 6 else "")


def _check_matrix_size(axes: list[_Axis], path: Path, lines: dict[Location, Origin]) -> int:
    counts = [len(axis.entries) for axis in axes]
    runs = math.prod(counts)
    if runs > MAX_RUNS:
        factors = " x ".join(str(c) for c in counts[:8]) + (" x ..." if len(counts) > 8 else "")
        total = f"{runs:,}" if runs < 10**15 else f"about 10^{len(str(runs)) - 1}"
        found = _nearest_line(("matrix",), lines)
        where = _place(found, path)
        raise KdcoreError(f"{where}: matrix: {factors} = {total} runs, more than the limit of {MAX_RUNS:,}; "
                          "split the sweep into several recipes, or shorten its axes")
    return runs


def variant_id(overrides: dict[str, Any]) -> str:
    """A short, readable directory name: ``objective=mse,seed=3``; a zip axis gives its name and
    its entry's label (``method=kd``), leaving out the field paths listed after it (see
    :class:`Variant`)."""
    shown: dict[str, Any] = {}
    in_zip = False
    for key, value in overrides.items():
        if not _is_field_path(key):
            in_zip = True
            shown[key] = value
        elif not in_zip:
            shown[key] = value
    return _format_id(shown)


def _format_id(items: dict[str, Any]) -> str:
    labels = [_short_label(key) for key in items]
    if len(set(labels)) < len(labels):
        labels = list(items)
    return ",".join(f"{label}={_value_label(value)}" for label, value in zip(labels, items.values()))


def _short_label(key: str) -> str:
    parts = [p for p in key.split(".") if p not in ("name", "params") and not p.isdigit()]
    return parts[-1] if parts else key


def _value_label(value: Any) -> str:
    if isinstance(value, dict):
        return str(value["name"]) if "name" in value else "-".join(_value_label(v) for v in value.values())
    if isinstance(value, list):
        return "-".join(_value_label(v) for v in value)
    return str(value).replace("/", "_").replace(" ", "")


def _run_lines(lines: dict[Location, Origin], applied: list[tuple[Location, Location]]) -> dict[Location, Origin]:
    """The lines of one run: a field the matrix set is where the matrix wrote its value."""
    run = dict(lines)
    for target, origin in applied:
        for stale in [loc for loc in run if loc[: len(target)] == target]:
            del run[stale]
        found = _nearest_line(origin, lines)
        if found:
            run[target] = found
        for loc, written in lines.items():
            if len(loc) > len(origin) and loc[: len(origin)] == origin:
                run[target + loc[len(origin):]] = written
    return run


# ---------------------------------------------------------------------------------------------
# loading


def load_variants(
    path: Path, overrides: list[str] = (), registry: Registry | None = None
) -> tuple[dict[str, Any], list[Variant]]:
    """Read, override, expand and validate a recipe. Returns the data after ``--set`` (the
    matrix included) and one validated variant per run."""
    source = read_recipe(path)
    data = copy.deepcopy(source.data)
    lines = dict(source.lines)
    for assignment in overrides:
        apply_override(data, assignment, lines)
    data.setdefault("name", path.stem)
    axes = _matrix_axes(data.get("matrix"), path, lines)
    _check_matrix_size(axes, path, lines)
    base = {key: value for key, value in data.items() if key != "matrix"}
    variants = []
    ids: dict[str, int] = {}
    for combination in itertools.product(*(axis.entries for axis in axes)):
        run_data = copy.deepcopy(base)
        applied: list[tuple[Location, Location]] = []
        for axis, entry in zip(axes, combination):
            for field_path, value, origin in entry.fields:
                found = _nearest_line(origin, lines)
                what = f"{_place(found, path)}: matrix.{_quote(axis.key)}"
                set_path(run_data, field_path, copy.deepcopy(value), what=what)
                applied.append((_location(field_path), origin))
        run_lines = lambda applied=applied: _run_lines(lines, applied)  # noqa: E731 (built on an error only)
        _resolve_checkpoint(run_data, run_lines)
        recipe = _validate(run_data, path, run_lines, registry)
        fields = {axis.key: entry.fields[0][1] for axis, entry in zip(axes, combination) if not axis.zip}
        zipped = {key: value for axis, entry in zip(axes, combination) if axis.zip
                  for key, value in ((axis.key, entry.label), *((p, v) for p, v, _ in entry.fields))}
        run_id = _format_id({axis.key: entry.label for axis, entry in zip(axes, combination)})
        if run_id in ids:
            found = _nearest_line(("matrix",), lines)
            raise KdcoreError(f"{_place(found, path)}: matrix: runs {ids[run_id]} and "
                              f"{len(variants)} get the same name '{_quote(run_id, 80)}'; remove repeated values, "
                              "or give zip entries distinct labels")
        ids[run_id] = len(variants)
        variants.append(Variant(run_id, {**fields, **zipped}, recipe))
    return data, variants


def _resolve_checkpoint(data: dict[str, Any], lines_of: typing.Callable[[], dict[Location, Origin]]) -> None:
    """``teacher.checkpoint`` written in a recipe file is relative to that file (as ``extends``);
    given with ``--set`` it is relative to the working directory."""
    teacher = data.get("teacher")
    checkpoint = teacher.get("checkpoint") if isinstance(teacher, dict) else None
    if not isinstance(checkpoint, str) or not checkpoint or Path(checkpoint).is_absolute():
        return
    found = _nearest_line(("teacher", "checkpoint"), lines_of())
    if found and found[0] is not None:
        teacher["checkpoint"] = str(found[0].absolute().parent / checkpoint)


def validate_recipe(data: dict[str, Any], source: RecipeSource, registry: Registry | None) -> Recipe:
    return _validate(data, source.path, lambda: source.lines, registry)


def _validate(data: dict[str, Any], path: Path, lines_of: typing.Callable[[], dict[Location, Origin]],
              registry: Registry | None) -> Recipe:
    try:
        return Recipe.model_validate(data, context={"registry": registry})
    except ValidationError as error:
        lines = lines_of()
        problems = error.errors()
        messages = [_describe(e, data, path, lines, registry) for e in problems[:MAX_ERROR_LINES]]
        if len(problems) > MAX_ERROR_LINES:
            messages.append(f"{_printable(str(path))}: ... and {len(problems) - MAX_ERROR_LINES} more problems; "
                            "fix these first")
        raise KdcoreError("\n".join(messages)) from None
    except KdcoreError as error:
        raise KdcoreError(f"{_printable(str(path))}:1: (top level): {error}") from None


def _describe(error: dict, data: dict, path: Path, lines: dict[Location, Origin], registry: Registry | None) -> str:
    location = tuple(error["loc"])
    field = _field_text(location)
    found = _nearest_line(location, lines)
    where = _place(found, path)
    if error["type"] == "extra_forbidden":
        message = _unknown_key_message(location, data, registry)
    elif error["type"] == "missing":
        message = "required key is missing"
    else:
        message = _shorten_quotes(error["msg"].removeprefix("Value error, "))
    return f"{where}: {field}: {message}"


def _nearest_line(location: Location, lines: dict[Location, Origin]) -> Origin | None:
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
