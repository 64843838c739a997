"""The teacher stage: load the teacher from a checkpoint, or train it with its objective, in the
store of shared teachers (one process trains a teacher, the others wait and load it) or in the
run's own ``teacher/``."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from kdcore.api import ObjectiveContext
from kdcore.distill.components import build_component, describe
from kdcore.distill.context import RunContext
from kdcore.distill.loss import objective_terms
from kdcore.distill.networks import Network, build_network
from kdcore.distill.settings import loop_settings, stage_seed
from kdcore.distill.store import exclusive, teacher_key
from kdcore.engine.loop import Trainable
from kdcore.nn import Batch
from kdcore.runs.layout import StageFiles, TEACHER_LINK, load_weights


def teacher_network(run: RunContext) -> Network:
    """The trained (or loaded) teacher, on the run's device."""
    config = run.recipe.teacher
    torch.manual_seed(stage_seed(run.recipe.seed, "teacher-init"))
    network = build_network(run.registry, config.arch, run.data, run.accelerator, run.runtime)
    if config.checkpoint is not None:
        load_weights(network.module, config.checkpoint)
        return network
    if run.teacher_store is None:
        _train_or_load(run, network.module, run.directory.stage(TEACHER_LINK))
        return network
    stored = run.teacher_store / teacher_key(run.recipe)
    # The processes of one distributed run train the teacher together, so they cannot take
    # turns on the store's lock: a distributed run must not share its store with another.
    with exclusive(stored) if not run.accelerator.several_processes() else contextlib.nullcontext():
        _train_or_load(run, network.module, StageFiles(stored))
    if run.accelerator.is_main():
        run.directory.link_teacher(stored)
    return network


def _train_or_load(run: RunContext, model: nn.Module, files: StageFiles) -> None:
    if files.weights.exists():
        load_weights(model, files.weights)
        return
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
    run.train("teacher", Trainable(modules, step_loss, evaluated=model), settings, files, indices)
