"""Recipes: YAML files validated in two phases.

The kernel's models check the envelope (stages, optimiser, schedule, runtime); each
``{name, params}`` section is then checked by the params model of the plugin it names, found in
the registry passed through pydantic's validation context. Without a registry only the
envelope is checked.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kdcore.api import ArchitectureSpec, DatasetSpec, DistillerSpec, LoggerSpec, ObjectiveSpec, RuntimeOptionSpec
from kdcore.registry import Registry, unknown_name_message

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

# torch keeps seeds, counts and sizes in 32- or 64-bit integers: a bigger Python int fails deep
# inside it ("Overflow when unpacking long long") or asks for memory without end. Every integer
# the kernel hands on (seed, epochs, batch_size, eval_batch_size, milestones, threads, jobs,
# num_workers, checkpoint_every) and every integer in a plugin's params (layer sizes, sample
# counts, ...) is therefore at most MAX_INT in magnitude; floats of the envelope must be finite.
MAX_INT = 2**31 - 1
Count = Annotated[int, Field(ge=1, le=MAX_INT)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

_BOOLEAN_NOT_NUMBER = (
    "expected a number, got the boolean {value}; write {example} "
    "(YAML reads true/false/yes/no/on/off as booleans)"
)
_INTEGER_TOO_LARGE = "integer {value} is out of range; use a number between -{limit} and {limit}"


def _members(annotation: Any) -> list[Any]:
    """The types an annotation allows: Annotated stripped, unions flattened."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [member for argument in typing.get_args(annotation) for member in _members(argument)]
    return [annotation]


def _scalar_kinds(members: list[Any]) -> tuple[bool, bool, bool]:
    """(takes a number, takes a boolean, takes an int) for a field of these types."""
    number = boolean = integer = False
    for member in members:
        if member is bool:
            boolean = True
        elif member is Any or member is object:
            boolean = integer = True
        elif isinstance(member, type) and issubclass(member, (int, float)):
            number = True
            integer = integer or issubclass(member, int)
        elif typing.get_origin(member) is Literal:
            for value in typing.get_args(member):
                if isinstance(value, bool):
                    boolean = True
                elif isinstance(value, (int, float)):
                    number = True
                    integer = integer or isinstance(value, int)
    return number, boolean, integer


_SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Set)
_MAPPINGS = (dict, collections.abc.Mapping)


def number_errors(annotation: Any, value: Any, loc: tuple = (), into_models: bool = True,
                  bound_ints: bool = True) -> list[dict]:
    """Errors for booleans given where ``annotation`` wants a number (pydantic's lax mode reads
    true as 1), and, with ``bound_ints``, for integers beyond ``MAX_INT``: looking into lists,
    dicts and, with ``into_models``, nested models. Each error is a pydantic line error."""
    members = _members(annotation)
    if isinstance(value, bool):
        number, boolean, _ = _scalar_kinds(members)
        if number and not boolean:
            floats = any(isinstance(m, type) and issubclass(m, float) for m in members)
            context = {"value": "true" if value else "false",
                       "example": "a number such as 1 or 0.5" if floats else "an integer such as 1"}
            return [{"type": PydanticCustomError("bool_as_number", _BOOLEAN_NOT_NUMBER, context),
                     "loc": loc, "input": value}]
        return []
    if isinstance(value, int):
        if bound_ints and abs(value) > MAX_INT and _scalar_kinds(members)[2]:
            shown = str(value) if len(str(value)) <= 24 else f"{str(value)[:12]}...({len(str(value))} digits)"
            return [{"type": PydanticCustomError("int_out_of_range", _INTEGER_TOO_LARGE,
                                                 {"value": shown, "limit": MAX_INT}),
                     "loc": loc, "input": value}]
        return []
    if isinstance(value, (list, dict)):
        for member in members:
            origin = typing.get_origin(member) or member
            arguments = typing.get_args(member)
            if (isinstance(value, list) and isinstance(origin, type) and issubclass(origin, _SEQUENCES)
                    and not issubclass(origin, (str, bytes))):
                if origin is tuple and arguments and arguments[-1] is not Ellipsis:
                    items = list(zip(arguments, value))
                else:
                    items = [(arguments[0] if arguments else Any, item) for item in value]
                return [error for position, (item_type, item) in enumerate(items)
                        for error in number_errors(item_type, item, loc + (position,), into_models, bound_ints)]
            if isinstance(value, dict) and isinstance(member, type) and issubclass(member, BaseModel):
                if not into_models:
                    return []
                fields = {}
                for name, field in member.model_fields.items():
                    fields[name] = field.annotation
                    if field.alias:
                        fields[field.alias] = field.annotation
                return [error for key, item in value.items() if key in fields
                        for error in number_errors(fields[key], item, loc + (key,), into_models, bound_ints)]
            if isinstance(value, dict) and isinstance(origin, type) and issubclass(origin, _MAPPINGS):
                item_type = arguments[1] if len(arguments) == 2 else Any
                return [error for key, item in value.items()
                        for error in number_errors(item_type, item, loc + (key,), into_models, bound_ints)]
        if any(member is Any or member is object for member in members) and bound_ints:
            items = value.items() if isinstance(value, dict) else enumerate(value)
            return [error for key, item in items
                    for error in number_errors(Any, item, loc + (key,), into_models, bound_ints)]
    return []


def raise_number_errors(title: str, errors: list[dict]) -> None:
    if errors:
        raise ValidationError.from_exception_data(title, errors)


class Strict(BaseModel):
    """Unknown keys are errors, and so are booleans where a number is expected (pydantic's lax
    mode would read ``epochs: true`` as 1); YAML's ``1`` still fills a float field."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            raise_number_errors(cls.__name__, [
                error for name, field in cls.model_fields.items() if name in data
                for error in number_errors(field.annotation, data[name], (name,), into_models=False,
                                           bound_ints=False)
            ])
        return data


class ComponentRef(Strict):
    """``{name, params}``: a component chosen by name, with that component's own params."""

    kind: ClassVar[str]
    name: str
    params: Any = Field(default_factory=dict, validate_default=True)

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str, info: ValidationInfo) -> str:
        registry = _registry(info)
        if registry is not None and name not in registry.components[cls.kind]:
            raise PydanticCustomError(
                "unknown_component",
                "{message}",
                {"message": unknown_name_message(cls.kind, name, registry.names(cls.kind))},
            )
        return name

    @field_validator("params")
    @classmethod
    def _valid_params(cls, params: Any, info: ValidationInfo) -> Any:
        registry = _registry(info)
        if registry is None or "name" not in info.data:
            return params
        component = registry.get(cls.kind, info.data["name"])
        spec = component.spec
        if isinstance(params, spec.params):
            return params
        raise_number_errors(spec.params.__name__, number_errors(spec.params, params))
        try:
            return spec.params.model_validate({} if params is None else params)
        except ValidationError:
            raise
        except Exception as error:  # a plugin's validator that fails other than by ValueError
            provider = component.provider
            raise PydanticCustomError("plugin_params", "{message}", {"message": (
                f"the params validation of {cls.kind} '{component.name}' (plugin {provider.name} of "
                f"{provider.distribution} {provider.version}) raised {type(error).__name__}: {error}; "
                "report it to the plugin's authors")}) from None


def _registry(info: ValidationInfo) -> Registry | None:
    return (info.context or {}).get("registry")


class ObjectiveRef(ComponentRef):
    kind = ObjectiveSpec.kind


class NormalizationValues(Strict):
    """Per-channel statistics in [0, 1] units: an image ``x`` becomes ``(x - mean) / std``."""

    mean: Annotated[list[FiniteFloat], Field(min_length=1, max_length=16)]
    std: Annotated[list[Annotated[FiniteFloat, Field(gt=0)]], Field(min_length=1, max_length=16)]

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> NormalizationValues:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}: give one of each per channel")
        return self


class DatasetRef(ComponentRef):
    kind = DatasetSpec.kind
    # Left out of the resolved recipe (and so of stored teachers' identity) at its default.
    normalization: Literal["dataset", "teacher", "student"] | NormalizationValues = Field(
        default="dataset", exclude_if=lambda value: value == "dataset",
        description="per-channel normalisation of the images: the dataset's own; the one the teacher's or the "
        "student's weights expect (from their architecture's metadata); or {mean: [...], std: [...]}",
    )

    @field_validator("normalization")
    @classmethod
    def _dataset_normalizes(cls, normalization: Any, info: ValidationInfo) -> Any:
        registry = _registry(info)
        if normalization == "dataset" or registry is None or "name" not in info.data:
            return normalization
        component = registry.get(cls.kind, info.data["name"])
        if not component.spec.normalizes:
            raise ValueError(f"dataset '{component.name}' (plugin {component.provider.name}) applies no per-channel "
                             "normalisation that a recipe can replace; remove data.normalization")
        return normalization


class LoggerRef(ComponentRef):
    kind = LoggerSpec.kind


class ArchitectureRef(ComponentRef):
    kind = ArchitectureSpec.kind
    taps: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="extra feature taps by module path, added to the architecture's own",
    )


class DistillerRef(ComponentRef):
    kind = DistillerSpec.kind
    weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        default=None, validate_default=True,
        description="multiplies the distiller's terms; defaults to its published weight",
    )
    label: Annotated[str, Field(pattern=NAME_PATTERN)] | None = Field(
        default=None, description="name of the loss term in logs; defaults to the distiller name"
    )

    @field_validator("weight")
    @classmethod
    def _published_weight(cls, weight: float | None, info: ValidationInfo) -> float:
        """An unset weight is the distiller's published one (1 when no registry says)."""
        if weight is not None:
            return weight
        registry = _registry(info)
        if registry is None or "name" not in info.data:
            return 1.0
        return float(registry.get(cls.kind, info.data["name"]).spec.published_weight)

    @property
    def term(self) -> str:
        return self.label or self.name


class OptimizerConfig(Strict):
    name: Literal["sgd"] = "sgd"
    lr: Annotated[FiniteFloat, Field(gt=0)]
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[FiniteFloat, Field(ge=0)] = 0.0


class ScheduleConfig(Strict):
    """Learning-rate schedule, stepped once per epoch."""

    name: Literal["constant", "multistep", "cosine"] = "constant"
    milestones: list[Count] = Field(
        default_factory=list, description="multistep: epochs after which the lr is multiplied by gamma"
    )
    gamma: Annotated[FiniteFloat, Field(gt=0)] = 0.1
    min_lr: Annotated[FiniteFloat, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _milestones_fit_schedule(self) -> ScheduleConfig:
        if self.name == "multistep":
            if not self.milestones:
                raise ValueError("multistep needs milestones, e.g. [150, 180, 210]")
            if self.milestones != sorted(set(self.milestones)):
                raise ValueError("milestones must be strictly increasing")
        return self


class StageConfig(Strict):
    arch: ArchitectureRef
    epochs: Count
    batch_size: Count
    eval_batch_size: Count = 1024
    drop_last: bool = Field(default=False, description="skip the last incomplete batch of an epoch")
    optimizer: OptimizerConfig | None = Field(
        default=None, description="defaults to the recipe's top-level optimizer"
    )
    schedule: ScheduleConfig | None = Field(
        default=None, description="defaults to the recipe's top-level schedule"
    )


class CalibrationConfig(Strict):
    """Post-hoc calibration of the teacher on the validation split, after training (or
    loading): ``temperature`` fits one T > 0 minimising the validation NLL of softmax(z / T),
    and the student sees the logits z / T (a distiller's own temperature applies on top)."""

    name: Literal["temperature"]


class TeacherStage(StageConfig):
    """Train the teacher with an objective, or load it from a safetensors checkpoint."""

    objective: ObjectiveRef | None = None
    checkpoint: Path | None = None
    epochs: Count = 1
    batch_size: Count = 64
    # Left out of the resolved recipe (and so of the teacher's stored identity) at their
    # defaults, so that teachers stored before these options existed keep their keys.
    select: Literal["last", "best_val_top1", "best_val_brier"] = Field(
        default="last", exclude_if=lambda value: value == "last",
        description="which epoch's weights become the teacher: the last, or the best on the validation "
        "split by top-1 or by Brier score",
    )
    calibration: CalibrationConfig | None = Field(
        default=None, exclude_if=lambda value: value is None,
        description="{name: temperature}: fit one temperature on the validation split by NLL; the student "
        "sees the calibrated logits",
    )

    @model_validator(mode="after")
    def _select_needs_training(self) -> TeacherStage:
        if self.select != "last" and self.checkpoint is not None:
            raise ValueError(f"select: {self.select} chooses among the epochs of training; a loaded checkpoint "
                             "has none (leave select out, or train the teacher with an objective)")
        return self

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_file(cls, checkpoint: Path | None) -> Path | None:
        """Checked here, so that an error names the line (or --set) of the checkpoint. The loader
        has made a path written in a recipe file relative to that file."""
        if checkpoint is not None:
            if checkpoint.suffix != ".safetensors":
                raise ValueError(f"checkpoint {checkpoint} must be a .safetensors file")
            if not checkpoint.is_file():
                raise ValueError(f"checkpoint file {checkpoint} does not exist; give a path relative to the "
                                 "recipe file that states it (on the command line: to the working directory)")
        return checkpoint

    @model_validator(mode="after")
    def _objective_or_checkpoint(self) -> TeacherStage:
        if (self.objective is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of 'objective' (train) or 'checkpoint' (load)")
        return self


class StudentStage(StageConfig):
    ce_weight: Annotated[FiniteFloat, Field(ge=0)] = Field(
        default=1.0, description="weight of cross-entropy on the labels"
    )
    distillers: list[DistillerRef] = Field(default_factory=list)

    @model_validator(mode="after")
    def _learns_something(self) -> StudentStage:
        if self.ce_weight == 0 and not any(d.weight > 0 for d in self.distillers):
            raise ValueError("the student has nothing to learn from: give ce_weight > 0 or a distiller with weight > 0")
        return self

    @field_validator("distillers")
    @classmethod
    def _unique_terms(cls, distillers: list[DistillerRef]) -> list[DistillerRef]:
        terms = [d.term for d in distillers]
        repeated = sorted({t for t in terms if terms.count(t) > 1})
        if repeated:
            raise ValueError(f"distiller {repeated[0]!r} appears twice; give each a distinct 'label'")
        return distillers


class RuntimeConfig(Strict):
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")] = "auto"
    threads: Count | None = Field(
        default=None,
        description="torch CPU threads per run; default: the cores not already busy, shared by the runs training at once",
    )
    jobs: Count = Field(
        default=1, description="runs of a matrix trained at the same time, by that many worker processes"
    )
    num_workers: Annotated[int, Field(ge=0, le=MAX_INT)] = Field(
        default=0, description="DataLoader workers for datasets that are not in memory"
    )
    checkpoint_every: Count = Field(
        default=1, description="epochs between checkpoints"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="bf16 autocast for forward passes; auto: bf16 on a GPU, else fp32"
    )
    channels_last: bool = Field(
        default=True,
        description="channels-last memory format for image networks (faster convolutions on GPUs and CPUs)",
    )
    data_on_device: bool | None = Field(
        default=None,
        description="keep in-memory datasets on the training device (no copies per batch); default: on a GPU",
    )
    compile: bool | None = Field(
        default=None,
        description="torch.compile the networks' training forward and backward passes (tens of seconds "
        "of compilation per network and batch shape); default: on a GPU",
    )
    cuda_graphs: bool | None = Field(
        default=None,
        description="replay the compiled passes as CUDA graphs (torch.compile mode 'reduce-overhead'); "
        "needs compile and a GPU; default: on with compile on a GPU, off under torchrun",
    )
    deterministic: bool | None = Field(
        default=None,
        description="deterministic kernels, so a seed gives the same weights every time; off: cuDNN picks "
        "the fastest kernels (benchmark mode); default: on a CPU, off on a GPU",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="the runtime options that plugins add (written as runtime: {<option>: value})",
    )

    @model_validator(mode="before")
    @classmethod
    def _plugin_options(cls, data: Any, info: ValidationInfo) -> Any:
        """Move the options plugins register (:class:`kdcore.api.RuntimeOptionSpec`) from the
        section's keys into ``options``, validated by their types, with their defaults."""
        registry = _registry(info)
        if registry is None or not isinstance(data, dict):
            return data
        data = dict(data)
        given = dict(data.pop("options", None) or {})
        for key in [k for k in data if k in registry.components[RuntimeOptionSpec.kind]]:
            given[key] = data.pop(key)
        options = {}
        for name in registry.names(RuntimeOptionSpec.kind):
            spec = registry.get(RuntimeOptionSpec.kind, name).spec
            if name not in given:
                options[name] = spec.default
                continue
            try:
                value = given.pop(name)
                raise_number_errors(name, number_errors(spec.type, value))
                options[name] = TypeAdapter(spec.type).validate_python(value)
            except ValidationError as error:
                problem = error.errors()[0]["msg"]
                raise PydanticCustomError("runtime_option", "{message}",
                                          {"message": f"runtime.{name}: {problem} ({spec.summary})"}) from None
        if given:
            data.update(given)  # unknown keys: rejected as such, with the allowed ones listed
        data["options"] = options
        return data

    @model_validator(mode="after")
    def _graphs_need_compile(self) -> RuntimeConfig:
        if self.cuda_graphs and self.compile is False:
            raise ValueError("cuda_graphs replays compiled passes: set compile: true, or cuda_graphs: false")
        return self


class Recipe(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    seed: Annotated[int, Field(ge=0, le=MAX_INT)] = 0
    data: DatasetRef
    optimizer: OptimizerConfig | None = None
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    teacher: TeacherStage | None = Field(
        default=None, description="omit to train the student alone (baselines, teacher-free distillers)"
    )
    student: StudentStage | None = None
    runtime: RuntimeConfig = Field(default_factory=dict, validate_default=True)
    loggers: list[LoggerRef] = Field(default_factory=list, description="experiment trackers for every run")

    @model_validator(mode="after")
    def _normalization_source(self, info: ValidationInfo) -> Recipe:
        """``data.normalization: teacher`` (or ``student``) needs that stage, with an architecture
        that knows its weights' normalisation."""
        source = self.data.normalization
        if not isinstance(source, str) or source == "dataset":
            return self
        stage = getattr(self, source)
        if stage is None:
            raise ValueError(f"data.normalization: {source} takes the {source}'s normalisation, and the recipe has "
                             f"no {source} stage")
        registry = _registry(info)
        if registry is not None and registry.get(ArchitectureSpec.kind, stage.arch.name).spec.normalization is None:
            raise ValueError(f"data.normalization: {source}: architecture '{stage.arch.name}' does not say which "
                             "normalisation its weights expect; give {mean: [...], std: [...]} instead")
        return self

    @model_validator(mode="after")
    def _stages_inherit_optimisation(self) -> Recipe:
        if self.teacher is None and self.student is None:
            raise ValueError("a recipe needs a teacher stage, a student stage, or both")
        for stage_name in ("teacher", "student"):
            stage = getattr(self, stage_name)
            if stage is None:
                continue
            if stage.optimizer is None:
                if self.optimizer is None and not (
                    stage_name == "teacher" and self.teacher.checkpoint is not None
                ):
                    raise ValueError(
                        f"{stage_name}.optimizer is missing: set 'optimizer' at the top level "
                        "or in the stage"
                    )
                stage.optimizer = self.optimizer
            if stage.schedule is None:
                stage.schedule = self.schedule
        return self
