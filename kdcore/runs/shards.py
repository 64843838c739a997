"""Sweeps split over machines: ``kdcore run RECIPE --run-dir DIR --shard I/N`` trains shard I of N
of the matrix, and the shards that run at once share the run directory and the teacher store.

The shard rule (deterministic: it depends only on the recipe, never on the machine, the time or
what already ran):

- Shards are numbered from 0, as ``SLURM_ARRAY_TASK_ID`` of ``sbatch --array=0-<N-1>``.
- The variants are ordered by teacher (the teachers in the order the matrix first needs them,
  the variants of one teacher in matrix order; a variant without a teacher to train is a group
  of its own), and shard I takes the I-th contiguous slice of that order.
- The slices are as even as they can be: the first ``len(variants) % N`` shards get one run
  more. Balance wins over grouping: a teacher whose students straddle a slice boundary is
  needed by two shards (at most N - 1 teachers are), and the teacher store's lock makes one of
  them train it while the other waits for it, so it is still trained once.
- With more shards than variants, the shards after the last variant have no runs.

On a shared run directory each file has one writer: a variant's folder is written only by the
shard that owns the variant (which holds the folder's ``kdcore.lock`` while it trains there),
the sweep's ``recipe.yaml`` and ``status.json`` are created once (whoever comes first; the
others check that the recipe is the same), every shard writes its own ``env.shard-I.json``, and
the report is written only by ``kdcore report`` once every shard has finished.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcore.errors import KdcoreError, first_line

SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (from 0) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def environment_file(self) -> str:
        """The shard's own ``env.json``: ``env.shard-I.json``."""
        return f"env.shard-{self.index}.json"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` with 0 <= I < N; a one-line error otherwise."""
    match = SHARD.match(text or "")
    if match is None:
        raise KdcoreError(f"--shard {text!r}: expected I/N, e.g. --shard 0/4 (shards are numbered from 0, "
                          "as SLURM_ARRAY_TASK_ID of sbatch --array=0-3)")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise KdcoreError(f"--shard {text}: the number of shards must be at least 1")
    if index >= count:
        raise KdcoreError(f"--shard {text}: shard numbers run from 0 to {count - 1} (as SLURM_ARRAY_TASK_ID of "
                          f"sbatch --array=0-{count - 1})")
    return Shard(index, count)


def partition(items: list[Any], count: int, group: Callable[[Any], str]) -> list[list[Any]]:
    """Split ``items`` into ``count`` shards by the rule of this module: ordered by ``group``
    (groups in order of first appearance), then cut into contiguous slices whose sizes differ
    by at most one."""
    if count < 1:
        raise ValueError("count must be at least 1")
    order: dict[str, list[Any]] = {}
    for item in items:
        order.setdefault(group(item), []).append(item)
    ordered = [item for members in order.values() for item in members]
    size, extra = divmod(len(ordered), count)
    shards, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        shards.append(ordered[start:end])
        start = end
    return shards


def teacher_group(registry: Any) -> Callable[[Any], str]:
    """A variant's group: the key of the teacher it trains (or reuses) in the store, or its own
    id where it trains none (no teacher, or one loaded from a checkpoint)."""
    from kdcore.distill.store import teacher_key

    def group(variant: Any) -> str:
        recipe = variant.recipe
        if recipe.teacher is not None and getattr(recipe.teacher, "objective", None) is not None:
            try:
                return "teacher:" + teacher_key(recipe, registry)
            except (KdcoreError, KeyError, AttributeError):
                pass
        return "run:" + variant.id

    return group


def select(variants: list[Any], shard: Shard, registry: Any) -> list[Any]:
    """The variants shard ``shard`` trains, in matrix order within each teacher."""
    return partition(variants, shard.count, teacher_group(registry))[shard.index]


# --- files of a shared run directory -------------------------------------------------------------


def create_if_absent(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` unless it exists; True where this call created it. The text
    is written to a temporary file that is hard-linked to ``path``: the link is atomic and fails
    where the file exists (also on NFS), so the file is never seen half written and never
    written twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique across machines too (pids repeat there); still a name stale-temporary clean-up knows
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)


def share_top_recipe(run_directory: Path, document: dict[str, Any],
                     differences: Callable[[Any, Any], list[str]]) -> None:
    """Create the sweep's ``recipe.yaml`` once; a shard that finds one insists that it is the
    same recipe (the same file and ``--set`` values on every shard). ``differences``: the
    changed fields (:func:`kdcore.runs.sweep.differences`, passed in: no import cycle)."""
    import yaml

    from kdcore.runs.layout import RECIPE, read_yaml

    top = run_directory / RECIPE
    if create_if_absent(top, yaml.safe_dump(document, sort_keys=False)):
        return
    before = read_yaml(top)
    if before != document:
        changed = differences(before, document)
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise KdcoreError(f"{top}: another shard started this run directory with a different recipe ({shown}); "
                          "give every shard the same recipe and --set values")


def mark_created_once(directory: Path) -> None:
    """The sweep's ``status.json`` with its creation time, made by the first shard only."""
    import json
    import time

    from kdcore.runs.layout import STATUS

    create_if_absent(directory / STATUS, json.dumps({"created_ns": time.time_ns(), "status": "created"},
                                                    indent=2, sort_keys=True) + "\n")


def shared_directory(run_dir: Path) -> Path:
    """The run directory of ``--shard``: made by whichever shard comes first, used by all (it
    may hold the other shards' runs already)."""
    from kdcore.runs.layout import check_name_length

    if run_dir.is_file():
        raise KdcoreError(f"--run-dir {run_dir}: is a file; give the folder every shard shares")
    check_name_length(run_dir, run_dir.name, "--run-dir", "pick a shorter folder name")
    run_dir.mkdir(parents=True, exist_ok=True)
    mark_created_once(run_dir)
    return run_dir


@contextlib.contextmanager
def variant_lock(directory: Path, label: str) -> Iterator[None]:
    """Hold the variant folder's ``kdcore.lock`` while it trains (what ``kdcore status`` reads as
    running) and mark the variant failed in its ``status.json`` when it raises. Nothing for a
    run without matrix (its folder is the sweep's, whose lock the command holds)."""
    if not label:
        yield
        return
    from kdcore.runs.layout import RunLock, update_status

    with RunLock(directory):
        try:
            yield
        except BaseException as error:
            if not isinstance(error, KeyboardInterrupt):
                with contextlib.suppress(OSError):
                    update_status(directory, status="failed", error=first_line(error))
            raise
        with contextlib.suppress(OSError):
            update_status(directory, status="finished")


def report_hint(run_directory: Path) -> str:
    import shlex

    return (f"when every shard has finished, write the report with: kdcore report {shlex.quote(str(run_directory))}"
            f" (see which runs are done with: kdcore status {shlex.quote(str(run_directory))})")
