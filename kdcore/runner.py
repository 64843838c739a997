"""One run of a recipe: the teacher stage, the student stage, and their evaluation."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from kdcore import distributed
from kdcore.api import ArchitectureContext, DatasetContext, DistillerContext, ObjectiveContext, TapPath
from kdcore.errors import KdcoreError
from kdcore.nn import Batch, DatasetBundle, Distiller, Features, Split
from kdcore.progress import ProgressSink
from kdcore.recipe import (
    ArchitectureRef,
    ComponentRef,
    DistillerRef,
    OptimizerConfig,
    Recipe,
    ScheduleConfig,
    StageConfig,
    StudentStage,
)
from kdcore.registry import Registry
from kdcore.taps import FeatureRecorder, feature_shapes
from kdcore.teacher_store import exclusive, link_teacher, teacher_key
from kdcore.training.batches import evaluation_batches
from kdcore.training.checkpoint import load_weights, write_json
from kdcore.training.evaluate import evaluate
from kdcore.training.performance import Performance
from kdcore.training.stage import BEST_WEIGHTS, WEIGHTS, Stage, best_validation

SUMMARY = "summary.json"


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one (with several processes, this process's GPU)."""
    if name == "auto":
        return torch.device(f"cuda:{distributed.local_rank()}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def stage_seed(seed: int, purpose: str) -> int:
    """Independent seeds per purpose, so that loading a teacher instead of training it does not
    change the student's initialisation or batch order."""
    purposes = ("teacher-init", "teacher-data", "student-init", "student-data")
    return seed * len(purposes) + purposes.index(purpose)


def build_component(registry: Registry, ref: ComponentRef, ctx: Any) -> Any:
    return registry.get(ref.kind, ref.name).spec.builder()(ref.params, ctx)


def build_network(
    registry: Registry, ref: ArchitectureRef, data: DatasetBundle
) -> tuple[nn.Module, dict[str, TapPath]]:
    spec = registry.get("architecture", ref.name).spec
    model = spec.builder()(ref.params, ArchitectureContext(data.num_classes, data.input_shape))
    extra = {tap: path if isinstance(path, str) else tuple(path) for tap, path in ref.taps.items()}
    return model, {**spec.tap_paths(ref.params), **extra}


class Run:
    """Trains and evaluates one variant of a recipe in ``directory``, resuming what a previous
    attempt left there."""

    def __init__(self, recipe: Recipe, directory: Path, registry: Registry, label: str, progress: ProgressSink,
                 teacher_store: Path | None = None):
        self.recipe = recipe
        self.directory = directory
        self.teacher_store = teacher_store
        self.registry = registry
        self.label = label
        self.progress = progress
        self.device = resolve_device(recipe.runtime.device)
        self.performance = Performance.resolve(recipe.runtime, self.device)

    def execute(self) -> dict[str, Any]:
        with self.performance.process_settings():
            return self._execute()

    def _execute(self) -> dict[str, Any]:
        data = build_component(self.registry, self.recipe.data, DatasetContext(seed=self.recipe.seed, device=str(self.device)))
        self.performance.place(data)
        summary: dict[str, Any] = {}
        teacher = None
        if self.recipe.teacher is not None:
            teacher = self._teacher(data)
            summary["teacher"] = self._evaluate(teacher, data, self.recipe.teacher, "teacher")
        if self.recipe.student is not None:
            student, distillers = self._student(data, teacher)
            summary["student"] = self._evaluate(student, data, self.recipe.student, "student")
            reported = {ref.term: d.summary() for ref, d in zip(self.recipe.student.distillers, distillers)}
            if any(reported.values()):
                summary["distillers"] = {term: numbers for term, numbers in reported.items() if numbers}
        if distributed.is_main():
            write_json(self.directory / SUMMARY, summary)
        return summary

    def _teacher(self, data: DatasetBundle) -> nn.Module:
        """Load the teacher, or train it: in the shared store when there is one (waiting for
        another process that trains the same teacher), else in the run's ``teacher/``."""
        config = self.recipe.teacher
        torch.manual_seed(stage_seed(self.recipe.seed, "teacher-init"))
        model, _ = build_network(self.registry, config.arch, data)
        self.performance.network(model)
        if config.checkpoint is not None:
            load_weights(model, config.checkpoint)
            return model
        if self.teacher_store is None:
            self._train_teacher(model, data, self.directory / "teacher")
            return model
        stored = self.teacher_store / teacher_key(self.recipe)
        # The processes of one distributed run train the teacher together, so they cannot take
        # turns on the store's lock: a distributed run must not share its store with another.
        with exclusive(stored) if not distributed.active() else contextlib.nullcontext():
            self._train_teacher(model, data, stored)
        if distributed.is_main():
            link_teacher(self.directory, stored)
        return model

    def _train_teacher(self, model: nn.Module, data: DatasetBundle, directory: Path) -> None:
        if (directory / WEIGHTS).exists():
            load_weights(model, directory / WEIGHTS)
            return
        config = self.recipe.teacher
        objective = build_component(self.registry, config.objective, ObjectiveContext(data.num_classes))
        term = config.objective.name

        network = self.performance.training_pass(distributed.wrap(model))

        def step_loss(batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
            loss = objective(network(batch.inputs), batch.labels)
            return loss, {term: loss}

        labeled = data.train.labeled
        indices = labeled.nonzero().flatten() if labeled is not None else torch.arange(len(data.train))
        self._stage("teacher", nn.ModuleDict({"model": model}), step_loss, config, data, indices, model,
                    directory).train()

    def _student(self, data: DatasetBundle, teacher: nn.Module | None) -> tuple[nn.Module, list[Distiller]]:
        """Distil into the student; without a teacher, the distillers must need none."""
        config = self.recipe.student
        torch.manual_seed(stage_seed(self.recipe.seed, "student-init"))
        student, student_paths = build_network(self.registry, config.arch, data)
        self.performance.network(student)
        teacher_paths: dict[str, TapPath] = {}
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            _, teacher_paths = build_network(self.registry, self.recipe.teacher.arch, data)
        context = self._distiller_context(data, student, student_paths, teacher, teacher_paths)
        distillers = [build_component(self.registry, ref, context).to(self.device) for ref in config.distillers]
        needing_teacher = [ref.term for ref, d in zip(config.distillers, distillers) if d.teacher_taps]
        if teacher is None and needing_teacher:
            raise KdcoreError(f"distiller '{needing_teacher[0]}' reads the teacher's features; add a teacher stage")
        expander = _batch_expander(config.distillers, distillers)
        self._prepare(config, distillers, data)
        student_features = FeatureRecorder(student, student_paths, _wanted(distillers, "student_taps"),
                                           forward=self.performance.training_pass(distributed.wrap(student)))
        if teacher is None:
            teacher_features = None
            teacher_targets: Callable[[Batch], Features] = lambda batch: {}
        elif expander is None and data.train.in_memory and data.train_transform is None:
            teacher_features = FeatureRecorder(teacher, teacher_paths, _wanted(distillers, "teacher_taps"))
            teacher_targets = _cached_targets(teacher_features, data, self.device, config.eval_batch_size)
        else:
            teacher_features = FeatureRecorder(teacher, teacher_paths, _wanted(distillers, "teacher_taps"),
                                               forward=self.performance.training_pass(teacher))
            teacher_targets = torch.no_grad()(lambda batch: teacher_features(batch.inputs))

        def step_loss(batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
            if expander is not None:
                batch = expander.expand_batch(batch)
            features = student_features(batch.inputs)
            targets = teacher_targets(batch)
            logits = features["logits"] if batch.primary is None else features["logits"][batch.primary]
            if config.ce_weight > 0:
                ce = _cross_entropy(logits, batch.labels, batch.labeled)
                total = config.ce_weight * ce
            else:  # logged only: no gradient work for a term of weight 0
                with torch.no_grad():
                    ce = _cross_entropy(logits, batch.labels, batch.labeled)
                total = 0.0
            terms = {"ce": ce}
            for ref, distiller in zip(config.distillers, distillers):
                losses = distiller(features, targets, batch)
                for key, value in losses.items():
                    terms[ref.term if len(losses) == 1 else f"{ref.term}.{key}"] = value
                total = total + ref.weight * sum(losses.values())
            return total, terms

        trainable = nn.ModuleDict({"model": student, "distillers": nn.ModuleList(distillers)}).to(self.device)
        indices = torch.arange(len(data.train))
        distiller_parameters = [p for d in distillers for p in d.parameters() if p.requires_grad]
        self._stage("student", trainable, step_loss, config, data, indices, student,
                    after_backward=lambda: distributed.average_gradients(distiller_parameters)).train()
        student_features.remove()
        if teacher_features is not None:
            teacher_features.remove()
        return student, distillers

    def _distiller_context(self, data: DatasetBundle, student: nn.Module, student_paths: dict[str, TapPath],
                           teacher: nn.Module | None, teacher_paths: dict[str, TapPath]) -> DistillerContext:
        probe = self.performance.inputs(_probe_inputs(data, self.device))
        return DistillerContext(
            student=student,
            teacher=teacher,
            student_shapes=_probe_shapes(student, student_paths, probe),
            teacher_shapes=_probe_shapes(teacher, teacher_paths, probe) if teacher is not None else {},
            num_classes=data.num_classes,
            train_size=len(data.train),
            train_labels=_usable_labels(data.train),
            epochs=self.recipe.student.epochs,
            teacher_features=_all_features(teacher, teacher_paths) if teacher is not None else None,
            train_true_probs=data.train.true_probs,
        )

    def _prepare(self, config: StudentStage, distillers: list[Distiller], data: DatasetBundle) -> None:
        """Run the preparation stage of every distiller that declares one (teacher frozen).
        What a preparation trained is frozen afterwards; keeping it in eval mode during the
        student stage (batch-norm statistics) is the distiller's business."""
        for ref, distiller in zip(config.distillers, distillers):
            preparation = distiller.preparation()
            if preparation is None:
                continue
            try:
                stage_config = StageConfig(
                    arch=config.arch,
                    epochs=preparation.epochs,
                    batch_size=preparation.batch_size,
                    eval_batch_size=config.eval_batch_size,
                    optimizer=OptimizerConfig.model_validate(preparation.optimizer),
                    schedule=ScheduleConfig.model_validate(preparation.schedule),
                )
            except ValidationError as error:
                raise KdcoreError(f"distiller '{ref.term}' declares an invalid preparation: {error}") from None
            trainable = nn.ModuleDict({"model": preparation.trainable})
            indices = torch.arange(len(data.train))
            parameters = [p for p in preparation.trainable.parameters() if p.requires_grad]
            self._stage(f"prepare-{ref.term}", trainable, preparation.step_loss, stage_config, data, indices,
                        None, after_backward=lambda: distributed.average_gradients(parameters)).train()
            preparation.trainable.requires_grad_(False)

    def _stage(self, name: str, trainable: nn.ModuleDict, step_loss, config: StageConfig,
               data: DatasetBundle, indices: Tensor, evaluated: nn.Module | None,
               directory: Path | None = None, after_backward=None) -> Stage:
        return Stage(
            name=name,
            run=self.label,
            directory=directory or self.directory / name,
            trainable=trainable,
            step_loss=step_loss,
            config=config,
            data=data,
            train_indices=indices,
            device=self.device,
            runtime=self.recipe.runtime,
            seed=stage_seed(self.recipe.seed, "student-data" if name.startswith("prepare-") else f"{name}-data"),
            progress=self.progress,
            evaluated=evaluated,
            performance=self.performance,
            after_backward=after_backward,
        )

    def _evaluate(self, model: nn.Module, data: DatasetBundle, config: StageConfig, stage: str) -> dict[str, Any]:
        """Metrics of the last epoch's weights on test (and validation); training-set metrics
        only where p* is known, since that is where the teacher's distance to p* on the
        student's inputs matters. With a validation split, also the test metrics of the
        weights of the best validation epoch (``best_val``)."""
        splits: dict[str, Split] = {"test": data.test}
        if data.val is not None:
            splits["val"] = data.val
        if data.train.true_probs is not None:
            splits["train"] = data.train
        results: dict[str, Any] = {name: self._metrics(model, split, config, data) for name, split in splits.items()}
        directory = self.directory / stage
        best = best_validation(directory)
        if best is not None and (directory / BEST_WEIGHTS).exists():
            selected = copy.deepcopy(model)
            load_weights(selected, directory / BEST_WEIGHTS)
            results["best_val"] = {"epoch": best[0], "val_top1": best[1],
                                   "test": self._metrics(selected, data.test, config, data)}
        return results

    def _metrics(self, model: nn.Module, split: Split, config: StageConfig, data: DatasetBundle) -> dict[str, float]:
        return evaluate(model, split, self.device, config.eval_batch_size, data.eval_transform,
                        self.recipe.runtime.num_workers, self.performance)


def _usable_labels(split: Split) -> Tensor:
    """The training labels, with ``-1`` where a label may not be used (semi-supervised)."""
    if split.labeled is None:
        return split.labels
    return torch.where(split.labeled, split.labels, torch.full_like(split.labels, -1))


def _cross_entropy(logits: Tensor, labels: Tensor, labeled: Tensor | None) -> Tensor:
    """Mean cross-entropy over the samples whose label may be used (all, when no mask)."""
    if labeled is None:
        return F.cross_entropy(logits, labels)
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    return (per_sample * labeled).sum() / labeled.sum().clamp(min=1)


def _batch_expander(refs: list[DistillerRef], distillers: list[Distiller]) -> Distiller | None:
    expanding = [(ref, d) for ref, d in zip(refs, distillers) if d.expands_batch]
    if len(expanding) > 1:
        names = " and ".join(f"'{ref.term}'" for ref, _ in expanding)
        raise KdcoreError(f"distillers {names} both replace the training batch; use one of them per recipe")
    return expanding[0][1] if expanding else None


def _cached_targets(
    recorder: FeatureRecorder, data: DatasetBundle, device: torch.device, batch_size: int
) -> Callable[[Batch], Features]:
    """The frozen teacher's features for a batch of an unaugmented in-memory split: the teacher
    sees the same input for a sample in every epoch, so its features are computed once for the
    whole training split and looked up by sample index."""
    with torch.no_grad():
        chunks = [recorder(inputs) for inputs, _, _ in evaluation_batches(data.train, batch_size, device, 0)]
    cache = {
        tap: [torch.cat(parts) for parts in zip(*(c[tap] for c in chunks))]
        if isinstance(chunks[0][tap], list) else torch.cat([c[tap] for c in chunks])
        for tap in chunks[0]
    }
    return lambda batch: {
        tap: [part[batch.index] for part in value] if isinstance(value, list) else value[batch.index]
        for tap, value in cache.items()
    }


def _all_features(model: nn.Module, paths: dict[str, TapPath]) -> Callable[[Tensor], Features]:
    """Runs the model without gradient, recording every declared tap; hooks are attached on
    first use only."""
    recorder: FeatureRecorder | None = None

    @torch.no_grad()
    def features(inputs: Tensor) -> Features:
        nonlocal recorder
        if recorder is None:
            recorder = FeatureRecorder(model, paths, paths)
        return recorder(inputs)

    return features


def _wanted(distillers: list, attribute: str) -> list[str]:
    return [tap for distiller in distillers for tap in getattr(distiller, attribute)]


def _probe_inputs(data: DatasetBundle, device: torch.device, count: int = 2) -> Tensor:
    """The first ``count`` training samples as the networks see them in evaluation."""
    split = data.train
    inputs, _, _ = next(evaluation_batches(split, count, device, 0))
    return data.eval_transform(inputs) if data.eval_transform is not None and split.batch_transformed else inputs


@torch.no_grad()
def _probe_shapes(model: nn.Module, paths: dict[str, TapPath], inputs: Tensor) -> dict[str, Any]:
    """Shapes of every declared tap for one sample, from a forward pass in eval mode."""
    recorder = FeatureRecorder(model, paths, paths)
    was_training = model.training
    model.eval()
    try:
        return feature_shapes(recorder(inputs))
    finally:
        model.train(was_training)
        recorder.remove()
