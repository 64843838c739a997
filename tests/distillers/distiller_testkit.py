"""Shared helpers of the distiller tests: contexts, batches, gradient checks, short training."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

import kdcore_distillers
from kdcore.api import DistillerContext
from kdcore.nn import Batch, Distiller, Features


def make_context(
    student_shapes: Mapping[str, object],
    teacher_shapes: Mapping[str, object],
    *,
    num_classes: int = 10,
    train_size: int = 64,
    train_labels: Tensor | None = None,
    epochs: int = 240,
) -> DistillerContext:
    """A real context around two placeholder networks, with the shapes given by hand."""
    if train_labels is None:
        train_labels = torch.arange(train_size) % num_classes
    return DistillerContext(
        student=nn.Linear(2, num_classes),
        teacher=nn.Linear(2, num_classes),
        student_shapes=dict(student_shapes),
        teacher_shapes=dict(teacher_shapes),
        num_classes=num_classes,
        train_size=train_size,
        train_labels=train_labels,
        epochs=epochs,
    )


def build(name: str, ctx: DistillerContext, **params: object) -> Distiller:
    """Build a distiller through its registered spec, as the kernel does."""
    spec = {s.name: s for s in kdcore_distillers.kdcore_distillers()}[name]
    return spec.builder()(spec.params(**params), ctx)


def make_batch(
    size: int,
    *,
    num_classes: int = 10,
    epoch: int = 100,
    epochs: int = 240,
    labels: Tensor | None = None,
    index: Tensor | None = None,
    labeled: Tensor | None = None,
) -> Batch:
    return Batch(
        inputs=torch.zeros(size, 1),
        labels=torch.arange(size) % num_classes if labels is None else labels,
        index=torch.arange(size) if index is None else index,
        epoch=epoch,
        epochs=epochs,
        labeled=labeled,
    )


def total(terms: Mapping[str, Tensor]) -> Tensor:
    """The sum the kernel weights: all loss terms added."""
    return sum(terms.values())


def _leaves(features: Features) -> list[Tensor]:
    return [
        t for value in features.values() for t in (value if isinstance(value, list) else [value])
    ]


def check_gradients(
    distiller: Distiller,
    student: Features,
    teacher: Features,
    batch: Batch,
    read: list[Tensor] | None = None,
) -> None:
    """The loss sends gradients to the student features it reads (``read``, default all) and to
    every trainable parameter of the distiller, and none to the teacher's features (which here
    require gradients)."""
    for t in _leaves(teacher):
        t.requires_grad_(True)
    for t in _leaves(student):
        t.requires_grad_(True)
    loss = total(distiller(student, teacher, batch))
    assert torch.isfinite(loss)
    loss.backward()
    for t in _leaves(teacher):
        assert t.grad is None, "teacher features received a gradient"
    for t in _leaves(student) if read is None else read:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    for name, parameter in distiller.named_parameters():
        assert parameter.grad is not None, f"distiller parameter {name} got no gradient"
        assert torch.isfinite(parameter.grad).all()


def train_losses(
    distiller: Distiller,
    student_net: nn.Module,
    student_features: Callable[[nn.Module], Features],
    teacher: Features,
    batch: Batch,
    *,
    steps: int = 30,
    lr: float = 0.1,
) -> list[float]:
    """Losses of ``steps`` SGD steps (momentum 0.9) of the student network and the distiller's
    own parameters against fixed teacher features."""
    parameters = list(student_net.parameters()) + list(distiller.parameters())
    optimiser = torch.optim.SGD(parameters, lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = total(distiller(student_features(student_net), teacher, batch))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def assert_trains(losses: list[float], factor: float) -> None:
    """All losses are finite and the last is at most ``factor`` times the first."""
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] <= factor * losses[0], (losses[0], losses[-1])


def pooled_student_losses(name: str, *, lr: float, **params: object) -> list[float]:
    """:func:`train_losses` for a method on the ``pooled`` feature: a linear student (10 → 6,
    ReLU) against a fixed random linear teacher (10 → 12, ReLU) on 16 inputs."""
    torch.manual_seed(2)
    inputs = torch.randn(16, 10)
    with torch.no_grad():
        teacher = {"pooled": torch.relu(nn.Linear(10, 12)(inputs))}
    distiller = build(name, make_context({"pooled": (6,)}, {"pooled": (12,)}), **params)
    return train_losses(distiller, nn.Linear(10, 6), lambda net: {"pooled": torch.relu(net(inputs))},
                        teacher, make_batch(16), lr=lr)
