"""The hook specifications, derived from the spec types: one argument-free hook per kind of
registration (``kdcore_objectives``, ``kdcore_distillers``, ...), yielding specs of that kind.

The hook names and kinds are declared once, on the spec types in :mod:`kdcore.api`.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable

import pluggy

from kdcore.api import SPEC_TYPES, Spec

PROJECT = "kdcore"
hookspec = pluggy.HookspecMarker(PROJECT)


def _hook_specification(spec_type: type[Spec]) -> Callable[[], Iterable[Spec]]:
    def hook() -> Iterable[Spec]:
        yield from ()

    hook.__name__ = spec_type.hook
    hook.__doc__ = f"Yield {spec_type.__name__} objects: the {spec_type.kind} components a plugin registers."
    return hookspec(hook)


KdcoreSpecs = types.SimpleNamespace(**{t.hook: _hook_specification(t) for t in SPEC_TYPES.values()})
"""The namespace of hook specifications that the plugin manager is given."""

HOOK_NAMES = frozenset(t.hook for t in SPEC_TYPES.values())
