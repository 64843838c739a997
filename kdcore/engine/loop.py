"""The epoch loop of every training stage: optimisation, per-epoch metrics, atomic checkpoints,
resume, and a stop on non-finite losses. It takes plain settings and knows no recipe."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from kdcore.callbacks import Callback, StageInfo
from kdcore.engine.accelerator import Accelerator
from kdcore.engine.data import Augmentation, LoaderSettings, training_batches
from kdcore.engine.evaluate import evaluate
from kdcore.engine.schedule import OptimizerSettings, ScheduleSettings, build_optimizer, learning_rate, set_learning_rate
from kdcore.errors import KdcoreError, NonFiniteLossError
from kdcore.nn import Batch, Split
from kdcore.runs.layout import MODEL_SELECTION, PIN_MARK, StageFiles, save_weights

StepLoss = Callable[[Batch], tuple[Tensor, dict[str, Tensor]]]
"""Maps a batch to (total loss to minimise, named terms to log)."""


@dataclass(frozen=True)
class Selection:
    """A further choice of epoch besides the best validation top-1 (``best.safetensors``): the
    weights of the epoch with the highest (``maximise``) or lowest ``metric``, a key of the
    epoch records such as ``val/brier``, are kept in the stage's file ``weights``; the earliest
    such epoch on ties."""

    metric: str
    maximise: bool
    weights: str

    def improves(self, value: float, best: tuple[int, float] | None) -> bool:
        return best is None or (value > best[1] if self.maximise else value < best[1])


@dataclass(frozen=True)
class LoopSettings:
    """How a stage trains. ``seed`` drives the batch order and the augmentation;
    ``selections`` keep the weights of further best epochs."""

    epochs: int
    batch_size: int
    optimizer: OptimizerSettings
    schedule: ScheduleSettings = ScheduleSettings()
    drop_last: bool = False
    eval_batch_size: int = 1024
    checkpoint_every: int = 1
    seed: int = 0
    loader: LoaderSettings = LoaderSettings()
    selections: tuple[Selection, ...] = ()


@dataclass
class Trainable:
    """What a stage trains.

    ``modules`` holds everything the optimiser updates (``modules["model"]`` is the network
    whose weights the stage produces; other entries are, e.g., distillers' own parameters).
    ``evaluated`` is the classifier whose held-out metrics are logged each epoch (``None``: none).
    ``after_backward`` runs between the backward pass and the optimiser step (averaging the
    gradients that DistributedDataParallel does not). ``weights_metadata`` (plain JSON data: the
    architecture, classes, input shape, ...) is written into every weights file of the model, so
    that the file can be loaded without the recipe (:func:`kdcore.load`).
    """

    modules: nn.ModuleDict
    step_loss: StepLoss
    evaluated: nn.Module | None = None
    after_backward: Callable[[], None] | None = None
    weights_metadata: dict[str, Any] | None = None

    @property
    def model(self) -> nn.Module:
        return self.modules["model"]


@dataclass(frozen=True)
class StageData:
    """The samples a stage trains on and the split its per-epoch metrics come from."""

    train: Split
    indices: Tensor
    augmentation: Augmentation = Augmentation()
    held_out: Split | None = None
    held_out_name: str = "test"
    eval_transform: Callable | None = None


@dataclass
class Loop:
    """One training stage. With several processes, only the first writes files; all of them
    read the checkpoint to resume."""

    stage: str
    run: str
    trainable: Trainable
    data: StageData
    settings: LoopSettings
    accelerator: Accelerator
    files: StageFiles
    callbacks: Callback = field(default_factory=Callback)

    def fit(self) -> None:
        """Train to the last epoch, continuing from the stage's checkpoint if there is one."""
        settings, accelerator = self.settings, self.accelerator
        optimizer = build_optimizer(self.trainable.modules.parameters(), settings.optimizer)
        generator = torch.Generator().manual_seed(settings.seed)
        start_epoch = self._restore(optimizer, generator)
        best = self.files.best_validation()
        selected = {s: self.files.best_by(s.metric, s.maximise) for s in settings.selections}
        info = StageInfo(run=self.run, stage=self.stage, directory=str(self.files.path), epochs=settings.epochs,
                         steps_per_epoch=self._steps_per_epoch(), start_epoch=start_epoch)
        self.callbacks.on_stage_start(info)
        writes = accelerator.is_main()
        for epoch in range(start_epoch, settings.epochs):
            record = self._train_epoch(epoch, optimizer, generator, info)
            improved = MODEL_SELECTION in record and (best is None or record[MODEL_SELECTION] > best[1])
            if improved:
                best = (record["epoch"], record[MODEL_SELECTION])
            if writes:
                self.files.append_record(record)
                if improved:
                    save_weights(self.trainable.model, self.files.best_weights, self.trainable.weights_metadata)
            for selection, so_far in selected.items():
                if selection.metric in record and selection.improves(record[selection.metric], so_far):
                    selected[selection] = (record["epoch"], record[selection.metric])
                    if writes:
                        save_weights(self.trainable.model, self.files.path / selection.weights,
                                     self.trainable.weights_metadata)
            self.callbacks.on_epoch_end(info, record)
            last = epoch + 1 == settings.epochs
            if writes and (last or (epoch + 1) % settings.checkpoint_every == 0):
                self._checkpoint(epoch + 1, optimizer, generator)
                self.callbacks.on_checkpoint(info, epoch + 1)
        self._check_ranks_agree()
        if writes:
            save_weights(self.trainable.model, self.files.weights, self.trainable.weights_metadata)
            self.files.drop_pins({})  # a stage with its final weights is never resumed
        accelerator.barrier()
        self.callbacks.on_stage_end(info)

    def _train_epoch(self, epoch: int, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                     info: StageInfo) -> dict[str, float]:
        started = time.perf_counter()
        settings, accelerator, trainable, data = self.settings, self.accelerator, self.trainable, self.data
        lr = learning_rate(settings.optimizer.lr, settings.schedule, epoch, settings.epochs)
        set_learning_rate(optimizer, lr)
        trainable.modules.train()
        sums: dict[str, Tensor] = {}
        step = reported = 0
        report_every = max(1, info.steps_per_epoch // 10)
        labeled = data.train.labeled.to(accelerator.device) if data.train.labeled is not None else None
        batches = training_batches(
            data.train, data.indices, settings.batch_size, drop_last=settings.drop_last, generator=generator,
            device=accelerator.device, augmentation=data.augmentation, loader=settings.loader,
            rank=accelerator.rank(), world_size=accelerator.world_size(),
        )
        for loaded in batches:
            accelerator.begin_step()
            batch = Batch(
                inputs=accelerator.inputs(loaded.inputs),
                labels=loaded.labels,
                index=loaded.index,
                epoch=epoch,
                epochs=settings.epochs,
                labeled=labeled[loaded.index] if labeled is not None else None,
                views={name: accelerator.inputs(view) for name, view in loaded.views.items()},
            )
            with accelerator.autocast():
                total, terms = trainable.step_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if trainable.after_backward is not None:
                trainable.after_backward()
            optimizer.step()
            for term, value in {"loss": total, **terms}.items():
                sums[term] = sums.get(term, 0) + value.detach()
            step += 1
            if step - reported >= report_every and step < info.steps_per_epoch:
                self.callbacks.on_steps(info, step - reported)
                reported = step
        if accelerator.several_processes():
            stacked = accelerator.sum_across_ranks(torch.stack([torch.as_tensor(v).float() for v in sums.values()]))
            sums = dict(zip(sums, stacked / accelerator.world_size()))
        means = {term: float(value) / max(step, 1) for term, value in sums.items()}
        # the terms first: a non-finite total is reported by the term that made it so
        for term in [*(t for t in means if t != "loss"), "loss"]:
            if term in means and not math.isfinite(means[term]):
                raise self._non_finite(epoch, f"loss term '{term}' is {means[term]}", "the term's weight")
        record = {"epoch": epoch + 1, "lr": lr, **{f"train/{t}": v for t, v in means.items()}}
        if trainable.evaluated is not None:
            metrics = evaluate(trainable.evaluated, data.held_out, accelerator, settings.eval_batch_size,
                               data.eval_transform, settings.loader)
            if not math.isfinite(metrics["nll"]):
                raise self._non_finite(
                    epoch, f"the network's outputs on the {data.held_out_name} split are not finite", "a loss weight"
                )
            record.update({f"{data.held_out_name}/{name}": value for name, value in metrics.items()})
        record["seconds"] = round(time.perf_counter() - started, 3)
        self.callbacks.on_steps(info, step - reported)
        return record

    def _non_finite(self, epoch: int, problem: str, weight: str) -> NonFiniteLossError:
        where = f"{self.run + ' ' if self.run else ''}{self.stage} stage, epoch {epoch + 1}"
        return NonFiniteLossError(
            f"{where}: {problem}; kept the checkpoint of the last good epoch in {self.files.path}; "
            f"lower the learning rate or {weight}"
        )

    def _steps_per_epoch(self) -> int:
        count, size = len(self.data.indices), self.settings.batch_size
        return count // size if self.settings.drop_last or self.accelerator.several_processes() else -(-count // size)

    def _check_ranks_agree(self) -> None:
        """With several processes, record whether every rank ended with the same weights and
        state (the network's, and that of the distillers trained with it)."""
        if not self.accelerator.several_processes():
            return
        identical = self.accelerator.identical_across_ranks(self.trainable.modules)
        if self.accelerator.is_main():
            self.files.write_distributed(self.accelerator.world_size(), identical)

    def _checkpoint(self, epochs_done: int, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        state = {
            "epochs_done": epochs_done,
            "trainable": self.trainable.modules.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        state["pinned"] = self.files.pin(self._best_files(), epochs_done)
        self.files.save_state(state)
        self.files.drop_pins(state["pinned"])

    def _best_files(self) -> list[str]:
        """The weights files kept for the best epochs so far: by validation top-1, and by each
        extra selection of the stage."""
        return [self.files.best_weights.name, *(selection.weights for selection in self.settings.selections)]

    def _restore(self, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> int:
        """Load the checkpoint if one exists; drop metrics of epochs after it. Returns the
        number of epochs already done."""
        self.files.create()
        main = self.accelerator.is_main()
        if main:
            self.files.remove_stale_temporaries()  # of a process killed while writing
        if not self.files.checkpoint.exists():
            if main:
                self.files.forget_records()
            return 0
        state = self.files.load_state()
        done = self._validated(state)
        try:
            self.trainable.modules.load_state_dict(state["trainable"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
            detail = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]  # torch's key list
            raise KdcoreError(
                f"{self.files.checkpoint}: does not fit the {self.stage} stage ({detail[:160]}); "
                f"{self.files.checkpoint_fix}"
            ) from None
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if main:
            self.files.keep_records(done)
            if "pinned" in state:  # checkpoints written before pins leave the best files as they are
                self.files.restore_pins(self._best_files(), state["pinned"])
        return done

    def _validated(self, state: dict[str, Any]) -> int:
        """The checkpoint's ``epochs_done``, insisting on what the loop reads from it: an epoch
        count within the stage's 1..epochs, weights and optimiser as mappings, RNG states as
        byte tensors."""
        where, fix = self.files.checkpoint, self.files.checkpoint_fix
        expected = {"epochs_done": int, "trainable": dict, "optimizer": dict, "generator": Tensor, "torch_rng": Tensor}
        for key, kind in expected.items():
            if key not in state:
                raise KdcoreError(f"{where}: not a kdcore checkpoint (no '{key}'); {fix}")
            value = state[key]
            if not isinstance(value, kind) or isinstance(value, bool) or (
                    kind is Tensor and value.dtype != torch.uint8):
                raise KdcoreError(f"{where}: '{key}' is a {type(value).__name__}, not what kdcore writes; {fix}")
        done = state["epochs_done"]
        if not 1 <= done <= self.settings.epochs:
            raise KdcoreError(f"{where}: epochs_done is {done}, outside the {self.stage} stage's "
                              f"1..{self.settings.epochs}; {fix}")
        pinned = state.get("pinned", {})
        if not isinstance(pinned, dict) or any(
                name not in self._best_files() or file != f"{name}{PIN_MARK}{done}" for name, file in pinned.items()):
            raise KdcoreError(f"{where}: 'pinned' names files other than the stage's best weights at epoch {done}; "
                              f"{fix}")
        return done
