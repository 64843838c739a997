"""Recipes: YAML files validated in two phases.

The kernel's models check the envelope (stages, optimiser, schedule, runtime); each
``{name, params}`` section is then checked by the params model of the plugin it names, found in
the registry passed through pydantic's validation context. Without a registry only the
envelope is checked.
"""

from __future__ import annotations

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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class DatasetRef(ComponentRef):
    kind = DatasetSpec.kind


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
    weight: Annotated[float, Field(ge=0)] | None = Field(
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
    lr: Annotated[float, Field(gt=0)]
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


class ScheduleConfig(Strict):
    """Learning-rate schedule, stepped once per epoch."""

    name: Literal["constant", "multistep", "cosine"] = "constant"
    milestones: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, description="multistep: epochs after which the lr is multiplied by gamma"
    )
    gamma: Annotated[float, Field(gt=0)] = 0.1
    min_lr: Annotated[float, Field(ge=0)] = 0.0

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
    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    eval_batch_size: Annotated[int, Field(ge=1)] = 1024
    drop_last: bool = Field(default=False, description="skip the last incomplete batch of an epoch")
    optimizer: OptimizerConfig | None = Field(
        default=None, description="defaults to the recipe's top-level optimizer"
    )
    schedule: ScheduleConfig | None = Field(
        default=None, description="defaults to the recipe's top-level schedule"
    )


class TeacherStage(StageConfig):
    """Train the teacher with an objective, or load it from a safetensors checkpoint."""

    objective: ObjectiveRef | None = None
    checkpoint: Path | None = None
    epochs: Annotated[int, Field(ge=1)] = 1
    batch_size: Annotated[int, Field(ge=1)] = 64

    @model_validator(mode="after")
    def _objective_or_checkpoint(self) -> TeacherStage:
        if (self.objective is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of 'objective' (train) or 'checkpoint' (load)")
        if self.checkpoint is not None:
            if self.checkpoint.suffix != ".safetensors":
                raise ValueError(f"checkpoint {self.checkpoint} must be a .safetensors file")
            if not self.checkpoint.is_file():
                raise ValueError(f"checkpoint file {self.checkpoint} does not exist")
        return self


class StudentStage(StageConfig):
    ce_weight: Annotated[float, Field(ge=0)] = Field(
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
    threads: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="torch CPU threads per run; default: cores / jobs"
    )
    jobs: Annotated[int, Field(ge=1)] = Field(
        default=1, description="runs of a matrix trained at the same time, each in its own process"
    )
    num_workers: Annotated[int, Field(ge=0)] = Field(
        default=0, description="DataLoader workers for datasets that are not in memory"
    )
    checkpoint_every: Annotated[int, Field(ge=1)] = Field(
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
                options[name] = TypeAdapter(spec.type).validate_python(given.pop(name))
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
    seed: Annotated[int, Field(ge=0)] = 0
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
