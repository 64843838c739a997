"""Shared teachers: a trained teacher is stored under a key that hashes everything that
determines it (data, architecture, objective, optimisation, schedule, seed, and the versions of
the plugin distributions that provide its dataset, architecture and objective), so every student
that needs the same teacher, in this sweep or a later one, reuses it instead of training it
again, as the paper does; a plugin release that changes its loss trains a new teacher."""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdcore.api import ArchitectureSpec, DatasetSpec, ObjectiveSpec
from kdcore.config.schema import Recipe
from kdcore.registry import Registry


def teacher_key(recipe: Recipe, registry: Registry) -> str:
    """``<arch>-<objective>-<hash>``: a short hash of what determines the trained teacher (not
    how it is evaluated or run), including the code that defines it, as the (distribution,
    version) of each component's provider."""
    teacher = recipe.teacher
    identity = {
        "data": recipe.data.model_dump(mode="json"),
        "teacher": teacher.model_dump(mode="json", exclude={"eval_batch_size"}),
        "seed": recipe.seed,
        "code": teacher_providers(recipe, registry),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{teacher.arch.name}-{teacher.objective.name}-{digest[:12]}"


def teacher_providers(recipe: Recipe, registry: Registry) -> dict[str, list[str]]:
    """``{component kind: [distribution, version]}`` for the teacher's dataset, architecture
    and objective."""
    teacher = recipe.teacher
    components = {DatasetSpec.kind: recipe.data.name, ArchitectureSpec.kind: teacher.arch.name,
                  ObjectiveSpec.kind: teacher.objective.name}
    providers = {}
    for kind, name in components.items():
        provider = registry.get(kind, name).provider
        providers[kind] = [provider.distribution, provider.version]
    return providers


@contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold a lock on the teacher's directory: one process trains it, the others wait and
    then load it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

