"""Runs all variants of a recipe in one run directory, sequentially or in worker processes,
skipping variants that finished before (``--resume``).

With ``runtime.jobs: N`` the runs train in N worker processes (``spawn``), each training one
run after another and reporting to the parent through a pipe of its own. A worker dies with
its parent (``PR_SET_PDEATHSIG`` on Linux, and a thread that watches the parent's pid
everywhere), and the death of a worker (killed, out of memory) is the failure of the run it was
training: the other runs go on, and the sweep ends with :class:`RunsFailed`, which lists the
failed runs and the command that retries them. A failed run of a sequential sweep does not stop
the others either.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from kdcore.config.loader import Variant
from kdcore.config.schema import Recipe
from kdcore.distill.run import Run
from kdcore.engine import distributed
from kdcore.errors import KdcoreError, NonFiniteLossError, first_line
from kdcore.registry import Registry, load_registry
from kdcore.runs.layout import RECIPE, RunDirectory, check_name_length, read_yaml, write_yaml
from kdcore.runs.progress import QueueProgress, RichProgress, replay
from kdcore.runs.shards import variant_lock

ERROR_LOG = "error.log"
"""Written into a failed run's folder: the traceback of an error that was not a kdcore one."""
INTERRUPT_GRACE_SECONDS = 10.0
"""How long the workers get to stop after Ctrl-C before they are killed."""


def resolved(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump(mode="json")


def prepare(run_directory: Path, raw: dict[str, Any], variants: list[Variant], resume: bool,
            only: list[Variant] | None = None) -> None:
    """Write the resolved recipes; on resume, insist that they have not changed. ``only``: the
    variants of this shard (``--shard``): the sweep's recipe is created by the first shard and
    checked by the others, and a shard writes the recipes of its own variants only."""
    top = run_directory / RECIPE
    check_folder_names(run_directory, variants)
    if only is not None:
        from kdcore.runs.shards import share_top_recipe

        share_top_recipe(run_directory, _top_document(raw, variants), differences)
        for variant in only:
            if variant.id:
                write_yaml(RunDirectory(run_directory).variant(variant.id).recipe_file,
                           {"overrides": variant.overrides, **resolved(variant.recipe)})
        return
    if resume and top.exists():
        before, now = read_yaml(top), _top_document(raw, variants)
        if before != now:
            changed = differences(before, now)
            shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
            raise KdcoreError(
                f"{top}: the recipe differs from the one this run started with in {shown}; "
                "resume with the same recipe and --set values, or start a new run"
            )
        return
    write_yaml(top, _top_document(raw, variants))
    sweep = RunDirectory(run_directory)
    for variant in variants:
        if variant.id:
            write_yaml(sweep.variant(variant.id).recipe_file, {"overrides": variant.overrides, **resolved(variant.recipe)})


def check_folder_names(run_directory: Path, variants: list[Variant]) -> None:
    """Refuse matrix runs whose folder names the file system cannot hold, before any is made."""
    for variant in variants:
        if variant.id:
            check_name_length(run_directory / variant.id, variant.id, "matrix run folder",
                              "shorten the matrix values, or vary fewer fields in one recipe")


def differences(before: Any, now: Any, prefix: str = "") -> list[str]:
    """``field (old → new)`` for every field path whose value differs (lists compared whole)."""
    if isinstance(before, dict) and isinstance(now, dict):
        found = []
        for key in [*before, *(k for k in now if k not in before)]:
            path = f"{prefix}{key}"
            if key not in now:
                found.append(f"{path} (removed)")
            elif key not in before:
                found.append(f"{path} (added: {_short(now[key])})")
            else:
                found += differences(before[key], now[key], f"{path}.")
        return found
    if before == now:
        return []
    return [f"{prefix.rstrip('.') or 'the recipe'} ({_short(before)} → {_short(now)})"]


def _short(value: Any, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _top_document(raw: dict[str, Any], variants: list[Variant]) -> dict[str, Any]:
    if len(variants) == 1 and not variants[0].id:
        return resolved(variants[0].recipe)
    return raw


@dataclass(frozen=True)
class Failure:
    """A run of a sweep that failed: its id, the one-line reason, and whether the reason is
    bad input (a kdcore error other than a diverged loss) rather than a failed run."""

    variant: str
    message: str
    bad_input: bool


class RunsFailed(KdcoreError):
    """Some runs of a sweep failed and the others went on. Exit code 2 when every failure is bad
    input, else 1."""

    def __init__(self, failures: list[Failure], total: int, retry: str | None):
        self.failures = failures
        lines = [f"{f.variant}: {f.message}" for f in failures]
        listed = ", ".join(f.variant for f in failures)
        retry_hint = f"retry them with: {retry}" if retry else "retry them with --resume"
        lines.append(f"{len(failures)} of {total} runs failed ({listed}); the others finished; {retry_hint}")
        super().__init__("\n".join(lines))
        self.exit_code = 2 if all(f.bad_input for f in failures) else 1


def execute(
    run_directory: Path, variants: list[Variant], registry: Registry, jobs: int, console: Console,
    teacher_store: Path | None = None, retry: str | None = None,
) -> list[str]:
    """Train every variant that has no summary yet. Returns the ids of the variants trained.
    With several variants, a run's failure is reported and the others go on; at the end
    :class:`RunsFailed` lists the failures (``retry``: the command that retries them)."""
    sweep = RunDirectory(run_directory)
    pending = [v for v in variants if not sweep.variant(v.id).finished]
    pending = distributed.broadcast(pending)
    skipped = len(variants) - len(pending)
    if skipped and distributed.is_main():
        console.print(f"{skipped} of {len(variants)} runs already finished; skipping them")
    if distributed.active() and jobs > 1:
        raise KdcoreError("runtime.jobs: must be 1 when torchrun starts several processes per run; "
                          "set runtime.jobs: 1")
    concurrent = max(1, min(jobs, len(pending)))
    # under torchrun, the processes of this machine share its cores
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size()))
    threads = default_threads(concurrent * max(1, local_processes))
    progress_console = console if distributed.is_main() else Console(quiet=True)
    failures: list[Failure] = []
    with RichProgress(progress_console, total_runs=len(variants)) as progress:
        for _ in range(skipped):
            progress.run_finished()
        if concurrent == 1:
            # one run, or runs under torchrun: errors propagate as they are, the same on every rank
            isolate = len(variants) > 1 and not distributed.active()
            for variant in pending:
                torch_threads(variant.recipe.runtime.threads or threads)
                try:
                    with variant_lock(sweep.variant(variant.id).path, variant.id):
                        Run(variant.recipe, sweep.variant(variant.id).path, registry, variant.id, progress,
                            teacher_store).execute()
                except Exception as error:
                    if not isolate:
                        raise
                    failures.append(_failure(variant.id, error, sweep.variant(variant.id).path))
                    console.print(f"[red]failed[/]: {escape(failures[-1].variant)}: {escape(failures[-1].message)}",
                                  soft_wrap=True)
                progress.run_finished()
        else:
            failures = _execute_in_workers(sweep, pending, jobs, progress, console, teacher_store, threads)
    if failures:
        raise RunsFailed(failures, len(variants), retry)
    return [v.id for v in pending]


def _failure(variant: str, error: BaseException, directory: Path) -> Failure:
    if isinstance(error, KdcoreError):
        return Failure(variant, first_line(error),
                       bad_input=not isinstance(error, NonFiniteLossError))
    log = directory / ERROR_LOG
    try:
        directory.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(traceback.format_exception(error)))
        where = f"; traceback in {log}"
    except OSError:
        where = ""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return Failure(variant, f"{type(error).__name__}: {first}{where}", bad_input=False)


@dataclass
class _Worker:
    """A worker process and the run it trains now (``None`` while it waits for one)."""

    process: Any
    connection: Any
    """Both ways: runs to the worker; progress events and each run's result from it."""
    variant: Variant | None = None
    result: tuple | None = None
    open: bool = True
    reusable: bool = True
    """False once a run of it failed: the process ends, and is given no other run."""


def _execute_in_workers(
    sweep: RunDirectory, pending: list[Variant], jobs: int, progress: RichProgress, console: Console,
    teacher_store: Path | None, threads: int,
) -> list[Failure]:
    """At most ``jobs`` worker processes, each training one run after another, as a sequential
    sweep does: a new process per run would pay torch's, the plugins' and the dataset's imports
    every time (5-8 s a run on a 2-core CPU, as long as a digits teacher trains). A worker whose
    run failed ends, and a new one takes the next run."""
    context = multiprocessing.get_context("spawn")
    waiting = list(pending)
    workers: list[_Worker] = []
    failures: list[Failure] = []

    def start(variant: Variant, worker: _Worker | None = None) -> None:
        if worker is None:
            ours, theirs = context.Pipe(duplex=True)
            process = context.Process(target=_worker, name="kdcore worker", args=(theirs, os.getpid()))
            process.start()
            theirs.close()
            worker = _Worker(process, ours)
            workers.append(worker)
        worker.variant, worker.result = variant, None
        _send(worker.connection, (resolved(variant.recipe), sweep.variant(variant.id).path, variant.id,
                                  teacher_store, variant.recipe.runtime.threads or threads))

    try:
        while waiting or any(w.variant is not None for w in workers):
            for worker in workers:
                if waiting and worker.variant is None and worker.reusable:
                    start(waiting.pop(0), worker)
            while waiting and len(workers) < jobs:
                start(waiting.pop(0))
            handles = [w.connection for w in workers if w.open] + [w.process.sentinel for w in workers]
            multiprocessing.connection.wait(handles, timeout=1.0)
            for worker in list(workers):
                _drain(worker, progress)
                ended = worker.process.exitcode is not None
                if ended:
                    worker.process.join()
                    _drain(worker, progress)
                if worker.variant is not None and (worker.result is not None or ended):
                    failure = _worker_failure(worker, sweep)
                    if failure is not None:
                        worker.reusable = False
                        failures.append(failure)
                        console.print(f"[red]failed[/]: {escape(failure.variant)}: {escape(failure.message)}",
                                      soft_wrap=True)
                    worker.variant = None
                    progress.run_finished()
                if ended:
                    worker.connection.close()
                    workers.remove(worker)
    except KeyboardInterrupt:
        _stop(workers)
        raise
    finally:
        for worker in workers:  # done, or an error in this loop: never leave a worker behind
            _send(worker.connection, None)
        for worker in workers:
            worker.process.join(INTERRUPT_GRACE_SECONDS)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
    return failures


def _drain(worker: _Worker, progress: RichProgress) -> None:
    """Replay what the worker sent so far; its result is kept."""
    while worker.open:
        try:
            if not worker.connection.poll():
                return
            message = worker.connection.recv()
        except (EOFError, OSError):
            worker.open = False
            return
        if message[0] == "event":
            replay(message[1], progress)
        else:
            worker.result = message


def _worker_failure(worker: _Worker, sweep: RunDirectory) -> Failure | None:
    """``None`` for a run that finished; else its failure, from what the worker said or how its
    process ended."""
    result, code, variant = worker.result, worker.process.exitcode, worker.variant
    if result is not None and result[0] == "done":
        return None
    if result is not None and result[0] == "failed":
        return Failure(variant.id, result[1], bad_input=result[2])
    if result is not None and result[0] == "interrupted":
        return Failure(variant.id, "interrupted", bad_input=False)
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        hint = " (out of memory? see dmesg)" if -code == signal.SIGKILL else ""
        how = f"was killed by {name}{hint}"
    else:
        how = f"exited with status {code} before reporting a result"
    return Failure(variant.id, f"its worker process (pid {worker.process.pid}) {how}; "
                   f"what it saved is in {sweep.variant(variant.id).path}", bad_input=False)


def _stop(workers: list[_Worker]) -> None:
    """After Ctrl-C: let the workers stop (they got the interrupt too, or get it now), then
    kill the ones that do not within the grace period."""
    for worker in workers:
        if worker.process.is_alive():
            try:
                os.kill(worker.process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()


def _worker(connection: Any, parent: int) -> None:
    """Train the runs the parent sends, one at a time, until it sends ``None`` or a run fails."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, _interrupt_once)
    events = _ConnectionQueue(connection)
    registry = None
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if task is None:
            return
        recipe_data, directory, label, teacher_store, threads = task
        try:
            registry = registry or load_registry()
            recipe = Recipe.model_validate(recipe_data, context={"registry": registry})
            torch_threads(threads)
            with variant_lock(directory, label):
                Run(recipe, directory, registry, label, QueueProgress(events), teacher_store).execute()
        except KeyboardInterrupt:
            _send(connection, ("interrupted",))
            return
        except BaseException as error:
            failure = _failure(label, error, directory)
            _send(connection, ("failed", failure.message, failure.bad_input))
            sys.exit(1)
        _send(connection, ("done",))


def _interrupt_once(signum: int, frame: Any) -> None:
    """The first Ctrl-C stops the run; later ones (the parent forwards it) do not interrupt
    its clean-up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


class _ConnectionQueue:
    """What :class:`QueueProgress` puts events into: the worker's pipe to the parent."""

    def __init__(self, connection: Any):
        self._connection = connection

    def put(self, event: tuple) -> None:
        _send(self._connection, ("event", event))


def _send(connection: Any, message: tuple) -> None:
    try:
        connection.send(message)
    except (BrokenPipeError, OSError):  # the parent is gone; the run's files are what counts
        pass


def _die_with_parent(parent: int) -> None:
    """End this worker when the process that started it ends, however it ends (SIGKILL too)."""
    if sys.platform.startswith("linux"):
        try:
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent ended before the line above
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="kdcore parent watch", daemon=True).start()


def torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def default_threads(concurrent: int) -> int:
    """torch threads per run when ``runtime.threads`` is not set: the cores free to this
    process (its CPU affinity and cgroup quota, less what other processes keep busy now),
    shared by the runs training at once, at least 1. More threads than free cores makes
    torch's threads wait for each other: a toy teacher epoch went from under a second to
    seconds on a 2-core machine with two busy processes."""
    cpus = usable_cpus()
    free = max(1, cpus - busy_cpus(cpus))
    return max(1, free // concurrent)


def usable_cpus() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:  # a cgroup v2 quota: "max 100000" or "200000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def busy_cpus(cpus: int, sample_seconds: float = 0.2) -> int:
    """How many of this process's CPUs other processes keep busy: the larger of the last
    minute's load average and a short sample of the CPUs' idle time (the load average lags
    behind processes that just started), rounded to whole cores."""
    try:
        load = os.getloadavg()[0] * cpus / (os.cpu_count() or cpus)
    except (AttributeError, OSError):
        load = 0.0
    return min(cpus, int(max(load, _sampled_busy(sample_seconds)) + 0.5))


def _sampled_busy(seconds: float) -> float:
    """Busy CPUs among this process's, from two reads of ``/proc/stat`` (0 where there is none)."""
    try:
        mine = {f"cpu{index}" for index in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        return 0.0

    def times() -> dict[str, tuple[int, int]]:
        found = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name in mine:
                numbers = [int(v) for v in values[:8]]
                found[name] = (sum(numbers), numbers[3] + numbers[4])  # total, idle + iowait
        return found

    try:
        first = times()
        time.sleep(seconds)
        second = times()
    except (OSError, ValueError, IndexError):
        return 0.0
    busy = 0.0
    for name, (total, idle) in second.items():
        if name in first and total > first[name][0]:
            busy += 1 - (idle - first[name][1]) / (total - first[name][0])
    return busy


def resume_command(recipe: Path, overrides: tuple[str, ...] | list[str], run_directory: Path,
                   teachers: Path | None = None) -> str:
    """The exact command that continues (or retries) the runs of ``run_directory``."""
    import shlex

    words = ["kdcore", "run", str(recipe)]
    for override in overrides:
        words += ["--set", override]
    words += ["--run-dir", str(run_directory)]
    if teachers is not None:
        words += ["--teachers", str(teachers)]
    return shlex.join([*words, "--resume"])


def saved_progress(run_directory: Path, variants: list[Variant], registry: Registry,
                   teacher_store: Path | None) -> str:
    """What an interrupted sweep keeps: the finished runs, and the last checkpoint's epoch of
    every stage of the others (``teacher epoch 40/100, student epoch 2/100``)."""
    from kdcore.distill.store import teacher_key
    from kdcore.runs.layout import CHECKPOINT, StageFiles, TEACHER_LINK, WEIGHTS

    sweep = RunDirectory(run_directory)
    finished = sum(sweep.variant(v.id).finished for v in variants)
    parts = []
    for variant in variants:
        directory = sweep.variant(variant.id)
        if directory.finished:
            continue
        recipe = variant.recipe
        stages: list[tuple[str, StageFiles, int | None]] = []
        if recipe.teacher is not None and recipe.teacher.objective is not None:
            try:
                files = (StageFiles(teacher_store / teacher_key(recipe, registry)) if teacher_store is not None
                         else directory.stage(TEACHER_LINK))
                stages.append(("teacher", files, recipe.teacher.epochs))
            except KdcoreError:
                pass
        if directory.path.is_dir():
            for folder in sorted(directory.path.iterdir()):
                if folder.name != TEACHER_LINK and not folder.is_symlink() and (folder / CHECKPOINT).exists():
                    epochs = recipe.student.epochs if folder.name == "student" and recipe.student else None
                    stages.append((folder.name, StageFiles(folder), epochs))
        saved = []
        for name, files, epochs in stages:
            if (files.path / WEIGHTS).exists() and name == "teacher":
                saved.append("teacher trained")
                continue
            done = _checkpoint_epoch(files)
            if done is not None:
                saved.append(f"{name} epoch {done}" + (f"/{epochs}" if epochs else ""))
        if saved:
            parts.append((f"{variant.id} " if variant.id else "") + ", ".join(saved))
    what = "; ".join(parts) if parts else "no checkpoint yet"
    if len(variants) > 1:
        what += f" ({finished} of {len(variants)} runs finished)"
    return what


def _checkpoint_epoch(files: Any) -> int | None:
    """``epochs_done`` of a stage's checkpoint, read without loading its tensors."""
    import warnings

    import torch

    if not files.checkpoint.exists():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(files.checkpoint, map_location="cpu", weights_only=True, mmap=True)
        done = state.get("epochs_done") if isinstance(state, dict) else None
        return done if isinstance(done, int) else None
    except Exception:
        return None
