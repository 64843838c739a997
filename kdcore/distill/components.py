"""Building a recipe's components through the registry."""

from __future__ import annotations

from typing import Any

from kdcore.config.schema import ComponentRef
from kdcore.registry import Registry


def build_component(registry: Registry, ref: ComponentRef, ctx: Any) -> Any:
    """The component a ``{name, params}`` section names, built with its validated params."""
    return registry.get(ref.kind, ref.name).spec.builder()(ref.params, ctx)
