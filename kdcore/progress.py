"""Progress reporting: rich bars in the terminal, also for runs trained in worker processes."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressSink:
    """Receives progress events from training; the base class ignores them."""

    def begin(self, run: str, stage: str, total_steps: int, done_steps: int) -> None: ...

    def advance(self, run: str, stage: str, steps: int, status: str | None = None) -> None: ...

    def end(self, run: str, stage: str) -> None: ...


class RichProgress(ProgressSink):
    """One bar per (run, stage) plus an overall bar of finished runs."""

    def __init__(self, console: Console, total_runs: int):
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=False,
        )
        self._tasks: dict[tuple[str, str], TaskID] = {}
        self._runs = (
            self._progress.add_task("runs", total=total_runs, status="") if total_runs > 1 else None
        )

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def begin(self, run: str, stage: str, total_steps: int, done_steps: int) -> None:
        label = f"{run} {stage}" if run else stage
        self._tasks[(run, stage)] = self._progress.add_task(
            label, total=total_steps, completed=done_steps, status=""
        )

    def advance(self, run: str, stage: str, steps: int, status: str | None = None) -> None:
        fields = {"status": status} if status is not None else {}
        self._progress.update(self._tasks[(run, stage)], advance=steps, **fields)

    def end(self, run: str, stage: str) -> None:
        task = self._tasks.pop((run, stage))
        if self._runs is not None:
            self._progress.remove_task(task)

    def run_finished(self) -> None:
        if self._runs is not None:
            self._progress.update(self._runs, advance=1)


class QueueProgress(ProgressSink):
    """Forwards events from a worker process to the parent, which replays them on its bars."""

    def __init__(self, queue: Any):
        self._queue = queue

    def begin(self, run: str, stage: str, total_steps: int, done_steps: int) -> None:
        self._queue.put(("begin", run, stage, total_steps, done_steps))

    def advance(self, run: str, stage: str, steps: int, status: str | None = None) -> None:
        self._queue.put(("advance", run, stage, steps, status))

    def end(self, run: str, stage: str) -> None:
        self._queue.put(("end", run, stage))


def replay(event: tuple, sink: ProgressSink) -> None:
    getattr(sink, event[0])(*event[1:])
