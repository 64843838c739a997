"""Discovers plugins through entry points and answers lookups of components by name.

Each entry point is loaded on its own: a plugin that fails to import, or whose hook raises or
yields something that is not a spec, is recorded as failed and the others keep working. A plugin
that declares a hook matching no hook specification (``kdcore_distiller`` for
``kdcore_distillers``), or a ``kdcore_*`` hook function without ``@hookimpl``, is marked
``error`` with the name to use; its other hooks still register. Two components of the same kind
and name are a conflict: both stay listed, and looking the name up fails with a message naming
both providers.
"""

from __future__ import annotations

import difflib
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from kdcore.api import SPEC_TYPES, Spec
from kdcore.errors import KdcoreError
from kdcore.hookspecs import HOOK_NAMES, PROJECT, KdcoreSpecs

ENTRY_POINT_GROUP = "kdcore"


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    status: str = "ok"
    error: str | None = None

    def fail(self, error: str, status: str = "failed") -> None:
        """Record a problem; ``failed`` (nothing or not all of it could be registered) wins over
        ``error`` (a declaration that matches nothing)."""
        if self.status != "failed":
            self.status = status
        self.error = error if self.error is None else f"{self.error}; {error}"


@dataclass(frozen=True)
class Component:
    kind: str
    spec: Spec
    provider: PluginInfo

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Registry:
    plugins: list[PluginInfo] = field(default_factory=list)
    components: dict[str, dict[str, list[Component]]] = field(
        default_factory=lambda: {kind: {} for kind in SPEC_TYPES}
    )

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def all_components(self) -> Iterable[Component]:
        for kind in SPEC_TYPES:
            for name in sorted(self.components[kind]):
                yield from self.components[kind][name]

    def get(self, kind: str, name: str) -> Component:
        """The component of that kind and name, or a KdcoreError that helps fix the name."""
        candidates = self.components[kind].get(name)
        if not candidates:
            raise KdcoreError(unknown_name_message(kind, name, self.names(kind)))
        if len(candidates) > 1:
            providers = " and ".join(
                f"{c.provider.name} ({c.provider.distribution} {c.provider.version})"
                for c in candidates
            )
            raise KdcoreError(
                f"{kind} '{name}' is provided by both {providers}; uninstall one of them"
            )
        return candidates[0]

    def add(self, kind: str, spec: Spec, provider: PluginInfo) -> None:
        self.components[kind].setdefault(spec.name, []).append(Component(kind, spec, provider))

    def with_component(self, kind: str, spec: Spec, provider: PluginInfo) -> Registry:
        """A copy with one more component, this registry left as it is: how a test, a benchmark
        or a notebook uses an ad-hoc dataset or distiller without installing a plugin."""
        copied = Registry(plugins=list(self.plugins), components={
            k: {name: list(found) for name, found in by_name.items()} for k, by_name in self.components.items()
        })
        copied.add(kind, spec, provider)
        return copied

    def conflicts(self) -> list[tuple[str, str, list[Component]]]:
        return [
            (kind, name, found)
            for kind, by_name in self.components.items()
            for name, found in sorted(by_name.items())
            if len(found) > 1
        ]


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    available = ", ".join(known) if known else "none installed"
    return f"unknown {kind} '{name}' (available: {available}){hint}"


def load_registry(group: str = ENTRY_POINT_GROUP) -> Registry:
    """Load every entry point of the group, each in isolation, and collect their components."""
    registry = Registry()
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(KdcoreSpecs)
    loaded: dict[str, PluginInfo] = {}
    interrupted = False
    for entry_point in sorted(importlib.metadata.entry_points(group=group), key=_sort_key):
        info = PluginInfo(
            name=entry_point.name,
            distribution=entry_point.dist.name if entry_point.dist else "?",
            version=entry_point.dist.version if entry_point.dist else "?",
        )
        registry.plugins.append(info)
        plugin_id = f"{info.distribution}:{info.name}"
        try:
            plugin = entry_point.load()
            manager.register(plugin, name=plugin_id)
        except KeyboardInterrupt:  # listed like any failure; the interrupt is honoured once all are listed
            info.fail("interrupted while importing")
            interrupted = True
            continue
        except (Exception, SystemExit) as error:  # a broken plugin must not take the others down
            info.fail(f"{_failure(error)} while importing")
            continue
        _check_hook_names(manager, plugin, info)
        loaded[plugin_id] = info
    for kind, spec_type in SPEC_TYPES.items():
        for implementation in getattr(manager.hook, spec_type.hook).get_hookimpls():
            _collect(registry, kind, implementation, loaded[implementation.plugin_name])
    if interrupted:
        raise KeyboardInterrupt
    return registry


def _failure(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"called sys.exit({error.code!r})"
    return f"raised {type(error).__name__}: {error}"


def _sort_key(entry_point: importlib.metadata.EntryPoint) -> tuple[str, str]:
    return (entry_point.dist.name if entry_point.dist else "", entry_point.name)


def _check_hook_names(manager: pluggy.PluginManager, plugin: Any, info: PluginInfo) -> None:
    """Report hooks that nothing will call: a ``@hookimpl`` whose name matches no hook spec
    (pluggy registers it silently), and a function named like a hook but not marked."""
    known = sorted(HOOK_NAMES)
    for caller in manager.get_hookcallers(plugin) or []:
        if caller.name not in HOOK_NAMES:
            close = difflib.get_close_matches(caller.name, known, n=1, cutoff=0.6)
            fix = f"rename it to {close[0]}" if close else f"hooks are: {', '.join(known)}"
            info.fail(f"hook {caller.name} matches no kdcore hook; {fix}", status="error")
    for name in HOOK_NAMES:
        function = getattr(plugin, name, None)
        if callable(function) and manager.parse_hookimpl_opts(plugin, name) is None:
            info.fail(f"{name} is not marked @hookimpl (from kdcore.api import hookimpl), so it is never called",
                      status="error")


def _collect(registry: Registry, kind: str, implementation: Any, info: PluginInfo) -> None:
    """Call one plugin's registration hook, keeping only what it yields of the right type."""
    expected = SPEC_TYPES[kind]
    try:
        specs = list(implementation.function())
    except (Exception, SystemExit) as error:
        info.fail(f"{expected.hook} {_failure(error)}")
        return
    for spec in specs:
        if isinstance(spec, expected):
            registry.add(kind, spec, info)
        else:
            info.fail(f"{expected.hook} yielded {type(spec).__name__}, expected {expected.__name__}")
