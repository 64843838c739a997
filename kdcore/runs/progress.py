"""Progress of a sweep, also for runs trained in worker processes, whose events are forwarded to
the parent. What is shown depends on the console it is given:

- a terminal: rich bars, one per (run, stage), with step counts and the time left, fitted to
  the terminal's width (80 columns and up);
- a file or a pipe (a batch job, a cluster log): plain lines, printed and flushed at least once
  per epoch of every stage (``run objective=mse,seed=3 student epoch 4/20 loss 0.512 (ce 0.31,
  kd 0.2) val top1 93.40 1.2s``), and every :data:`HEARTBEAT_SECONDS` within a long epoch;
- an :class:`EventConsole` (``kdcore run --json``): one JSON object per line on stdout for each
  event, messages on stderr;
- a quiet console (``--quiet``, the other processes under torchrun): nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import astuple
from typing import Any, TextIO

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
from kdcore.runs.layout import finite

HEARTBEAT_SECONDS = 60.0
"""Within an epoch longer than this, a plain log gets a line with the step count this often."""
JSON_STEPS_SECONDS = 10.0
"""``steps`` events of ``--json`` come at most this often per stage (epochs always)."""


class EventConsole(Console):
    """The console of ``kdcore run --json``: messages go to stderr, and the progress of a sweep
    is written to ``events`` (stdout) as one JSON object per line."""

    def __init__(self, events: TextIO | None = None, **kwargs: Any):
        super().__init__(stderr=True, **kwargs)
        self._events = events

    @property
    def events(self) -> TextIO:
        return self._events or sys.stdout

    def event(self, name: str, **fields: Any) -> None:
        write_event(self.events, name, **fields)


def write_event(stream: TextIO, name: str, **fields: Any) -> None:
    """One JSON object on one line, flushed: ``{"event": name, "time": unix seconds, ...}``."""
    stream.write(json.dumps(finite({"event": name, "time": round(time.time(), 3), **fields}), default=str) + "\n")
    stream.flush()


def held_out_top1(record: Mapping[str, float]) -> tuple[str, float] | None:
    """(split, top-1) of an epoch record's held-out evaluation: validation where there is one."""
    for split in ("val", "test"):
        if f"{split}/top1" in record:
            return split, record[f"{split}/top1"]
    key = next((k for k in record if k.endswith("/top1") and not k.startswith("train/")), None)
    return (key.split("/")[0], record[key]) if key else None


def loss_terms(record: Mapping[str, float]) -> list[tuple[str, float]]:
    """The epoch's loss terms other than the total: ``[("ce", 0.31), ("kd", 0.20)]``."""
    return [(key[len("train/"):], value) for key, value in record.items()
            if key.startswith("train/") and key != "train/loss" and isinstance(value, (int, float))
            and not key.endswith(("/top1", "/top5"))]


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def epoch_status(record: Mapping[str, float]) -> str:
    """``loss 0.1234  val top1 75.20``: the epoch's mean loss and held-out top-1."""
    status = f"loss {record['train/loss']:.4f}" if "train/loss" in record else ""
    held_out = held_out_top1(record)
    if held_out is not None:
        status += f"  {held_out[0]} top1 {held_out[1]:.2f}"
    return status.strip()


def epoch_line(stage: StageInfo, record: Mapping[str, Any]) -> str:
    """``run objective=mse,seed=3 student epoch 4/20 loss 0.512 (ce 0.31, kd 0.2) val top1
    93.40 1.2s``: one epoch of one stage, for a log."""
    parts = [_where(stage), f"epoch {record.get('epoch', '?')}/{stage.epochs}"]
    if "train/loss" in record:
        terms = loss_terms(record)
        loss = f"loss {_number(record['train/loss'])}"
        if terms and not (len(terms) == 1 and terms[0][1] == record["train/loss"]):
            loss += " (" + ", ".join(f"{name} {_number(value)}" for name, value in terms) + ")"
        parts.append(loss)
    held_out = held_out_top1(record)
    if held_out is not None:
        parts.append(f"{held_out[0]} top1 {held_out[1]:.2f}")
    if "seconds" in record:
        parts.append(f"{record['seconds']:.1f}s")
    return " ".join(parts)


def _where(stage: StageInfo) -> str:
    return f"run {stage.run} {stage.stage}" if stage.run else stage.stage


def short_run_label(label: str, limit: int = 22) -> str:
    """A run's variant id for a narrow bar: the values only (``mse,kd-pkt,s3``), cut in the
    middle when still too long."""
    if not label:
        return ""
    values = []
    for part in label.split(","):
        key, _, value = part.partition("=")
        values.append(f"s{value}" if key == "seed" else (value or key))
    text = ",".join(values)
    if len(text) <= limit:
        return text
    keep = limit - 1
    return text[: (keep + 1) // 2] + "…" + text[len(text) - keep // 2:]


class RichProgress(Callback):
    """The progress display of a sweep; which one (bars, lines, JSON events, none) depends on
    the console, see the module's description."""

    def __init__(self, console: Console, total_runs: int):
        if console.quiet:
            self._display: Callback = _Silent()
        elif isinstance(console, EventConsole):
            self._display = JsonProgress(console.events, total_runs)
        elif console.is_terminal:
            self._display = BarProgress(console, total_runs)
        else:
            self._display = LineProgress(console, total_runs)

    @property
    def display(self) -> Callback:
        return self._display

    def __enter__(self) -> RichProgress:
        getattr(self._display, "start", lambda: None)()
        return self

    def __exit__(self, *exc: Any) -> None:
        getattr(self._display, "stop", lambda: None)()

    def on_stage_start(self, stage: StageInfo) -> None:
        self._display.on_stage_start(stage)

    def on_steps(self, stage: StageInfo, steps: int) -> None:
        self._display.on_steps(stage, steps)

    def on_epoch_end(self, stage: StageInfo, record: Mapping[str, float]) -> None:
        self._display.on_epoch_end(stage, record)

    def on_stage_end(self, stage: StageInfo) -> None:
        self._display.on_stage_end(stage)

    def run_finished(self) -> None:
        getattr(self._display, "run_finished", lambda: None)()


class _Silent(Callback):
    def run_finished(self) -> None:
        pass


class BarProgress(Callback):
    """Rich bars: one per (run, stage) plus an overall bar of finished runs; the columns are
    sized so that a line fits the terminal (the elapsed time only from 100 columns)."""

    def __init__(self, console: Console, total_runs: int):
        width = max(60, console.width)
        self._label_width = 20 if width < 100 else 30
        # label, steps (up to 999999/999999), time left, "L 0.512 val 93.46", the spaces between
        fixed = self._label_width + 13 + 7 + 20 + 5 + (8 if width >= 100 else 0)
        columns = [
            TextColumn("{task.description}", table_column=None),
            BarColumn(bar_width=max(6, min(40, width - fixed - 1))),
            MofNCompleteColumn(),
            *([TimeElapsedColumn()] if width >= 100 else []),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
        ]
        self._progress = Progress(*columns, console=console, transient=False)
        self._tasks: dict[tuple[str, str], TaskID] = {}
        self._runs = self._progress.add_task("runs", total=total_runs, status="") if total_runs > 1 else None

    def start(self) -> None:
        self._progress.start()

    def stop(self) -> None:
        self._progress.stop()

    def _label(self, stage: StageInfo) -> str:
        name = {"teacher": "teach", "student": "stud"}.get(stage.stage, stage.stage[:6])
        run = short_run_label(stage.run, self._label_width - len(name) - 1)
        return f"{run} {name}" if run else stage.stage

    def on_stage_start(self, stage: StageInfo) -> None:
        self._tasks[(stage.run, stage.stage)] = self._progress.add_task(
            self._label(stage), total=stage.steps_per_epoch * stage.epochs,
            completed=stage.steps_per_epoch * stage.start_epoch, status="",
        )

    def on_steps(self, stage: StageInfo, steps: int) -> None:
        self._progress.update(self._tasks[(stage.run, stage.stage)], advance=steps)

    def on_epoch_end(self, stage: StageInfo, record: Mapping[str, float]) -> None:
        held_out = held_out_top1(record)
        status = f"L {record['train/loss']:.3g}" if "train/loss" in record else ""
        if held_out is not None:
            status += f" {held_out[0]} {held_out[1]:.2f}"
        self._progress.update(self._tasks[(stage.run, stage.stage)], status=status.strip())

    def on_stage_end(self, stage: StageInfo) -> None:
        task = self._tasks.pop((stage.run, stage.stage))
        if self._runs is not None:
            self._progress.remove_task(task)

    def run_finished(self) -> None:
        if self._runs is not None:
            self._progress.update(self._runs, advance=1)


class LineProgress(Callback):
    """Plain lines for a log, flushed as they are written: a stage's start and end, every
    epoch, a step count every :data:`HEARTBEAT_SECONDS` within a long epoch, and each finished
    run of a sweep."""

    def __init__(self, console: Console, total_runs: int, heartbeat: float = HEARTBEAT_SECONDS):
        self._console = console
        self._total = total_runs
        self._done = 0
        self._heartbeat = heartbeat
        self._stages: dict[tuple[str, str], dict[str, float]] = {}

    def _print(self, line: str) -> None:
        stream = self._console.file
        stream.write(line + "\n")
        stream.flush()

    def on_stage_start(self, stage: StageInfo) -> None:
        now = time.monotonic()
        self._stages[(stage.run, stage.stage)] = {"start": now, "last": now, "steps": stage.steps_per_epoch * stage.start_epoch,
                                                  "epochs": float(stage.start_epoch)}
        if stage.start_epoch >= stage.epochs:
            self._print(f"{_where(stage)}: {stage.epochs} epochs done before; nothing to train")
            return
        resumed = f", resuming after epoch {stage.start_epoch}" if stage.start_epoch else ""
        self._print(f"{_where(stage)}: {stage.epochs} epochs of {stage.steps_per_epoch} steps{resumed}")

    def on_steps(self, stage: StageInfo, steps: int) -> None:
        state = self._stages.get((stage.run, stage.stage))
        if state is None:
            return
        state["steps"] += steps
        now = time.monotonic()
        if now - state["last"] >= self._heartbeat:
            state["last"] = now
            total = stage.steps_per_epoch * stage.epochs
            epoch = min(stage.epochs, int(state["steps"] // max(1, stage.steps_per_epoch)) + 1)
            self._print(f"{_where(stage)} epoch {epoch}/{stage.epochs} step {int(state['steps'])}/{total} "
                        f"({100 * state['steps'] / max(1, total):.0f}%) {now - state['start']:.0f}s")

    def on_epoch_end(self, stage: StageInfo, record: Mapping[str, float]) -> None:
        line = epoch_line(stage, record)
        state = self._stages.get((stage.run, stage.stage))
        if state is not None:
            now = time.monotonic()
            state["last"] = now
            state["epochs"] += 1
            epoch = record.get("epoch", state["epochs"])
            done_here = state["epochs"] - (stage.start_epoch if stage.start_epoch else 0)
            left = stage.epochs - epoch
            if done_here > 0 and left > 0:
                line += f" eta {_clock((now - state['start']) / done_here * left)}"
        self._print(line)

    def on_stage_end(self, stage: StageInfo) -> None:
        state = self._stages.pop((stage.run, stage.stage), None)
        took = f" in {_clock(time.monotonic() - state['start'])}" if state else ""
        self._print(f"{_where(stage)} done{took}")

    def run_finished(self) -> None:
        self._done += 1
        if self._total > 1:
            self._print(f"runs done: {self._done}/{self._total}")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class JsonProgress(Callback):
    """One JSON object per event (``stage_start``, ``steps`` at most every
    :data:`JSON_STEPS_SECONDS` per stage, ``epoch`` with the whole record, ``stage_end``,
    ``run_done``), each on its own line, flushed."""

    def __init__(self, stream: TextIO, total_runs: int):
        self._stream = stream
        self._total = total_runs
        self._done = 0
        self._steps: dict[tuple[str, str], list[float]] = {}

    def _event(self, name: str, stage: StageInfo | None = None, **fields: Any) -> None:
        where = {"run": stage.run, "stage": stage.stage} if stage is not None else {}
        write_event(self._stream, name, **where, **fields)

    def on_stage_start(self, stage: StageInfo) -> None:
        self._steps[(stage.run, stage.stage)] = [stage.steps_per_epoch * stage.start_epoch, 0.0]
        self._event("stage_start", stage, directory=stage.directory, epochs=stage.epochs,
                    steps_per_epoch=stage.steps_per_epoch, start_epoch=stage.start_epoch)

    def on_steps(self, stage: StageInfo, steps: int) -> None:
        state = self._steps.setdefault((stage.run, stage.stage), [0, 0.0])
        state[0] += steps
        now = time.monotonic()
        if now - state[1] >= JSON_STEPS_SECONDS:
            state[1] = now
            self._event("steps", stage, step=state[0], total=stage.steps_per_epoch * stage.epochs)

    def on_epoch_end(self, stage: StageInfo, record: Mapping[str, float]) -> None:
        self._event("epoch", stage, epoch=record.get("epoch"), epochs=stage.epochs, metrics=dict(record))

    def on_stage_end(self, stage: StageInfo) -> None:
        self._steps.pop((stage.run, stage.stage), None)
        self._event("stage_end", stage)

    def run_finished(self) -> None:
        self._done += 1
        self._event("run_done", done=self._done, total=self._total)


class QueueProgress(Callback):
    """Forwards a worker process's stage events to the parent, which replays them on its display."""

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
