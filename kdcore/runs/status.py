"""``kdcore status RUN_DIR``: the state of every run of a sweep, also while its shards train.

Per run (variant): ``done`` where it has ``summary.json``; ``running`` where a process holds its
folder's ``kdcore.lock`` (or, for a sweep trained by one process, the sweep's lock while that run
has files and no summary); ``failed`` where its ``status.json`` (or, for an older run, an
``error.log``) says so; ``pending`` otherwise (not started, or stopped: resume it). The runs are
read from the sweep's ``recipe.yaml`` (so those of shards that have not started are listed),
else from the folders there.
"""

from __future__ import annotations

import errno
import fcntl
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdcore.errors import KdcoreError

STATES = ("done", "running", "failed", "pending")
STYLES = {"done": "green", "running": "cyan", "failed": "red", "pending": "dim"}
WIDTH = 80


@dataclass(frozen=True)
class RunState:
    run: str
    state: str
    detail: str = ""


def lock_holder(directory: Path) -> str | None:
    """The pid written in ``directory``'s ``kdcore.lock`` when a process holds the lock (``"?"``
    where it wrote none), else None. Never creates the file."""
    from kdcore.runs.layout import LOCK

    try:
        file = open(directory / LOCK)
    except OSError:
        return None
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return file.read().strip() or "?"
            return None
        fcntl.flock(file, fcntl.LOCK_UN)
        return None


def _variant_ids(run_directory: Path) -> list[str]:
    from kdcore.runs.layout import RECIPE, TEACHER_STORE

    top = run_directory / RECIPE
    try:
        from kdcore.config.loader import load_variants
        from kdcore.registry import load_registry

        _, variants = load_variants(top, [], load_registry())
        return [v.id for v in variants]
    except (KdcoreError, OSError, ValueError):
        pass
    found = sorted(p.name for p in run_directory.iterdir()
                   if p.is_dir() and not p.is_symlink() and p.name not in (TEACHER_STORE, "slurm")
                   and ((p / RECIPE).exists() or (p / "summary.json").exists()))
    return found or [""]


def _started(directory: Path) -> bool:
    from kdcore.runs.layout import trained_anything

    return directory.is_dir() and trained_anything(directory)


def run_states(run_directory: Path) -> list[RunState]:
    from kdcore.runs.layout import read_status
    from kdcore.runs.sweep import ERROR_LOG

    if run_directory.is_file():
        raise KdcoreError(f"{run_directory}: is a file, not a run directory")
    if not run_directory.is_dir():
        raise KdcoreError(f"{run_directory}: no such run directory; give a folder that kdcore run wrote")
    sweep_holder = lock_holder(run_directory)
    states = []
    for variant in _variant_ids(run_directory):
        directory = run_directory / variant if variant else run_directory
        name = variant or "(single run)"
        if (directory / "summary.json").exists():
            states.append(RunState(name, "done", _result(directory)))
            continue
        holder = lock_holder(directory) if variant else sweep_holder
        if holder is None and sweep_holder is not None and _started(directory):
            holder = sweep_holder
        if holder is not None:
            states.append(RunState(name, "running", f"pid {holder}"))
            continue
        status = read_status(directory) if directory.is_dir() else {}
        if status.get("status") == "failed":
            states.append(RunState(name, "failed", str(status.get("error") or "")))
        elif (directory / ERROR_LOG).exists():
            states.append(RunState(name, "failed", f"traceback in {directory / ERROR_LOG}"))
        else:
            states.append(RunState(name, "pending", "started, not running: resume it" if _started(directory) else ""))
    return states


def _result(directory: Path) -> str:
    try:
        summary = json.loads((directory / "summary.json").read_text())
        top1 = summary["student"]["test"]["top1"]
        return f"student top-1 {top1:.2f}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def counts(states: list[RunState]) -> dict[str, int]:
    return {state: sum(s.state == state for s in states) for state in STATES}


def print_status(console: Console, run_directory: Path, as_json: bool) -> None:
    states = run_states(run_directory)
    if as_json:
        import sys

        sys.stdout.write(json.dumps({"run_dir": str(run_directory), "counts": counts(states),
                                     "runs": [asdict(s) for s in states]}, indent=2) + "\n")
        return
    table = Table(show_edge=False, width=min(WIDTH, console.width), pad_edge=False)
    table.add_column("run", overflow="fold", ratio=3)
    table.add_column("state", no_wrap=True, width=7)
    table.add_column("detail", overflow="fold", ratio=2)
    for state in states:
        table.add_row(escape(state.run), f"[{STYLES[state.state]}]{state.state}[/]", escape(state.detail))
    console.print(table)
    summary = ", ".join(f"{n} {state}" for state, n in counts(states).items())
    console.print(escape(f"{len(states)} runs: {summary}"))
