"""``kdcore run RECIPE --launcher slurm [--set launcher.KEY=VALUE]...``: the shards of a sweep as one
SLURM array job, submitted through submitit (``pip install 'kdcore[slurm]'``).

Array task I runs ``kdcore run RECIPE --run-dir DIR --shard I/N [--set ...]`` (I is the task's
``SLURM_ARRAY_TASK_ID``, from 0), so the shards share the run directory and its teacher store as
shards started by hand do (see :mod:`kdcore.runs.shards`). submitit's files and each task's log
go to ``DIR/slurm/``. The ``launcher.*`` settings are taken off the ``--set`` list before the
recipe is read; they are not recipe fields and do not change the recipe's runs.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from kdcore.errors import KdcoreError

LAUNCHER_PREFIX = "launcher."
LOGS = "slurm"
MAX_ARRAY = 1000
"""SLURM's default MaxArraySize is 1001: at most this many shards by default."""

SETTINGS: dict[str, tuple[str | None, type]] = {
    # launcher.KEY: (SlurmExecutor parameter, type)
    "partition": ("partition", str),
    "gpus_per_node": ("gpus_per_node", int),
    "cpus_per_task": ("cpus_per_task", int),
    "timeout_min": ("time", int),
    "account": ("account", str),
    "array_parallelism": ("array_parallelism", int),
    "mem_gb": ("mem", str),
    "shards": (None, int),
}
INSTALL = "pip install 'kdcore[slurm]'"


def peel_launcher(overrides: tuple[str, ...] | list[str]) -> tuple[list[str], dict[str, Any]]:
    """Split ``--set`` values into the recipe's and the launcher's (``launcher.KEY=VALUE``)."""
    recipe, settings = [], {}
    for assignment in overrides:
        key, equals, value = assignment.partition("=")
        if not key.strip().startswith(LAUNCHER_PREFIX):
            recipe.append(assignment)
            continue
        name = key.strip().removeprefix(LAUNCHER_PREFIX)
        if not equals:
            raise KdcoreError(f"--set {assignment}: expected launcher.KEY=VALUE")
        if name not in SETTINGS:
            raise KdcoreError(f"--set {assignment}: unknown launcher setting '{name}'; "
                              f"known: {', '.join(SETTINGS)}")
        kind = SETTINGS[name][1]
        try:
            settings[name] = kind(value.strip())
        except ValueError:
            raise KdcoreError(f"--set {assignment}: launcher.{name} must be a whole number") from None
        if kind is int and settings[name] < (0 if name == "gpus_per_node" else 1):
            raise KdcoreError(f"--set {assignment}: launcher.{name} must be at least "
                              f"{0 if name == 'gpus_per_node' else 1}")
    return recipe, settings


def slurm_parameters(settings: dict[str, Any], job_name: str) -> dict[str, Any]:
    """The ``SlurmExecutor.update_parameters`` arguments of the ``launcher.*`` settings."""
    parameters: dict[str, Any] = {"job_name": job_name}
    for name, value in settings.items():
        parameter = SETTINGS[name][0]
        if parameter is not None:
            parameters[parameter] = f"{value}GB" if parameter == "mem" else value
    return parameters


def import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise KdcoreError(f"--launcher slurm needs submitit, which is not installed; install it with: {INSTALL}") \
            from None
    return submitit


def default_shards(variants: list[Any], registry: Any) -> int:
    """One shard per teacher (each trains its teacher and that teacher's students), at most
    :data:`MAX_ARRAY`."""
    from kdcore.runs.shards import teacher_group

    group = teacher_group(registry)
    return max(1, min(MAX_ARRAY, len({group(v) for v in variants})))


def shard_command(recipe: Path, overrides: list[str], run_dir: Path, teachers: Path | None, index: int,
                  count: int, python: str | None = None) -> list[str]:
    words = [python or sys.executable, "-m", "kdcore.cli", "run", str(Path(recipe).resolve())]
    for override in overrides:
        words += ["--set", override]
    words += ["--run-dir", str(Path(run_dir).resolve())]
    if teachers is not None:
        words += ["--teachers", str(Path(teachers).resolve())]
    return [*words, "--shard", f"{index}/{count}"]


def run_shard(command: list[str]) -> int:
    """What an array task runs: the shard's ``kdcore run``, its output in the task's log. A
    failed shard fails its task (with the command to rerun it)."""
    sys.stdout.flush()
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise RuntimeError(f"shard exited with status {code}; rerun it with: {shlex.join(command)}")
    return code


def submit(executor: Any, recipe: Path, overrides: list[str], run_dir: Path, teachers: Path | None,
           count: int) -> list[Any]:
    """Submit ``count`` shards as one array (one job per shard, task I runs shard I/count)."""
    commands = [shard_command(recipe, overrides, run_dir, teachers, index, count) for index in range(count)]
    return executor.map_array(run_shard, commands)


def slurm_executor(run_dir: Path, settings: dict[str, Any], job_name: str) -> Any:
    submitit = import_submitit()
    try:
        executor = submitit.SlurmExecutor(folder=run_dir / LOGS)
    except RuntimeError as error:  # no srun: not on a SLURM cluster
        raise KdcoreError(f"--launcher slurm: {error}; run it on the cluster's login node, or start the shards "
                          "yourself with --shard I/N (see the README's sbatch script)") from None
    executor.update_parameters(**slurm_parameters(settings, job_name))
    return executor


def launch(recipe: Path, overrides: list[str], settings: dict[str, Any], raw: dict[str, Any], variants: list[Any],
           registry: Any, out: Path, run_dir: Path | None, teachers: Path | None, console: Any) -> list[Any]:
    """Make (or reuse) the run directory, write its recipe, and submit the array."""
    from rich.markup import escape

    from kdcore.runs.layout import new_run_directory, teacher_store_default
    from kdcore.runs.shards import mark_created_once, report_hint, share_top_recipe
    from kdcore.runs.sweep import _top_document, check_folder_names, differences

    import_submitit()  # before any folder is made
    first = variants[0].recipe
    directory = run_dir if run_dir is not None else new_run_directory(out, first.name)
    directory.mkdir(parents=True, exist_ok=True)
    check_folder_names(directory, variants)
    mark_created_once(directory)
    share_top_recipe(directory, _top_document(raw, variants), differences)
    count = settings.get("shards") or default_shards(variants, registry)
    # the store of a run without --run-dir: OUT/teachers, as kdcore run's (not beside the new folder)
    store = teachers if teachers is not None or run_dir is not None else teacher_store_default(out, None)
    executor = slurm_executor(directory, settings, f"kdcore-{first.name}")
    jobs = submit(executor, recipe, overrides, directory, store, count)
    job_id = str(jobs[0].job_id).split("_")[0] if jobs else "?"
    console.print(escape(f"submitted SLURM array job {job_id}: {count} shard{'s' if count > 1 else ''} of "
                         f"{len(variants)} runs in {directory} (logs in {directory / LOGS})"), soft_wrap=True)
    console.print(escape(report_hint(directory)), soft_wrap=True)
    return jobs
