"""One run of a recipe: the data, the teacher stage, the student stage, their evaluation and the
run's summary."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from kdcore.api import LoggerContext
from kdcore.callbacks import Callback, Callbacks, RunInfo
from kdcore.config.schema import Recipe, StageConfig
from kdcore.distill.components import build_component
from kdcore.distill.context import RunContext
from kdcore.distill.dataset import build_dataset
from kdcore.distill.settings import accelerator_settings, runtime_values
from kdcore.distill.student import train_student
from kdcore.distill.teacher import teacher_network
from kdcore.engine.accelerator import Accelerator
from kdcore.nn import Split
from kdcore.registry import Registry
from kdcore.runs.layout import RunDirectory, load_weights


class Run:
    """Trains and evaluates one variant of a recipe in ``directory``, resuming what a previous
    attempt left there. ``callbacks`` receive the run's events (a progress display); the
    recipe's loggers are added to them."""

    def __init__(self, recipe: Recipe, directory: Path, registry: Registry, label: str = "",
                 callbacks: Callback | None = None, teacher_store: Path | None = None):
        self.recipe = recipe
        self.directory = RunDirectory(directory)
        self.registry = registry
        self.label = label
        self.callbacks = callbacks or Callback()
        self.teacher_store = teacher_store
        self.accelerator = Accelerator.resolve(accelerator_settings(recipe.runtime))

    def execute(self) -> dict[str, Any]:
        info = RunInfo(self.label, str(self.directory.path), self.recipe.model_dump(mode="json"))
        runtime = runtime_values(self.recipe.runtime)
        callbacks = Callbacks([self.callbacks, *self._loggers(info, runtime)])
        try:
            with self.accelerator.process_settings():
                callbacks.on_run_start(info)
                summary = self._execute(callbacks, runtime)
                callbacks.on_run_end(info, summary)
                return summary
        finally:
            callbacks.close()

    def _loggers(self, info: RunInfo, runtime: dict[str, Any]) -> list[Callback]:
        """The recipe's loggers; under torchrun only the first process logs."""
        if not self.accelerator.is_main():
            return []
        context = LoggerContext(run=info.label, directory=info.directory, recipe=info.recipe, runtime=runtime)
        return [build_component(self.registry, ref, context) for ref in self.recipe.loggers]

    def _execute(self, callbacks: Callback, runtime: dict[str, Any]) -> dict[str, Any]:
        recipe, accelerator = self.recipe, self.accelerator
        data = build_dataset(self.registry, recipe, str(accelerator.device), runtime)
        accelerator.place(data)
        run = RunContext(recipe, self.registry, data, accelerator, self.directory, self.label, callbacks, runtime,
                         self.teacher_store)
        summary: dict[str, Any] = {}
        teacher = None
        if recipe.teacher is not None:
            teacher = teacher_network(run)
            summary["teacher"] = {**self._evaluate(run, teacher.module, recipe.teacher, "teacher"), **teacher.details}
        if recipe.student is not None:
            student, distillers = train_student(run, teacher)
            summary["student"] = self._evaluate(run, student, recipe.student, "student")
            reported = {ref.term: d.summary() for ref, d in zip(recipe.student.distillers, distillers)}
            if any(reported.values()):
                summary["distillers"] = {term: numbers for term, numbers in reported.items() if numbers}
        if accelerator.is_main():
            self.directory.write_summary(summary)
        return summary

    def _evaluate(self, run: RunContext, model: nn.Module, config: StageConfig, stage: str) -> dict[str, Any]:
        """Metrics of the last epoch's weights on test (and validation); training-set metrics
        only where p* is known, since that is where the teacher's distance to p* on the
        student's inputs matters. With a validation split, also the test metrics of the
        weights of the best validation epoch (``best_val``)."""
        data = run.data
        splits: dict[str, Split] = {"test": data.test}
        if data.val is not None:
            splits["val"] = data.val
        if data.train.true_probs is not None:
            splits["train"] = data.train
        results: dict[str, Any] = {name: run.metrics(model, split, config.eval_batch_size)
                                   for name, split in splits.items()}
        files = self.directory.stage(stage)
        best = files.best_validation()
        if best is not None and files.best_weights.exists():
            selected = copy.deepcopy(model)
            load_weights(selected, files.best_weights)
            results["best_val"] = {"epoch": best[0], "val_top1": best[1],
                                   "test": run.metrics(selected, data.test, config.eval_batch_size)}
        return results
