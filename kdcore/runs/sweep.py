"""Runs all variants of a recipe in one run directory, sequentially or in worker processes,
skipping variants that finished before (``--resume``)."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from rich.console import Console

from kdcore.config.loader import Variant
from kdcore.config.schema import Recipe
from kdcore.distill.run import Run
from kdcore.engine import distributed
from kdcore.errors import KdcoreError
from kdcore.registry import Registry, load_registry
from kdcore.runs.layout import RECIPE, RunDirectory, read_yaml, write_yaml
from kdcore.runs.progress import QueueProgress, RichProgress, replay


def resolved(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump(mode="json")


def prepare(run_directory: Path, raw: dict[str, Any], variants: list[Variant], resume: bool) -> None:
    """Write the resolved recipes; on resume, insist that they have not changed."""
    top = run_directory / RECIPE
    if resume and top.exists():
        if read_yaml(top) != _top_document(raw, variants):
            raise KdcoreError(
                f"{top}: the recipe differs from the one this run started with; "
                "resume with the same recipe and --set values, or start a new run"
            )
        return
    write_yaml(top, _top_document(raw, variants))
    sweep = RunDirectory(run_directory)
    for variant in variants:
        if variant.id:
            write_yaml(sweep.variant(variant.id).recipe_file, {"overrides": variant.overrides, **resolved(variant.recipe)})


def _top_document(raw: dict[str, Any], variants: list[Variant]) -> dict[str, Any]:
    if len(variants) == 1 and not variants[0].id:
        return resolved(variants[0].recipe)
    return raw


def execute(
    run_directory: Path, variants: list[Variant], registry: Registry, jobs: int, console: Console,
    teacher_store: Path | None = None,
) -> list[str]:
    """Train every variant that has no summary yet. Returns the ids of the variants trained."""
    sweep = RunDirectory(run_directory)
    pending = [v for v in variants if not sweep.variant(v.id).finished]
    pending = distributed.broadcast(pending)
    skipped = len(variants) - len(pending)
    if skipped and distributed.is_main():
        console.print(f"{skipped} of {len(variants)} runs already finished; skipping them")
    progress_console = console if distributed.is_main() else Console(quiet=True)
    with RichProgress(progress_console, total_runs=len(variants)) as progress:
        for _ in range(skipped):
            progress.run_finished()
        if distributed.active() and jobs > 1:
            raise KdcoreError("runtime.jobs must be 1 when torchrun starts several processes per run")
        if jobs == 1 or len(pending) <= 1:
            for variant in pending:
                _set_threads(variant.recipe, distributed.world_size())
                Run(variant.recipe, sweep.variant(variant.id).path, registry, variant.id, progress,
                    teacher_store).execute()
                progress.run_finished()
        else:
            _execute_in_workers(sweep, pending, jobs, progress, teacher_store)
    return [v.id for v in pending]


def _execute_in_workers(
    sweep: RunDirectory, pending: list[Variant], jobs: int, progress: RichProgress, teacher_store: Path | None
) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=context) as pool:
        events = manager.Queue()
        futures = {
            pool.submit(
                _worker, resolved(v.recipe), sweep.variant(v.id).path, v.id, events, jobs, teacher_store
            ): v.id
            for v in pending
        }
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, timeout=0.2, return_when=FIRST_COMPLETED)
            while not events.empty():
                replay(events.get(), progress)
            for future in done:
                future.result()
                progress.run_finished()


def _worker(
    recipe_data: dict[str, Any], directory: Path, label: str, events: Any, jobs: int, teacher_store: Path | None
) -> None:
    registry = load_registry()
    recipe = Recipe.model_validate(recipe_data, context={"registry": registry})
    _set_threads(recipe, jobs)
    Run(recipe, directory, registry, label, QueueProgress(events), teacher_store).execute()


def _set_threads(recipe: Recipe, jobs: int) -> None:
    import torch

    threads = recipe.runtime.threads or max(1, (os.cpu_count() or 1) // jobs)
    torch.set_num_threads(threads)
