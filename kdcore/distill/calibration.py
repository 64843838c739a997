"""Temperature scaling of a trained teacher (Guo et al., ICML 2017, *On Calibration of Modern
Neural Networks*): one temperature T > 0 fitted on the validation split by negative
log-likelihood, after which the network's logits z are replaced by z / T everywhere the
network is called (evaluation, the student's targets, distillers' preparation stages), so that
every distiller sees the calibrated probabilities; its feature taps are unchanged."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from kdcore.engine.accelerator import Accelerator
from kdcore.engine.data import LoaderSettings, evaluation_batches
from kdcore.nn import Split

TEMPERATURE_RANGE = (1e-2, 1e2)
"""The temperatures searched; a fit at an end means the NLL still falls beyond it."""
BISECTION_STEPS = 100


def nll_at(logits: Tensor, labels: Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature), in float64."""
    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The T in :data:`TEMPERATURE_RANGE` minimising the mean NLL of softmax(logits / T).

    With b = 1 / T the NLL, mean(logsumexp(b z) - b z_y), is convex in b, and its derivative
    mean(E_softmax(b z)[z] - z_y) is nondecreasing; the root of the derivative is found by
    bisection on log b (exact to float64 after :data:`BISECTION_STEPS` halvings)."""
    z = logits.detach().double()
    chosen = z.gather(1, labels.long()[:, None]).squeeze(1)

    def slope(log_b: float) -> float:
        probs = torch.softmax(math.exp(log_b) * z, dim=1)
        return float(((probs * z).sum(dim=1) - chosen).mean())

    low, high = -math.log(TEMPERATURE_RANGE[1]), -math.log(TEMPERATURE_RANGE[0])  # log b
    if slope(low) >= 0:
        return TEMPERATURE_RANGE[1]
    if slope(high) <= 0:
        return TEMPERATURE_RANGE[0]
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if slope(middle) < 0:
            low = middle
        else:
            high = middle
    return math.exp(-(low + high) / 2)


@torch.no_grad()
def split_logits(model: nn.Module, split: Split, accelerator: Accelerator, batch_size: int,
                 transform: Callable[[Any], Tensor] | None = None,
                 loader: LoaderSettings = LoaderSettings()) -> tuple[Tensor, Tensor]:
    """The model's float logits and the labels of the whole split, in eval mode (every process
    computes all of them, so that every process fits the same temperature)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for inputs, batch_labels, _ in evaluation_batches(split, batch_size, accelerator.device, loader):
        if transform is not None and split.batch_transformed:
            inputs = transform(inputs)
        with accelerator.autocast():
            logits.append(model(accelerator.inputs(inputs)).float())
        labels.append(batch_labels)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


class TemperatureScaling:
    """A forward hook that divides a network's output (its logits) by ``temperature``."""

    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        return output / self.temperature


def scale_logits(model: nn.Module, temperature: float) -> RemovableHandle:
    """Make every call of ``model`` return its logits divided by ``temperature``. The hook runs
    before any other forward hook of the model, so feature taps of the model itself record the
    calibrated logits too; taps of its submodules are unchanged."""
    return model.register_forward_hook(TemperatureScaling(temperature), prepend=True)


def calibrate_temperature(model: nn.Module, split: Split, accelerator: Accelerator, batch_size: int,
                          transform: Callable[[Any], Tensor] | None = None,
                          loader: LoaderSettings = LoaderSettings()) -> dict[str, Any]:
    """Fit T on ``split`` and scale the model's logits by it; returns what was fitted."""
    logits, labels = split_logits(model, split, accelerator, batch_size, transform, loader)
    labels = labels.to(logits.device)
    temperature = fit_temperature(logits, labels)
    scale_logits(model, temperature)
    return {
        "name": "temperature",
        "temperature": temperature,
        "val_nll_before": nll_at(logits, labels, 1.0),
        "val_nll_after": nll_at(logits, labels, temperature),
    }
