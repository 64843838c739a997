"""``kdcore plugins``: what is installed, for people (rich tables) and machines (JSON).

Nothing here imports torch: components are listed from their registrations alone.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdcore.api import SPEC_TYPES, DistillerSpec, RuntimeOptionSpec
from kdcore.errors import KdcoreError
from kdcore.registry import Component, Registry, unknown_name_message


def inventory(registry: Registry, kind: str | None) -> dict[str, Any]:
    conflicted = {(k, n) for k, n, _ in registry.conflicts()}
    return {
        "plugins": [
            {"name": p.name, "distribution": p.distribution, "version": p.version,
             "status": p.status, "error": p.error}
            for p in registry.plugins
        ],
        "components": [
            {"kind": c.kind, "name": c.name, "provider": c.provider.name,
             "distribution": c.provider.distribution, "summary": c.spec.summary,
             "conflict": (c.kind, c.name) in conflicted}
            for c in registry.all_components()
            if kind is None or c.kind == kind
        ],
    }


def print_inventory(console: Console, registry: Registry, kind: str | None, as_json: bool) -> None:
    data = inventory(registry, kind)
    if as_json:
        console.print_json(json.dumps(data))
        return
    plugins = Table(title="Plugins")
    for column in ("plugin", "distribution", "version", "status", "error"):
        plugins.add_column(column)
    for p in data["plugins"]:
        status = "[green]ok[/]" if p["status"] == "ok" else f"[red]{p['status']}[/]"
        plugins.add_row(*map(escape, (p["name"], p["distribution"], p["version"])), status, escape(p["error"] or ""))
    components = Table(title="Components")
    for column in ("kind", "name", "provider", "summary"):
        components.add_column(column)
    for c in data["components"]:
        name = f"[red]{escape(c['name'])} (conflict)[/]" if c["conflict"] else escape(c["name"])
        components.add_row(c["kind"], name, escape(f"{c['provider']} ({c['distribution']})"), escape(c["summary"]))
    console.print(plugins)
    console.print(components)


def find_component(registry: Registry, name: str, kind: str | None) -> Component:
    kinds = [kind] if kind else [k for k in SPEC_TYPES if name in registry.components[k]]
    if not kinds:
        known = sorted({n for k in SPEC_TYPES for n in registry.names(k)})
        raise KdcoreError(unknown_name_message("component", name, known))
    if len(kinds) > 1:
        raise KdcoreError(f"'{name}' names a {' and a '.join(kinds)}; add --kind to choose")
    return registry.get(kinds[0], name)


def print_params(console: Console, component: Component, as_json: bool) -> None:
    """A component's params with their defaults (a distiller's also with its published loss
    weight, the recipe's default ``weight``); a runtime option's type and default."""
    spec = component.spec
    if isinstance(spec, RuntimeOptionSpec):
        _print_runtime_option(console, spec, as_json)
        return
    model: type[BaseModel] = spec.params
    weight = spec.published_weight if isinstance(spec, DistillerSpec) else None
    if as_json:
        schema = model.model_json_schema()
        if weight is not None:
            schema["published_weight"] = weight
        console.print_json(json.dumps(schema))
        return
    title = escape(f"{component.kind} '{component.name}': {spec.summary}")
    if weight is not None:
        title += f" (published loss weight {weight:g}, the recipe's default weight)"
    table = Table(title=title)
    for column in ("param", "type", "default", "description"):
        table.add_column(column)
    for field_name, field in model.model_fields.items():
        default = "(required)" if field.default is PydanticUndefined and field.default_factory is None else repr(
            field.get_default(call_default_factory=True)
        )
        table.add_row(*map(escape, (field_name, _type_name(field.annotation), default, field.description or "")))
    if not model.model_fields:
        table.add_row("(none)", "", "", "")
    console.print(table)


def _print_runtime_option(console: Console, spec: RuntimeOptionSpec, as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps({"name": spec.name, "type": _type_name(spec.type), "default": spec.default,
                                       "summary": spec.summary}, default=repr))
        return
    table = Table(title=escape(f"runtime option '{spec.name}' (runtime: {{{spec.name}: ...}})"))
    for column in ("type", "default", "description"):
        table.add_column(column)
    table.add_row(*map(escape, (_type_name(spec.type), repr(spec.default), spec.summary)))
    console.print(table)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
