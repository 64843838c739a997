"""The recipe translated into the engine's plain settings, and the seed of each purpose."""

from __future__ import annotations

from typing import Any

from kdcore.config.schema import OptimizerConfig, RuntimeConfig, ScheduleConfig, StageConfig
from kdcore.engine.accelerator import AcceleratorSettings
from kdcore.engine.data import LoaderSettings
from kdcore.engine.loop import LoopSettings
from kdcore.engine.schedule import OptimizerSettings, ScheduleSettings

SEED_PURPOSES = ("teacher-init", "teacher-data", "student-init", "student-data")


def stage_seed(seed: int, purpose: str) -> int:
    """Independent seeds per purpose (one of :data:`SEED_PURPOSES`), so that loading a teacher
    instead of training it does not change the student's initialisation or batch order."""
    return seed * len(SEED_PURPOSES) + SEED_PURPOSES.index(purpose)


def accelerator_settings(runtime: RuntimeConfig) -> AcceleratorSettings:
    return AcceleratorSettings(
        device=runtime.device,
        precision=runtime.precision,
        channels_last=runtime.channels_last,
        data_on_device=runtime.data_on_device,
        compile=runtime.compile,
        cuda_graphs=runtime.cuda_graphs,
        deterministic=runtime.deterministic,
    )


def optimizer_settings(config: OptimizerConfig) -> OptimizerSettings:
    return OptimizerSettings(lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                             weight_decay=config.weight_decay)


def schedule_settings(config: ScheduleConfig) -> ScheduleSettings:
    return ScheduleSettings(name=config.name, milestones=tuple(config.milestones), gamma=config.gamma,
                            min_lr=config.min_lr)


def loader_settings(runtime: RuntimeConfig) -> LoaderSettings:
    return LoaderSettings(num_workers=runtime.num_workers)


def loop_settings(stage: StageConfig, runtime: RuntimeConfig, seed: int) -> LoopSettings:
    """A teacher or student stage's settings; ``seed`` is the stage's data seed."""
    return LoopSettings(
        epochs=stage.epochs,
        batch_size=stage.batch_size,
        optimizer=optimizer_settings(stage.optimizer),
        schedule=schedule_settings(stage.schedule),
        drop_last=stage.drop_last,
        eval_batch_size=stage.eval_batch_size,
        checkpoint_every=runtime.checkpoint_every,
        seed=seed,
        loader=loader_settings(runtime),
    )


def runtime_values(runtime: RuntimeConfig) -> dict[str, Any]:
    """Every ``runtime:`` value, the kernel's and the plugins' options, for components' contexts."""
    values = runtime.model_dump(mode="json", exclude={"options"})
    return {**values, **runtime.options}
