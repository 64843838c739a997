"""What a training loop tells the outside world: the start and end of runs and stages, steps,
each epoch's metrics and each checkpoint. Progress displays and experiment trackers (logger
plugins, :class:`kdcore.api.LoggerSpec`) are callbacks.

A callback overrides the methods it needs; the others do nothing. Every argument is plain data
(numbers, strings, dicts), so events can be forwarded between processes and this module
imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    """One run of a recipe: ``label`` is its variant id within the sweep (``""`` for a single
    run), ``recipe`` the resolved recipe as plain data."""

    label: str
    directory: str
    recipe: Mapping[str, Any]


@dataclass(frozen=True)
class StageInfo:
    """One training stage of a run (``teacher``, ``student``, ``prepare-<term>``)."""

    run: str
    stage: str
    directory: str
    epochs: int
    steps_per_epoch: int
    start_epoch: int
    """Epochs already done when the stage starts (after ``--resume``)."""


class Callback:
    """Receives the events of training; the base class ignores them all."""

    def on_run_start(self, run: RunInfo) -> None:
        """Before anything of the run is built."""

    def on_stage_start(self, stage: StageInfo) -> None:
        """Before the stage's first epoch (also when a resumed stage has nothing left to do)."""

    def on_steps(self, stage: StageInfo, steps: int) -> None:
        """``steps`` more optimisation steps are done (called about ten times an epoch)."""

    def on_epoch_end(self, stage: StageInfo, record: Mapping[str, float]) -> None:
        """An epoch's record as written to ``metrics.jsonl``: ``epoch`` (from 1), ``lr``,
        ``train/<term>`` per loss term, the held-out metrics (``val/top1``...) and
        ``seconds``."""

    def on_checkpoint(self, stage: StageInfo, epochs_done: int) -> None:
        """The stage's resume state was written after ``epochs_done`` epochs."""

    def on_stage_end(self, stage: StageInfo) -> None:
        """The stage's final weights are written."""

    def on_run_end(self, run: RunInfo, summary: Mapping[str, Any]) -> None:
        """The run finished; ``summary`` is what ``summary.json`` holds."""

    def close(self) -> None:
        """Release files or connections; called once, also when the run failed."""


class Callbacks(Callback):
    """Several callbacks called in order, as one."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = list(callbacks)

    def on_run_start(self, run: RunInfo) -> None:
        for callback in self.callbacks:
            callback.on_run_start(run)

    def on_stage_start(self, stage: StageInfo) -> None:
        for callback in self.callbacks:
            callback.on_stage_start(stage)

    def on_steps(self, stage: StageInfo, steps: int) -> None:
        for callback in self.callbacks:
            callback.on_steps(stage, steps)

    def on_epoch_end(self, stage: StageInfo, record: Mapping[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(stage, record)

    def on_checkpoint(self, stage: StageInfo, epochs_done: int) -> None:
        for callback in self.callbacks:
            callback.on_checkpoint(stage, epochs_done)

    def on_stage_end(self, stage: StageInfo) -> None:
        for callback in self.callbacks:
            callback.on_stage_end(stage)

    def on_run_end(self, run: RunInfo, summary: Mapping[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_run_end(run, summary)

    def close(self) -> None:
        for callback in self.callbacks:
            callback.close()
