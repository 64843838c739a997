"""The teacher stage: load the teacher from a checkpoint, or train it with its objective, in the
store of shared teachers (one process trains a teacher, the others wait and load it) or in the
run's own ``teacher/``. Options of the stage: ``select`` picks which epoch's weights become the
teacher (the last, or the best on the validation split by top-1 or Brier score), and
``calibration`` rescales its logits by a temperature fitted on the validation split. A trained
teacher's folder holds ``teacher.json``, the record ``kdcore teachers`` lists."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn

import kdcore
from kdcore.api import ObjectiveContext
from kdcore.distill.calibration import calibrate_temperature
from kdcore.distill.components import build_component, describe
from kdcore.distill.context import RunContext
from kdcore.distill.loss import objective_terms
from kdcore.distill.metadata import weights_metadata
from kdcore.distill.networks import Network, build_network
from kdcore.distill.settings import loader_settings, loop_settings, stage_seed
from kdcore.distill.store import exclusive, teacher_key
from kdcore.engine.loop import Selection, Trainable
from kdcore.errors import KdcoreError
from kdcore.nn import Batch
from kdcore.runs.layout import (
    BEST_BRIER_WEIGHTS,
    BEST_WEIGHTS,
    BRIER_SELECTION,
    MODEL_SELECTION,
    WEIGHTS,
    StageFiles,
    TEACHER_LINK,
    load_weights,
    write_json,
)

SELECTIONS: dict[str, tuple[str, bool, str]] = {
    "best_val_top1": (MODEL_SELECTION, True, BEST_WEIGHTS),
    "best_val_brier": (BRIER_SELECTION, False, BEST_BRIER_WEIGHTS),
}
"""``select`` → (metric of the epoch records, higher is better, weights file of that epoch)."""


@dataclass
class Teacher(Network):
    """The teacher the student sees, and what its stage chose (``details``: the selected
    epoch, the fitted calibration), for the run's summary."""

    details: dict[str, Any] = field(default_factory=dict)


def teacher_network(run: RunContext) -> Teacher:
    """The trained (or loaded) teacher, on the run's device: the selected epoch's weights,
    with calibrated logits where the stage asks for calibration."""
    config = run.recipe.teacher
    _check_validation_split(run)
    torch.manual_seed(stage_seed(run.recipe.seed, "teacher-init"))
    network = build_network(run.registry, config.arch, run.data, run.accelerator, run.runtime)
    teacher = Teacher(network.module, network.taps)
    if config.checkpoint is not None:
        load_weights(network.module, config.checkpoint)
        _calibrate(run, teacher)
        return teacher
    if run.teacher_store is None:
        _train_or_load(run, teacher, run.directory.stage(TEACHER_LINK))
        return teacher
    stored = run.teacher_store / teacher_key(run.recipe, run.registry)
    # The processes of one distributed run train the teacher together, so they cannot take
    # turns on the store's lock: a distributed run must not share its store with another.
    with exclusive(stored) if not run.accelerator.several_processes() else contextlib.nullcontext():
        _train_or_load(run, teacher, StageFiles(stored))
    if run.accelerator.is_main():
        run.directory.link_teacher(stored)
    return teacher


def _check_validation_split(run: RunContext) -> None:
    config = run.recipe.teacher
    wanted = [f"select: {config.select}"] if config.select != "last" else []
    if config.calibration is not None:
        wanted.append(f"calibration: {{name: {config.calibration.name}}}")
    if wanted and run.data.val is None:
        raise KdcoreError(
            f"teacher.{' and teacher.'.join(wanted)} needs a validation split, and dataset '{run.recipe.data.name}' "
            "has none here; give the dataset a validation split, or leave the option out"
        )


def _train_or_load(run: RunContext, teacher: Teacher, files: StageFiles) -> None:
    """Train the teacher into ``files`` (or load it from there), load the selected epoch's
    weights, calibrate, and write ``teacher.json`` where it is missing."""
    writes_record = not files.record.exists()
    trained = not files.weights.exists()
    if trained:
        _train(run, teacher.module, files)
    _select(run, teacher, files, trained)
    _calibrate(run, teacher)
    if writes_record:
        record = _record(run, teacher, files)
        if run.accelerator.is_main():
            write_json(files.record, record)


def _select(run: RunContext, teacher: Teacher, files: StageFiles, trained: bool) -> None:
    """Load the weights ``select`` chooses (a model just trained holds the last epoch's)."""
    select = run.recipe.teacher.select
    if select == "last":
        if not trained:
            load_weights(teacher.module, files.weights)
        return
    metric, maximise, weights = SELECTIONS[select]
    best = files.best_by(metric, maximise)
    if best is None or not (files.path / weights).exists():
        raise KdcoreError(f"{files.path}: no {weights} for select: {select}; delete the folder to train the "
                          "teacher again")
    load_weights(teacher.module, files.path / weights)
    teacher.details["selection"] = {"select": select, "epoch": best[0], metric: best[1], "weights": weights}


def _calibrate(run: RunContext, teacher: Teacher) -> None:
    config = run.recipe.teacher
    if config.calibration is None:
        return
    teacher.details["calibration"] = calibrate_temperature(
        teacher.module, run.data.val, run.accelerator, config.eval_batch_size, run.data.eval_transform,
        loader_settings(run.recipe.runtime),
    )


def _record(run: RunContext, teacher: Teacher, files: StageFiles) -> dict[str, Any]:
    """``teacher.json``: what the stored teacher is (its identity's parts) and how it scores
    on held-out data, as the student sees it (selected and calibrated)."""
    recipe, config, data = run.recipe, run.recipe.teacher, run.data
    splits = {"test": data.test, "val": data.val}
    if data.train.true_probs is not None:
        splits["train"] = data.train
    metrics = {name: run.metrics(teacher.module, split, config.eval_batch_size)
               for name, split in splits.items() if split is not None}
    return {
        "key": files.path.name,
        "arch": config.arch.model_dump(mode="json"),
        "objective": config.objective.model_dump(mode="json"),
        "objective_options": _changed_params(config.objective.params),
        "select": config.select,
        "selected_epoch": teacher.details.get("selection", {}).get("epoch", config.epochs),
        "calibration": teacher.details.get("calibration"),
        "seed": recipe.seed,
        "data": recipe.data.model_dump(mode="json"),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "optimizer": config.optimizer.model_dump(mode="json"),
        "schedule": config.schedule.model_dump(mode="json"),
        "weights": teacher.details.get("selection", {}).get("weights", WEIGHTS),
        "metrics": metrics,
        "recipe": recipe.name,
        "kdcore": kdcore.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _changed_params(params: Any) -> dict[str, Any]:
    """The params that differ from the component's defaults (all of them, unvalidated)."""
    if isinstance(params, BaseModel):
        return params.model_dump(mode="json", exclude_defaults=True)
    return dict(params or {})


def _train(run: RunContext, model: nn.Module, files: StageFiles) -> None:
    config = run.recipe.teacher
    labeled = run.data.train.labeled
    indices = labeled.nonzero().flatten() if labeled is not None else torch.arange(len(run.data.train))
    context = ObjectiveContext(num_classes=run.data.num_classes, model=model, train_size=len(run.data.train),
                               epochs=config.epochs, runtime=run.runtime)
    objective = build_component(run.registry, config.objective, context)
    modules = nn.ModuleDict({"model": model})
    if isinstance(objective, nn.Module):
        objective.to(run.accelerator.device)
        if objective.state_dict():  # state kept across steps (e.g. per-sample averages) is checkpointed
            modules["objective"] = objective
    network = run.accelerator.trained(model)
    term = config.objective.name
    who = describe(run.registry.get("objective", term))

    def step_loss(batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        terms = objective_terms(objective, term, network(batch.inputs), batch, who)
        return sum(terms.values()), terms

    settings = loop_settings(config, run.recipe.runtime, stage_seed(run.recipe.seed, "teacher-data"))
    if config.select in SELECTIONS and SELECTIONS[config.select][0] != MODEL_SELECTION:
        metric, maximise, weights = SELECTIONS[config.select]
        settings = dataclasses.replace(settings, selections=(Selection(metric, maximise, weights),))
    metadata = weights_metadata(config.arch, run.data, "teacher", run.recipe.name, run.label)
    run.train("teacher", Trainable(modules, step_loss, evaluated=model, weights_metadata=metadata), settings, files,
              indices)
