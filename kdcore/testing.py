"""The test kit for plugin authors, shipped with kdcore and loaded by pytest as a plugin (entry
point ``pytest11``), so a third-party package's tests use it as kdcore's own tests do.

Builders (plain functions): :func:`make_distiller_context`, :func:`make_batch`,
:func:`build_component`; checks: :func:`check_gradients` (gradients reach the student and the
distiller's own parameters, never the teacher), :func:`train_losses` and :func:`assert_trains`
(a short optimisation makes the loss fall); a fake installed distribution for testing plugin
discovery (:func:`make_distribution`); and :func:`run_recipe`, which trains a recipe through
the real trainer in this process.

Fixtures: ``kdcore_registry`` (the installed plugins, loaded once per session) and
``fake_site`` (a folder on ``sys.path`` where :func:`make_distribution` lays out packages).

torch is imported by the functions that need it, so loading this plugin costs a test session
nothing.
"""

from __future__ import annotations

import functools
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from kdcore.api import DistillerContext, Spec
from kdcore.registry import PluginInfo, Registry, load_registry

if TYPE_CHECKING:
    from torch import Tensor, nn

    from kdcore.nn import Batch, Distiller, Features

TEST_PROVIDER = PluginInfo("tests", "kdcore-testing", "0")
"""The provider of components a test adds with :func:`run_recipe`'s ``components``."""


def make_distiller_context(
    student_shapes: Mapping[str, object],
    teacher_shapes: Mapping[str, object],
    *,
    num_classes: int = 10,
    train_size: int = 64,
    train_labels: Tensor | None = None,
    epochs: int = 240,
) -> DistillerContext:
    """A real context around two placeholder networks, with per-sample feature shapes given by
    hand (as the kernel probes them: ``(C, H, W)`` maps, ``(D,)`` vectors, lists for
    ``stages``)."""
    import torch
    from torch import nn

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


def build_component(kind: str, name: str, ctx: Any, registry: Registry | None = None, **params: Any) -> Any:
    """Build an installed component as the kernel does: its params validated by its own model
    (defaults filled in), then its ``build(params, ctx)``."""
    spec = (registry or _installed()).get(kind, name).spec
    return spec.builder()(spec.params(**params), ctx)


@functools.cache
def _installed() -> Registry:
    return load_registry()


def make_batch(
    size: int,
    *,
    num_classes: int = 10,
    epoch: int = 100,
    epochs: int = 240,
    inputs: Tensor | None = None,
    labels: Tensor | None = None,
    index: Tensor | None = None,
    labeled: Tensor | None = None,
    views: dict[str, Tensor] | None = None,
) -> Batch:
    """A training batch as distillers see it; labels cycle through the classes by default."""
    import torch

    from kdcore.nn import Batch

    return Batch(
        inputs=torch.zeros(size, 1) if inputs is None else inputs,
        labels=torch.arange(size) % num_classes if labels is None else labels,
        index=torch.arange(size) if index is None else index,
        epoch=epoch,
        epochs=epochs,
        labeled=labeled,
        views=views or {},
    )


def total(terms: Mapping[str, Tensor]) -> Tensor:
    """The sum the kernel weights: all loss terms added."""
    return sum(terms.values())


def _leaves(features: Features) -> list[Tensor]:
    return [t for value in features.values() for t in (value if isinstance(value, list) else [value])]


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
    import torch

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
        if parameter.requires_grad:
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
    import torch

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
    import math

    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] <= factor * losses[0], (losses[0], losses[-1])


def make_distribution(site: Path, name: str, version: str, modules: dict[str, str],
                      entry_points: dict[str, str], group: str = "kdcore") -> None:
    """A fake installed distribution: importable modules (dotted name → source) plus a
    dist-info folder whose entry_points.txt registers them in ``group``, as pip lays it out."""
    for module, source in modules.items():
        path = site / Path(*module.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{lines}\n")


def run_recipe(recipe: Mapping[str, Any] | Path, directory: Path, registry: Registry | None = None,
               components: Iterable[Spec] = (), callbacks: Any = None) -> dict[str, Any]:
    """Train a recipe (a dict, or a file) with a single variant in ``directory``, through the
    real trainer in this process, and return its summary. ``components`` are specs a test adds
    beside the installed plugins (a tiny dataset, an ad-hoc distiller)."""
    import yaml

    from kdcore.config.loader import load_variants
    from kdcore.distill.run import Run

    registry = registry or load_registry()
    for spec in components:
        registry = registry.with_component(spec.kind, spec, TEST_PROVIDER)
    if not isinstance(recipe, Path):
        directory.mkdir(parents=True, exist_ok=True)
        path = directory.parent / f"{directory.name}.recipe.yaml"
        path.write_text(yaml.safe_dump(dict(recipe), sort_keys=False))
        recipe = path
    _, variants = load_variants(recipe, [], registry)
    if len(variants) != 1:
        raise ValueError(f"run_recipe trains one run; {recipe} has {len(variants)} (drop its matrix)")
    return Run(variants[0].recipe, directory, registry, callbacks=callbacks).execute()


@pytest.fixture(scope="session")
def kdcore_registry() -> Registry:
    """The installed plugins, loaded once per test session."""
    return load_registry()


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder on ``sys.path`` for :func:`make_distribution`; modules imported from it are
    forgotten afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    before = set(sys.modules)
    yield site
    for module in set(sys.modules) - before:
        module_file = getattr(sys.modules[module], "__file__", None) or ""
        if module_file.startswith(str(site)):
            del sys.modules[module]
