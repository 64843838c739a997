"""Progress of a sweep in the terminal: rich bars, also for runs trained in worker processes,
whose events are forwarded to the parent through a queue."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple
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

from kdcore.callbacks import Callback, StageInfo


def epoch_status(record: Mapping[str, float]) -> str:
    """``loss 0.1234  val top1 75.20``: the epoch's mean loss and held-out top-1."""
    status = f"loss {record['train/loss']:.4f}"
    held_out = next((key for key in record if key.endswith("/top1") and not key.startswith("train/")), None)
    if held_out is not None:
        status += f"  {held_out.split('/')[0]} top1 {record[held_out]:.2f}"
    return status


class RichProgress(Callback):
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

    def on_stage_start(self, stage: StageInfo) -> None:
        label = f"{stage.run} {stage.stage}" if stage.run else stage.stage
        self._tasks[(stage.run, stage.stage)] = self._progress.add_task(
            label, total=stage.steps_per_epoch * stage.epochs, completed=stage.steps_per_epoch * stage.start_epoch,
            status="",
        )

    def on_steps(self, stage: StageInfo, steps: int) -> None:
        self._progress.update(self._tasks[(stage.run, stage.stage)], advance=steps)

    def on_epoch_end(self, stage: StageInfo, record: Mapping[str, float]) -> None:
        self._progress.update(self._tasks[(stage.run, stage.stage)], status=epoch_status(record))

    def on_stage_end(self, stage: StageInfo) -> None:
        task = self._tasks.pop((stage.run, stage.stage))
        if self._runs is not None:
            self._progress.remove_task(task)

    def run_finished(self) -> None:
        if self._runs is not None:
            self._progress.update(self._runs, advance=1)


class QueueProgress(Callback):
    """Forwards a worker process's stage events to the parent, which replays them on its bars."""

    def __init__(self, queue: Any):
        self._queue = queue

    def on_stage_start(self, stage: StageInfo) -> None:
        self._queue.put(("on_stage_start", astuple(stage)))

    def on_steps(self, stage: StageInfo, steps: int) -> None:
        self._queue.put(("on_steps", astuple(stage), steps))

    def on_epoch_end(self, stage: StageInfo, record: Mapping[str, float]) -> None:
        self._queue.put(("on_epoch_end", astuple(stage), dict(record)))

    def on_stage_end(self, stage: StageInfo) -> None:
        self._queue.put(("on_stage_end", astuple(stage)))


def replay(event: tuple, callback: Callback) -> None:
    """Call what :class:`QueueProgress` forwarded."""
    method, stage, *arguments = event
    getattr(callback, method)(StageInfo(*stage), *arguments)
