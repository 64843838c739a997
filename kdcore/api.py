"""The public plugin API: what a plugin, built-in or third-party, registers with kdcore.

A plugin module exposes one or more hook implementations that *yield* spec objects::

    from kdcore.api import DistillerSpec, Params, hookimpl

    class MyParams(Params):
        temperature: float = 4.0

    @hookimpl
    def kdcore_distillers():
        yield DistillerSpec(name="my-kd", summary="My distiller", params=MyParams,
                            build="my_package.losses:build_my_kd")

This module must stay cheap to import (no torch): ``kdcore plugins`` lists every component
without loading torch. ``build`` may therefore be a ``"module:function"`` string that is
imported only when the component is built.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pluggy
from pydantic import BaseModel, ConfigDict

hookimpl = pluggy.HookimplMarker("kdcore")

_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

Normalization = tuple[tuple[float, ...], tuple[float, ...]]
"""``(mean, std)`` per channel, in [0, 1] units: an image ``x`` in [0, 1] becomes ``(x - mean) / std``."""


class Params(BaseModel):
    """Base for a component's parameters: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    """For components that take no parameters."""


@dataclass(frozen=True, kw_only=True)
class Spec:
    """What every registration declares. Each spec type states, once, its ``kind`` (the word
    recipes and ``kdcore plugins --kind`` use) and the ``hook`` that yields it: the hook
    specifications, the registry and the listing are derived from the spec types.

    Attributes:
        name: the selector used in recipes (lower case, digits, ``-``, ``_``, ``.``).
        summary: one line shown by ``kdcore plugins``.
    """

    kind: ClassVar[str]
    hook: ClassVar[str]
    name: str
    summary: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise ValueError(
                f"component name {self.name!r} must match {_NAME_PATTERN.pattern} "
                "(lower case, digits, '-', '_', '.')"
            )
        if not isinstance(self.summary, str) or not self.summary.strip() or "\n" in self.summary:
            raise ValueError(f"component {self.name!r}: summary must be one non-empty line")


@dataclass(frozen=True, kw_only=True)
class ComponentSpec(Spec):
    """A component built from its params: an objective, distiller, dataset, architecture or
    logger.

    Attributes:
        params: a :class:`Params` subclass whose defaults are the published values.
        build: ``build(params, ctx)``, or a ``"module:function"`` string naming it.
    """

    build: Callable[..., Any] | str
    params: type[BaseModel] = NoParams

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise ValueError(f"component {self.name!r}: params must be a pydantic model class")
        if self.params.model_config.get("extra") != "forbid":
            raise ValueError(
                f"component {self.name!r}: params model must forbid unknown keys "
                "(subclass kdcore.api.Params)"
            )
        if isinstance(self.build, str) and ":" not in self.build:
            raise ValueError(f"component {self.name!r}: build string must be 'module:function'")

    def builder(self) -> Callable[..., Any]:
        """The build callable, importing it first when it was given as a string."""
        return _resolve(self.build)


def _resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    """A callable, or the one a ``"module:function"`` string names (imported now)."""
    if callable(target):
        return target
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True, kw_only=True)
class ObjectiveSpec(ComponentSpec):
    """A teacher objective. ``build(params, ctx: ObjectiveContext)`` returns a callable
    ``(logits, labels) -> scalar loss`` (usually an ``nn.Module``), or a
    :class:`kdcore.nn.Objective`, which is called with the whole batch."""

    kind: ClassVar[str] = "objective"
    hook: ClassVar[str] = "kdcore_objectives"


@dataclass(frozen=True, kw_only=True)
class DistillerSpec(ComponentSpec):
    """A distillation method. ``build(params, ctx: DistillerContext)`` returns a
    :class:`kdcore.nn.Distiller`.

    ``published_weight`` is the weight of the method's loss in its authors' CIFAR-100 runs: a
    recipe's ``weight`` defaults to it, and ``kdcore plugins --params`` shows it.
    """

    kind: ClassVar[str] = "distiller"
    hook: ClassVar[str] = "kdcore_distillers"
    published_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.published_weight, bool) or not isinstance(self.published_weight, (int, float)) \
                or self.published_weight < 0:
            raise ValueError(f"distiller {self.name!r}: published_weight must be a number >= 0")


@dataclass(frozen=True, kw_only=True)
class DatasetSpec(ComponentSpec):
    """A dataset. ``build(params, ctx: DatasetContext)`` returns a
    :class:`kdcore.nn.DatasetBundle`.

    ``normalizes``: the dataset normalises its images per channel and uses
    ``DatasetContext.normalization`` in place of its own statistics when that is set, so that a
    recipe may ask for ``data.normalization`` (the teacher's weights', say).
    """

    kind: ClassVar[str] = "dataset"
    hook: ClassVar[str] = "kdcore_datasets"
    normalizes: bool = False


@dataclass(frozen=True, kw_only=True)
class LoggerSpec(ComponentSpec):
    """An experiment tracker. ``build(params, ctx: LoggerContext)`` returns a
    :class:`kdcore.callbacks.Callback`; recipes list loggers under ``loggers:``. Under torchrun
    only the first process builds them."""

    kind: ClassVar[str] = "logger"
    hook: ClassVar[str] = "kdcore_loggers"


@dataclass(frozen=True, kw_only=True)
class RuntimeOptionSpec(Spec):
    """A ``runtime:`` field that a plugin adds to every recipe: ``runtime: {<name>: value}``.
    Its value (or ``default``) reaches every component through its context's ``runtime``
    mapping.

    Attributes:
        type: the value's type, as a pydantic annotation (``int``, ``bool``, ``Literal[...]``,
            ``Annotated[int, Field(ge=1)]``).
        default: the value when a recipe does not set it.
    """

    kind: ClassVar[str] = "runtime-option"
    hook: ClassVar[str] = "kdcore_runtime_options"
    type: Any
    default: Any = None


TapPath = str | tuple[str, ...]
"""A module path (``"layer1"``, ``"layer2.1.relu"``); ``"fc:input"`` taps a module's input.
A tuple taps several modules, in order (e.g. the stage outputs)."""


@dataclass(frozen=True, kw_only=True)
class ArchitectureSpec(ComponentSpec):
    """A network. ``build(params, ctx: ArchitectureContext)`` returns an ``nn.Module`` that maps
    inputs to logits.

    ``taps`` names the features that distillers may ask for (``stem``, ``stages``,
    ``preact_stages``, ``pooled``...), by module path, so unmodified models work; ``logits``
    is always available. It is a mapping, or a callable of the params returning one.

    ``normalization``, for networks whose weights were trained elsewhere: a callable of the
    params (or a ``"module:function"`` string) returning the per-channel ``(mean, std)``, in
    [0, 1] units, that the weights expect, or ``None`` where they say nothing. A recipe's
    ``data.normalization: teacher`` (or ``student``) gives it to the dataset.
    """

    kind: ClassVar[str] = "architecture"
    hook: ClassVar[str] = "kdcore_architectures"
    taps: Mapping[str, TapPath] | Callable[[Any], Mapping[str, TapPath]] = field(
        default_factory=dict
    )
    normalization: Callable[[Any], Normalization | None] | str | None = None

    def tap_paths(self, params: BaseModel) -> dict[str, TapPath]:
        taps = self.taps(params) if callable(self.taps) else self.taps
        return dict(taps)

    def weights_normalization(self, params: BaseModel) -> Normalization | None:
        """What :attr:`normalization` says for these params (``None`` where it is unset)."""
        return None if self.normalization is None else _resolve(self.normalization)(params)


@dataclass(frozen=True)
class ObjectiveContext:
    """What a teacher objective may look at when it is built.

    Attributes:
        num_classes: number of classes.
        model: the network the objective trains (for regularisers of its weights).
        train_size: number of training samples (``batch.index`` runs from 0 to this - 1).
        epochs: number of epochs of the teacher stage (for ramp-ups).
    """

    num_classes: int
    model: Any = None
    train_size: int = 0
    epochs: int = 0
    runtime: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetContext:
    seed: int
    """The run's seed; data that must not change with the run seed use their own param."""
    device: str = "cpu"
    """Where training runs (e.g. ``"cuda:0"``); a dataset may decode or place data there."""
    runtime: Mapping[str, Any] = field(default_factory=dict)
    """The recipe's ``runtime:`` values, the kernel's and those plugins add
    (:class:`RuntimeOptionSpec`); the same mapping reaches every kind of component."""
    normalization: Normalization | None = None
    """``(mean, std)`` per channel, in [0, 1] units, that the recipe asks a dataset that
    ``normalizes`` to use in place of its own (``data.normalization``); ``None``: its own."""


@dataclass(frozen=True)
class ArchitectureContext:
    num_classes: int
    input_shape: tuple[int, ...]
    runtime: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggerContext:
    """What a logger may look at when it is built: the run it logs.

    Attributes:
        run: the run's label within its sweep (``objective=mse,seed=3``; ``""`` for a single run).
        directory: the run's directory (a logger may write its files below it).
        recipe: the resolved recipe, as plain data (to log as hyperparameters).
    """

    run: str
    directory: str
    recipe: Mapping[str, Any]
    runtime: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DistillerContext:
    """What a distiller may look at when it is built.

    Attributes:
        student, teacher: the two networks (the teacher is frozen; ``None`` in a recipe without
            a teacher stage, where only distillers without teacher taps may be used).
        student_shapes, teacher_shapes: per tap, the shape (or list of shapes) of the feature
            for one sample, probed with a real batch before training.
        num_classes: number of classes.
        train_size: number of training samples (sample indices run from 0 to this - 1).
        train_labels: labels of the training set, a tensor indexed by sample index; ``-1`` where
            the label may not be used (the unlabelled samples of semi-supervised data).
        epochs: number of epochs of the student stage (for warm-ups).
        teacher_features: ``teacher_features(inputs)`` runs the frozen teacher without gradient
            and returns its logits and every tap it declares (for preparation stages).
        train_true_probs: p*(y|x) of the training samples where the dataset knows it, else
            ``None`` (synthetic data).
    """

    student: Any
    teacher: Any
    student_shapes: Mapping[str, Any]
    teacher_shapes: Mapping[str, Any]
    num_classes: int
    train_size: int
    train_labels: Any
    epochs: int
    teacher_features: Callable[[Any], Mapping[str, Any]] | None = None
    train_true_probs: Any = None
    runtime: Mapping[str, Any] = field(default_factory=dict)


SPEC_TYPES: dict[str, type[Spec]] = {
    spec_type.kind: spec_type
    for spec_type in (ObjectiveSpec, DistillerSpec, DatasetSpec, ArchitectureSpec, LoggerSpec, RuntimeOptionSpec)
}
"""Every kind of registration, with the spec type its hook yields."""
