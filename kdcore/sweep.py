"""Runs all variants of a recipe in one run directory, sequentially or in worker processes,
skipping variants that finished before (``--resume``)."""

from __future__ import annotations

import multiprocessing
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

import kdcore
from kdcore import distributed
from kdcore.errors import KdcoreError
from kdcore.progress import QueueProgress, RichProgress, replay
from kdcore.recipe import Recipe
from kdcore.recipe_loader import Variant
from kdcore.registry import Registry, load_registry
from kdcore.runner import SUMMARY, Run, resolve_device
from kdcore.training.checkpoint import write_atomically, write_json

RECIPE_FILE = "recipe.yaml"


def new_run_directory(out: Path, name: str) -> Path:
    """``out/<name>/<timestamp>``, created here so that no two runs ever share a directory."""
    parent = out / name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise KdcoreError(f"{parent}: cannot create a new run directory")


def latest_run_directory(out: Path, name: str) -> Path:
    runs = sorted(p for p in (out / name).glob("*") if (p / RECIPE_FILE).exists()) if (out / name).is_dir() else []
    if not runs:
        raise KdcoreError(f"--resume: no run of '{name}' under {out}; start one without --resume")
    return runs[-1]


def variant_directory(run_directory: Path, variant: Variant) -> Path:
    return run_directory / variant.id if variant.id else run_directory


def resolved(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump(mode="json")


def prepare(run_directory: Path, raw: dict[str, Any], variants: list[Variant], resume: bool) -> None:
    """Write the resolved recipes; on resume, insist that they have not changed."""
    top = run_directory / RECIPE_FILE
    if resume and top.exists():
        stored = yaml.safe_load(top.read_text())
        if stored != _top_document(raw, variants):
            raise KdcoreError(
                f"{top}: the recipe differs from the one this run started with; "
                "resume with the same recipe and --set values, or start a new run"
            )
        return
    write_atomically(top, lambda p: p.write_text(yaml.safe_dump(_top_document(raw, variants), sort_keys=False)))
    for variant in variants:
        if variant.id:
            path = variant_directory(run_directory, variant) / RECIPE_FILE
            document = {"overrides": variant.overrides, **resolved(variant.recipe)}
            write_atomically(path, lambda p, d=document: p.write_text(yaml.safe_dump(d, sort_keys=False)))


def _top_document(raw: dict[str, Any], variants: list[Variant]) -> dict[str, Any]:
    if len(variants) == 1 and not variants[0].id:
        return resolved(variants[0].recipe)
    return raw


def write_environment(run_directory: Path, recipe: Recipe, registry: Registry) -> None:
    import torch

    device = resolve_device(recipe.runtime.device)
    environment = {
        "kdcore": kdcore.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "seed": recipe.seed,
        "git_revision": _git_revision(),
        "command": sys.argv,
        "plugins": [
            {"name": p.name, "distribution": p.distribution, "version": p.version, "status": p.status}
            for p in registry.plugins
        ],
    }
    write_json(run_directory / "env.json", environment)


def _git_revision() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def execute(
    run_directory: Path, variants: list[Variant], registry: Registry, jobs: int, console: Console,
    teacher_store: Path | None = None,
) -> list[str]:
    """Train every variant that has no summary yet. Returns the ids of the variants trained."""
    pending = [v for v in variants if not (variant_directory(run_directory, v) / SUMMARY).exists()]
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
                Run(variant.recipe, variant_directory(run_directory, variant), registry, variant.id, progress,
                    teacher_store).execute()
                progress.run_finished()
        else:
            _execute_in_workers(run_directory, pending, jobs, progress, teacher_store)
    return [v.id for v in pending]


def _execute_in_workers(
    run_directory: Path, pending: list[Variant], jobs: int, progress: RichProgress, teacher_store: Path | None
) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=context) as pool:
        events = manager.Queue()
        futures = {
            pool.submit(
                _worker, resolved(v.recipe), variant_directory(run_directory, v), v.id, events, jobs, teacher_store
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
