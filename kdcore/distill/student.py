"""The student stage: build the distillers against the probed features of both networks, run
their preparation stages, then train the student on its cross-entropy and their terms."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from kdcore.api import DistillerContext
from kdcore.config.schema import DistillerRef, OptimizerConfig, ScheduleConfig
from kdcore.distill.components import build_component, describe
from kdcore.distill.context import RunContext
from kdcore.distill.loss import StudentLoss
from kdcore.distill.metadata import weights_metadata
from kdcore.distill.networks import Network, build_network, probe_inputs
from kdcore.distill.settings import loop_settings, optimizer_settings, schedule_settings, stage_seed
from kdcore.distill.taps import FeatureRecorder
from kdcore.engine.data import evaluation_batches
from kdcore.engine.loop import LoopSettings, Trainable
from kdcore.errors import KdcoreError
from kdcore.nn import Batch, Distiller, Features, Split


def train_student(run: RunContext, teacher: Network | None) -> tuple[nn.Module, list[Distiller]]:
    """Distil into the student; without a teacher, the distillers must need none."""
    config = run.recipe.student
    torch.manual_seed(stage_seed(run.recipe.seed, "student-init"))
    student = build_network(run.registry, config.arch, run.data, run.accelerator, run.runtime)
    if teacher is not None:
        teacher.module.eval().requires_grad_(False)
    teacher_everything = _OnDemandFeatures(teacher) if teacher is not None else None
    try:
        distillers = _build_distillers(run, student, teacher, teacher_everything)
        expander = _batch_expander(config.distillers, distillers)
        _prepare(run, config.distillers, distillers)
        student_features = student.recorder(_wanted(distillers, "student_taps"),
                                            forward=run.accelerator.trained(student.module))
        teacher_features, teacher_targets = _teacher_targets(run, teacher, distillers, expander)
        names = [describe(run.registry.get("distiller", ref.name)) for ref in config.distillers]
        loss = StudentLoss(config.ce_weight, config.distillers, distillers, names)

        def step_loss(batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
            if expander is not None:
                batch = expander.expand_batch(batch)
            return loss(student_features(batch.inputs), teacher_targets(batch), batch)

        modules = nn.ModuleDict({"model": student.module, "distillers": nn.ModuleList(distillers)})
        modules.to(run.accelerator.device)
        own = [p for d in distillers for p in d.parameters() if p.requires_grad]
        trainable = Trainable(modules, step_loss, evaluated=student.module,
                              after_backward=lambda: run.accelerator.average_gradients(own),
                              weights_metadata=weights_metadata(config.arch, run.data, "student", run.recipe.name,
                                                                run.label))
        settings = loop_settings(config, run.recipe.runtime, stage_seed(run.recipe.seed, "student-data"))
        views = [view for d in distillers for view in d.input_views]
        run.train("student", trainable, settings, run.directory.stage("student"),
                  torch.arange(len(run.data.train)), views)
        student_features.remove()
        if teacher_features is not None:
            teacher_features.remove()
    finally:
        if teacher_everything is not None:
            teacher_everything.remove()
    return student.module, distillers


class _OnDemandFeatures:
    """The frozen teacher's logits and every tap, without gradient, for preparation stages;
    its hooks are attached on first use only, and removed with :meth:`remove`."""

    def __init__(self, teacher: Network):
        self.teacher = teacher
        self.recorder: FeatureRecorder | None = None

    @torch.no_grad()
    def __call__(self, inputs: Tensor) -> Features:
        if self.recorder is None:
            self.recorder = self.teacher.recorder(self.teacher.taps)
        return self.recorder(inputs)

    def remove(self) -> None:
        if self.recorder is not None:
            self.recorder.remove()


def _build_distillers(run: RunContext, student: Network, teacher: Network | None,
                      teacher_everything: _OnDemandFeatures | None) -> list[Distiller]:
    config = run.recipe.student
    probe = probe_inputs(run.data, run.accelerator)
    context = DistillerContext(
        student=student.module,
        teacher=teacher.module if teacher is not None else None,
        student_shapes=student.feature_shapes(probe),
        teacher_shapes=teacher.feature_shapes(probe) if teacher is not None else {},
        num_classes=run.data.num_classes,
        train_size=len(run.data.train),
        train_labels=_usable_labels(run.data.train),
        epochs=config.epochs,
        teacher_features=teacher_everything,
        train_true_probs=run.data.train.true_probs,
        runtime=run.runtime,
    )
    distillers = [build_component(run.registry, ref, context).to(run.accelerator.device) for ref in config.distillers]
    needing_teacher = [ref.term for ref, d in zip(config.distillers, distillers) if d.teacher_taps]
    if teacher is None and needing_teacher:
        raise KdcoreError(f"distiller '{needing_teacher[0]}' reads the teacher's features; add a teacher stage")
    return distillers


def _teacher_targets(run: RunContext, teacher: Network | None, distillers: list[Distiller],
                     expander: Distiller | None) -> tuple[FeatureRecorder | None, Callable[[Batch], Features]]:
    """What the frozen teacher says about a batch. When the training inputs are not augmented
    and no distiller changes them, the teacher sees the same input for a sample in every epoch,
    so its features are computed once for the whole training split and looked up by index."""
    if teacher is None:
        return None, lambda batch: {}
    wanted = _wanted(distillers, "teacher_taps")
    data = run.data
    if expander is None and data.train.in_memory and data.train_transform is None:
        recorder = teacher.recorder(wanted)
        return recorder, _cached_targets(recorder, data.train, run.accelerator.device,
                                         run.recipe.student.eval_batch_size)
    recorder = teacher.recorder(wanted, forward=run.accelerator.training_pass(teacher.module))
    return recorder, torch.no_grad()(lambda batch: recorder(batch.inputs))


def _prepare(run: RunContext, refs: list[DistillerRef], distillers: list[Distiller]) -> None:
    """Run the preparation stage of every distiller that declares one (teacher frozen).
    What a preparation trained is frozen afterwards; keeping it in eval mode during the
    student stage (batch-norm statistics) is the distiller's business."""
    for ref, distiller in zip(refs, distillers):
        preparation = distiller.preparation()
        if preparation is None:
            continue
        try:
            optimizer = optimizer_settings(OptimizerConfig.model_validate(preparation.optimizer))
            schedule = schedule_settings(ScheduleConfig.model_validate(preparation.schedule))
        except ValidationError as error:
            raise KdcoreError(f"distiller '{ref.term}' declares an invalid preparation: {error}") from None
        student = run.recipe.student
        settings = LoopSettings(
            epochs=preparation.epochs,
            batch_size=preparation.batch_size,
            optimizer=optimizer,
            schedule=schedule,
            eval_batch_size=student.eval_batch_size,
            checkpoint_every=run.recipe.runtime.checkpoint_every,
            # the student's batch order: a preparation sees the batches the student will
            seed=stage_seed(run.recipe.seed, "student-data"),
            loader=loop_settings(student, run.recipe.runtime, 0).loader,
        )
        parameters = [p for p in preparation.trainable.parameters() if p.requires_grad]
        trainable = Trainable(nn.ModuleDict({"model": preparation.trainable}), preparation.step_loss,
                              after_backward=lambda: run.accelerator.average_gradients(parameters))
        stage = f"prepare-{ref.term}"
        run.train(stage, trainable, settings, run.directory.stage(stage), torch.arange(len(run.data.train)))
        preparation.trainable.requires_grad_(False)


def _usable_labels(split: Split) -> Tensor:
    """The training labels, with ``-1`` where a label may not be used (semi-supervised)."""
    if split.labeled is None:
        return split.labels
    return torch.where(split.labeled, split.labels, torch.full_like(split.labels, -1))


def _batch_expander(refs: list[DistillerRef], distillers: list[Distiller]) -> Distiller | None:
    expanding = [(ref, d) for ref, d in zip(refs, distillers) if d.expands_batch]
    if len(expanding) > 1:
        names = " and ".join(f"'{ref.term}'" for ref, _ in expanding)
        raise KdcoreError(f"distillers {names} both replace the training batch; use one of them per recipe")
    return expanding[0][1] if expanding else None


def _cached_targets(recorder: FeatureRecorder, split: Split, device: torch.device,
                    batch_size: int) -> Callable[[Batch], Features]:
    with torch.no_grad():
        chunks = [recorder(inputs) for inputs, _, _ in evaluation_batches(split, batch_size, device)]
    cache = {
        tap: [torch.cat(parts) for parts in zip(*(c[tap] for c in chunks))]
        if isinstance(chunks[0][tap], list) else torch.cat([c[tap] for c in chunks])
        for tap in chunks[0]
    }
    return lambda batch: {
        tap: [part[batch.index] for part in value] if isinstance(value, list) else value[batch.index]
        for tap, value in cache.items()
    }


def _wanted(distillers: list[Distiller], attribute: str) -> list[str]:
    return [tap for distiller in distillers for tap in getattr(distiller, attribute)]
