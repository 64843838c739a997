"""The run's dataset, built with the normalisation its recipe asks for (``data.normalization``):
the dataset's own, the one the teacher's or the student's weights expect, or given values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdcore.api import ArchitectureSpec, DatasetContext, Normalization
from kdcore.config.schema import Recipe
from kdcore.distill.components import build_component, describe, plugin_code
from kdcore.errors import KdcoreError
from kdcore.registry import Registry


def build_dataset(registry: Registry, recipe: Recipe, device: str, runtime: Mapping[str, Any]) -> Any:
    """The recipe's :class:`kdcore.nn.DatasetBundle`."""
    context = DatasetContext(seed=recipe.seed, device=device, runtime=runtime,
                             normalization=requested_normalization(registry, recipe))
    return build_component(registry, recipe.data, context)


def requested_normalization(registry: Registry, recipe: Recipe) -> Normalization | None:
    """``(mean, std)`` for the dataset to use in place of its own, or ``None`` for its own."""
    source = recipe.data.normalization
    if source == "dataset":
        return None
    if not isinstance(source, str):
        return tuple(source.mean), tuple(source.std)
    arch = getattr(recipe, source).arch
    component = registry.get(ArchitectureSpec.kind, arch.name)
    with plugin_code(f"data.normalization: {source}: {describe(component)} failed to say its weights' "
                     "normalisation", fix=None):
        found = component.spec.weights_normalization(arch.params)
    if found is None:
        raise KdcoreError(f"data.normalization: {source}: the {source}'s weights ({describe(component)}) carry no "
                          "normalisation; give data.normalization: {mean: [...], std: [...]}")
    mean, std = found
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
