"""Built-in teacher objectives: cross-entropy and the paper's MSE to the one-hot label."""

from typing import Literal

from pydantic import Field

from kdcore.api import ObjectiveSpec, Params, hookimpl


class CrossEntropyParams(Params):
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="label smoothing epsilon")


class MSEParams(Params):
    reduction: Literal["sum", "mean"] = Field(
        default="sum",
        description="sum: squared distance summed over classes (the theorem's quantity); "
        "mean: also averaged over classes (the paper's toy code, nn.MSELoss default)",
    )
    scale: float = Field(default=1.0, gt=0, description="multiplier of the loss")


@hookimpl
def kdcore_objectives():
    yield ObjectiveSpec(
        name="ce",
        summary="Cross-entropy on the labels (optionally label-smoothed)",
        params=CrossEntropyParams,
        build="kdcore_objectives.losses:CrossEntropy",
    )
    yield ObjectiveSpec(
        name="mse",
        summary="Squared distance between softmax(logits) and the one-hot label (ECCV 2024)",
        params=MSEParams,
        build="kdcore_objectives.losses:SoftmaxMSE",
    )
