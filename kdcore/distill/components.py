"""Building a recipe's components through the registry, inside a guard: whatever goes wrong in a
plugin's code is reported as one line naming the component and the plugin that provides it."""

from __future__ import annotations

from typing import Any

from kdcore.config.schema import ComponentRef
from kdcore.errors import KdcoreError
from kdcore.registry import Component, Registry


def describe(component: Component) -> str:
    """``distiller 'kd' (plugin distillers of kdcore 0.1.0)``."""
    provider = component.provider
    return f"{component.kind} '{component.name}' (plugin {provider.name} of {provider.distribution} {provider.version})"


def build_component(registry: Registry, ref: ComponentRef, ctx: Any) -> Any:
    """The component a ``{name, params}`` section names, built with its validated params. Its
    own clear errors (:class:`KdcoreError`) pass through; anything else it raises, importing its
    code or building, becomes one line naming it."""
    component = registry.get(ref.kind, ref.name)
    try:
        return component.spec.builder()(ref.params, ctx)
    except KdcoreError:
        raise
    except Exception as error:
        raise KdcoreError(f"{describe(component)} failed to build: {type(error).__name__}: {error}; check its "
                          "params, or report it to the plugin's authors (--debug shows the traceback)") from error
