"""What the stages of one run share: the recipe, the registry, the data, the accelerator, the
run directory and the callbacks; and the one way a stage hands a trainable to the engine."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdcore.callbacks import Callback
from kdcore.config.schema import Recipe
from kdcore.distill.settings import loader_settings
from kdcore.engine.accelerator import Accelerator
from kdcore.engine.data import Augmentation
from kdcore.engine.evaluate import evaluate
from kdcore.engine.loop import Loop, LoopSettings, StageData, Trainable
from kdcore.errors import KdcoreError
from kdcore.nn import DatasetBundle, Split
from kdcore.registry import Registry
from kdcore.runs.layout import RunDirectory, StageFiles


@dataclass
class RunContext:
    recipe: Recipe
    registry: Registry
    data: DatasetBundle
    accelerator: Accelerator
    directory: RunDirectory
    label: str
    callbacks: Callback
    runtime: dict[str, Any]
    teacher_store: Path | None = None

    def train(self, stage: str, trainable: Trainable, settings: LoopSettings, files: StageFiles,
              indices: Tensor, views: Iterable[str] = ()) -> None:
        """Train a stage on the training samples ``indices`` (with the augmented ``views`` the
        stage's methods read) and per-epoch metrics on the validation split, else the test
        split."""
        data = self.data
        held_out_name, held_out = ("val", data.val) if data.val is not None else ("test", data.test)
        stage_data = StageData(
            train=data.train,
            indices=indices,
            augmentation=Augmentation(data.train_transform, self._views(views)),
            held_out=held_out,
            held_out_name=held_out_name,
            eval_transform=data.eval_transform,
        )
        Loop(stage, self.label, trainable, stage_data, settings, self.accelerator, files, self.callbacks).fit()

    def metrics(self, model: nn.Module, split: Split, batch_size: int) -> dict[str, float]:
        return evaluate(model, split, self.accelerator, batch_size, self.data.eval_transform,
                        loader_settings(self.recipe.runtime))

    def _views(self, names: Iterable[str]) -> dict[str, Any]:
        offered = self.data.views
        missing = [name for name in dict.fromkeys(names) if name not in offered]
        if missing:
            raise KdcoreError(
                f"dataset '{self.recipe.data.name}' offers no '{missing[0]}' view of its training batches "
                f"(it offers: {', '.join(offered) or 'none'}); pick a dataset that does, or another distiller"
            )
        return {name: offered[name] for name in dict.fromkeys(names)}
