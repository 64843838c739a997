"""Building a recipe's components through the registry, inside a guard: whatever goes wrong in a
plugin's code is reported as one line naming the component and the plugin that provides it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kdcore.config.schema import ComponentRef
from kdcore.errors import KdcoreError
from kdcore.registry import Component, Registry

REPORT = "report it to the plugin's authors (--debug shows the traceback)"


@contextmanager
def plugin_code(failure: str, fix: str | None = REPORT) -> Iterator[None]:
    """Run a plugin's code: its own clear errors (:class:`KdcoreError`) pass through; anything
    else it raises becomes one line, ``<failure>: <type>: <message>[; <fix>]``."""
    try:
        yield
    except KdcoreError:
        raise
    except Exception as error:
        raise KdcoreError(f"{failure}: {type(error).__name__}: {error}" + (f"; {fix}" if fix else "")) from error


def describe(component: Component) -> str:
    """``distiller 'kd' (plugin distillers of kdcore 0.1.0)``."""
    provider = component.provider
    return f"{component.kind} '{component.name}' (plugin {provider.name} of {provider.distribution} {provider.version})"


def build_component(registry: Registry, ref: ComponentRef, ctx: Any) -> Any:
    """The component a ``{name, params}`` section names, built with its validated params. Its
    own clear errors (:class:`KdcoreError`) pass through; anything else it raises, importing its
    code or building, becomes one line naming it."""
    component = registry.get(ref.kind, ref.name)
    with plugin_code(f"{describe(component)} failed to build", f"check its params, or {REPORT}"):
        return component.spec.builder()(ref.params, ctx)
