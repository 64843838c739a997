"""Shared teachers: a trained teacher is stored under a key that hashes everything that
determines it (data, architecture, objective, optimisation, schedule, seed), so every student
that needs the same teacher, in this sweep or a later one, reuses it instead of training it
again, as the paper does."""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdcore.config.schema import Recipe


def teacher_key(recipe: Recipe) -> str:
    """A short hash of what determines the trained teacher (not how it is evaluated or run)."""
    identity = {
        "data": recipe.data.model_dump(mode="json"),
        "teacher": recipe.teacher.model_dump(mode="json", exclude={"eval_batch_size"}),
        "seed": recipe.seed,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"{recipe.teacher.arch.name}-{recipe.teacher.objective.name}-{digest[:12]}"


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

