"""Networks as distillation sees them: the module and the paths of its feature taps, built once
from a recipe's ``arch``, and the shapes of those features, probed with a real batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdcore.api import ArchitectureContext, TapPath
from kdcore.config.schema import ArchitectureRef
from kdcore.distill.components import build_component
from kdcore.distill.taps import FeatureRecorder, feature_shapes
from kdcore.engine.accelerator import Accelerator
from kdcore.engine.data import evaluation_batches
from kdcore.nn import DatasetBundle
from kdcore.registry import Registry


@dataclass
class Network:
    """A built network and its taps (the architecture's own, plus those the recipe adds)."""

    module: nn.Module
    taps: dict[str, TapPath]

    def recorder(self, wanted: list[str] | dict[str, TapPath], forward=None) -> FeatureRecorder:
        """Records the ``wanted`` taps (all, given the taps mapping) on calls of ``forward``
        (the module itself by default). Remove it when done."""
        return FeatureRecorder(self.module, self.taps, wanted, forward=forward)

    @torch.no_grad()
    def feature_shapes(self, inputs: Tensor) -> dict[str, Any]:
        """Shapes of every declared tap for one sample, from a forward pass in eval mode."""
        recorder = self.recorder(self.taps)
        was_training = self.module.training
        self.module.eval()
        try:
            return feature_shapes(recorder(inputs))
        finally:
            self.module.train(was_training)
            recorder.remove()


def build_network(registry: Registry, ref: ArchitectureRef, data: DatasetBundle, accelerator: Accelerator,
                  runtime: dict[str, Any]) -> Network:
    """Build the architecture (initialised from the global RNG) on the accelerator's device."""
    spec = registry.get("architecture", ref.name).spec
    context = ArchitectureContext(data.num_classes, data.input_shape, runtime=runtime)
    module = accelerator.network(build_component(registry, ref, context))
    extra = {tap: path if isinstance(path, str) else tuple(path) for tap, path in ref.taps.items()}
    return Network(module, {**spec.tap_paths(ref.params), **extra})


def probe_inputs(data: DatasetBundle, accelerator: Accelerator, count: int = 2) -> Tensor:
    """The first ``count`` training samples as the networks see them in evaluation."""
    split = data.train
    inputs, _, _ = next(evaluation_batches(split, count, accelerator.device))
    if data.eval_transform is not None and split.batch_transformed:
        inputs = data.eval_transform(inputs)
    return accelerator.inputs(inputs)
