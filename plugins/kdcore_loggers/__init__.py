"""Built-in experiment trackers: TensorBoard, MLflow and Weights & Biases, each a callback
(``kdcore.callbacks.Callback``) that a recipe lists under ``loggers:``::

    loggers:
      - {name: tensorboard}
      - {name: mlflow, params: {experiment: my-study}}
      - {name: wandb, params: {project: my-study, mode: offline}}

Every logger records, per epoch of every stage, each ``metrics.jsonl`` value under
``<stage>/<key>`` (``teacher/train/loss``, ``student/lr``, ``student/val/top1``,
``student/seconds``) at step = the stage's epoch (from 1); the resolved recipe, flattened
(``teacher.arch.name``), as hyperparameters at run start; and the final ``summary.json``,
flattened under ``summary/`` (``summary/student/test/top1``), at run end.

Each tracker is an optional extra (``pip install 'kdcore[tensorboard]'``, ``[mlflow]``,
``[wandb]``). This module imports neither torch nor any tracker: ``kdcore plugins`` lists the
loggers without them, and a missing package is reported when a recipe's logger is built.
"""

from typing import Literal

from pydantic import Field

from kdcore.api import LoggerSpec, Params, hookimpl


class TensorBoardParams(Params):
    log_dir: str | None = Field(
        default=None, description="where the event files go; default <run dir>/tensorboard"
    )
    flush_secs: int = Field(default=120, ge=1, description="seconds between flushes to disk")


class MLflowParams(Params):
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else a local file store "
        "file:<run dir>/mlruns (the sweep's folder, shared by its variants)",
    )
    experiment: str | None = Field(default=None, description="experiment name; default the recipe's name")
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags of the MLflow run")


class WandbParams(Params):
    project: str | None = Field(default=None, description="W&B project; default the recipe's name")
    entity: str | None = Field(default=None, description="W&B entity (team or user); default yours")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        default=None,
        description="default $WANDB_MODE, else online when an API key is configured "
        "($WANDB_API_KEY or ~/.netrc), else offline (sync later with `wandb sync`)",
    )
    dir: str | None = Field(default=None, description="where W&B writes its files; default the run's directory")
    group: str | None = Field(
        default=None, description="W&B group; default the sweep's folder name for the runs of a matrix"
    )
    tags: list[str] = Field(default_factory=list, description="W&B tags of the run")


@hookimpl
def kdcore_loggers():
    yield LoggerSpec(
        name="tensorboard",
        summary="TensorBoard event files (torch.utils.tensorboard); needs kdcore[tensorboard]",
        params=TensorBoardParams,
        build="kdcore_loggers.tensorboard:build",
    )
    yield LoggerSpec(
        name="mlflow",
        summary="MLflow run in a local store or a tracking server; needs kdcore[mlflow]",
        params=MLflowParams,
        build="kdcore_loggers.mlflow:build",
    )
    yield LoggerSpec(
        name="wandb",
        summary="Weights & Biases run, online or offline; needs kdcore[wandb]",
        params=WandbParams,
        build="kdcore_loggers.wandb:build",
    )
