"""The epoch loop shared by the teacher and student stages: optimisation, per-epoch metrics,
atomic checkpoints, resume, and a stop on non-finite losses."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from kdcore import distributed
from kdcore.errors import NonFiniteLossError
from kdcore.nn import Batch, DatasetBundle, Split
from kdcore.progress import ProgressSink
from kdcore.recipe import RuntimeConfig, StageConfig
from kdcore.training.batches import training_batches
from kdcore.training.checkpoint import load_state, save_state, save_weights, write_json
from kdcore.training.evaluate import evaluate
from kdcore.training.performance import Performance
from kdcore.training.schedule import build_optimizer, learning_rate, set_learning_rate

StepLoss = Callable[[Batch], tuple[Tensor, dict[str, Tensor]]]
"""Maps a batch to (total loss to minimise, named terms to log)."""

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"
METRICS = "metrics.jsonl"
MODEL_SELECTION = "val/top1"


@dataclass
class Stage:
    """One training stage.

    ``trainable`` holds everything the optimiser updates (``trainable["model"]`` is the network
    whose weights the stage produces; other entries are, e.g., distillers' own parameters).
    ``evaluated`` is the classifier whose held-out metrics are logged each epoch (``None``: none).
    ``after_backward`` runs between the backward pass and the optimiser step (averaging the
    gradients that DistributedDataParallel does not). With several processes, only rank 0
    writes files; all of them read the checkpoint to resume.
    """

    name: str
    run: str
    directory: Path
    trainable: nn.ModuleDict
    step_loss: StepLoss
    config: StageConfig
    data: DatasetBundle
    train_indices: Tensor
    device: torch.device
    runtime: RuntimeConfig
    seed: int
    progress: ProgressSink
    evaluated: nn.Module | None
    performance: Performance
    after_backward: Callable[[], None] | None = None

    @property
    def model(self) -> nn.Module:
        return self.trainable["model"]

    def train(self) -> None:
        """Train to the last epoch, continuing from the stage's checkpoint if there is one."""
        optimizer = build_optimizer(self.trainable.parameters(), self.config.optimizer)
        generator = torch.Generator().manual_seed(self.seed)
        start_epoch = self._restore(optimizer, generator)
        best = best_validation(self.directory)
        steps_per_epoch = self._steps_per_epoch()
        self.progress.begin(
            self.run, self.name, steps_per_epoch * self.config.epochs, steps_per_epoch * start_epoch
        )
        writes = distributed.is_main()
        for epoch in range(start_epoch, self.config.epochs):
            record = self._train_epoch(epoch, optimizer, generator, steps_per_epoch)
            improved = MODEL_SELECTION in record and (best is None or record[MODEL_SELECTION] > best[1])
            if improved:
                best = (record["epoch"], record[MODEL_SELECTION])
            if writes:
                with (self.directory / METRICS).open("a") as log:
                    log.write(json.dumps(record) + "\n")
                if improved:
                    save_weights(self.model, self.directory / BEST_WEIGHTS)
            last = epoch + 1 == self.config.epochs
            if writes and (last or (epoch + 1) % self.runtime.checkpoint_every == 0):
                self._checkpoint(epoch + 1, optimizer, generator)
        self._check_ranks_agree()
        if writes:
            save_weights(self.model, self.directory / WEIGHTS)
        distributed.barrier()
        self.progress.end(self.run, self.name)

    def _check_ranks_agree(self) -> None:
        """With several processes, record whether every rank ended with the same weights and
        state (the network's, and that of the distillers trained with it)."""
        if not distributed.active():
            return
        identical = distributed.identical_across_ranks(self.trainable)
        if distributed.is_main():
            write_json(self.directory / "distributed.json",
                       {"world_size": distributed.world_size(), "identical_weights": identical})

    def _train_epoch(
        self, epoch: int, optimizer: torch.optim.Optimizer, generator: torch.Generator, steps: int
    ) -> dict[str, float]:
        started = time.perf_counter()
        lr = learning_rate(self.config.optimizer.lr, self.config.schedule, epoch, self.config.epochs)
        set_learning_rate(optimizer, lr)
        self.trainable.train()
        sums: dict[str, Tensor] = {}
        step = reported = 0
        report_every = max(1, steps // 10)
        labeled = self.data.train.labeled
        labeled = labeled.to(self.device) if labeled is not None else None
        for inputs, labels, index in self._batches(generator):
            self.performance.begin_step()
            batch = Batch(
                inputs=self.performance.inputs(inputs),
                labels=labels,
                index=index,
                epoch=epoch,
                epochs=self.config.epochs,
                labeled=labeled[index] if labeled is not None else None,
            )
            with self.performance.autocast():
                total, terms = self.step_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if self.after_backward is not None:
                self.after_backward()
            optimizer.step()
            for term, value in {"loss": total, **terms}.items():
                sums[term] = sums.get(term, 0) + value.detach()
            step += 1
            if step - reported >= report_every and step < steps:
                self.progress.advance(self.run, self.name, step - reported)
                reported = step
        if distributed.active():
            stacked = distributed.sum_across_ranks(torch.stack([torch.as_tensor(v).float() for v in sums.values()]))
            sums = dict(zip(sums, stacked / distributed.world_size()))
        means = {term: float(value) / max(step, 1) for term, value in sums.items()}
        for term, value in means.items():
            if not math.isfinite(value):
                raise self._non_finite(epoch, f"loss term '{term}' is {value}", "the term's weight")
        record = {"epoch": epoch + 1, "lr": lr, **{f"train/{t}": v for t, v in means.items()}}
        status = f"loss {means['loss']:.4f}"
        if self.evaluated is not None:
            held_out, split = self._held_out()
            metrics = evaluate(
                self.evaluated, split, self.device, self.config.eval_batch_size,
                self.data.eval_transform, self.runtime.num_workers, self.performance,
            )
            if not math.isfinite(metrics["nll"]):
                raise self._non_finite(
                    epoch, f"the network's outputs on the {held_out} split are not finite", "a loss weight"
                )
            record.update({f"{held_out}/{name}": value for name, value in metrics.items()})
            status += f"  {held_out} top1 {metrics['top1']:.2f}"
        record["seconds"] = round(time.perf_counter() - started, 3)
        self.progress.advance(self.run, self.name, step - reported, status)
        return record

    def _non_finite(self, epoch: int, problem: str, weight: str) -> NonFiniteLossError:
        where = f"{self.run + ' ' if self.run else ''}{self.name} stage, epoch {epoch + 1}"
        return NonFiniteLossError(
            f"{where}: {problem}; kept the checkpoint of the last good epoch in {self.directory}; "
            f"lower the learning rate or {weight}"
        )

    def _batches(self, generator: torch.Generator):
        return training_batches(
            self.data.train,
            self.train_indices,
            self.config.batch_size,
            self.config.drop_last,
            generator,
            self.device,
            self.data.train_transform,
            self.runtime.num_workers,
            distributed.rank(),
            distributed.world_size(),
        )

    def _steps_per_epoch(self) -> int:
        count, size = len(self.train_indices), self.config.batch_size
        return count // size if self.config.drop_last or distributed.active() else -(-count // size)

    def _held_out(self) -> tuple[str, Split]:
        """Per-epoch metrics use the validation split, or the test split when there is none."""
        return ("val", self.data.val) if self.data.val is not None else ("test", self.data.test)

    def _checkpoint(self, epochs_done: int, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
        state = {
            "epochs_done": epochs_done,
            "trainable": self.trainable.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        save_state(state, self.directory / CHECKPOINT)

    def _restore(self, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> int:
        """Load the checkpoint if one exists; drop metrics of epochs after it. Returns the
        number of epochs already done."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / CHECKPOINT
        metrics = self.directory / METRICS
        if not path.exists():
            if distributed.is_main():
                metrics.unlink(missing_ok=True)
            return 0
        state = load_state(path)
        self.trainable.load_state_dict(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        done = state["epochs_done"]
        if metrics.exists() and distributed.is_main():
            kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["epoch"] <= done]
            metrics.write_text("".join(line + "\n" for line in kept))
        return done


def best_validation(directory: Path) -> tuple[int, float] | None:
    """(epoch, validation top-1) of the best epoch logged so far, or ``None`` without a
    validation split. Model selection never looks at the test split."""
    metrics = directory / METRICS
    if not metrics.exists():
        return None
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    scored = [(r["epoch"], r[MODEL_SELECTION]) for r in records if MODEL_SELECTION in r]
    return max(scored, key=lambda item: (item[1], -item[0])) if scored else None
