"""Built-in teacher objectives: cross-entropy, the paper's MSE to the one-hot label, and two
published student-oriented teacher objectives, SoTeacher and MCMI (details and sources in
``soteacher.py`` and ``mcmi.py``)."""

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


class SoTeacherParams(Params):
    """Defaults: the authors' SoTeacher settings (shwinshaker/SoTeacher ``run_teacher.sh``)."""

    lipschitz_weight: float = Field(
        default=1e-5, ge=0,
        description="λ of the Lipschitz term Σ_layers bound (conv Σ|W|, linear max column ℓ1, "
        "BN max |γ|/σ); 0 turns it off",
    )
    consistency_weight: float = Field(
        default=1.0, ge=0,
        description="λ of ‖softmax(z) − temporal ensemble of the sample's past predictions‖²; 0 turns it off",
    )
    consistency_schedule: Literal["linear", "constant"] = Field(
        default="linear",
        description="linear: weight λ·(epoch+1)/epochs (the authors' ramp); constant: λ. 0 in epoch 0",
    )


class MCMIParams(Params):
    """Defaults: the authors' MCMI settings (iclr2024mcmi/ICLRMCMI CIFAR-100 scripts)."""

    cmi_weight: float = Field(
        default=0.25, ge=0,
        description="λ in CE − λ·CMI, CMI = mean KL(softmax(z) ‖ centroid of the label's class)",
    )
    start_epoch: int = Field(
        default=1, ge=1,
        description="first epoch (0-based) with the CMI term; its centroids come from the epoch before",
    )
    refresh_centroids: bool = Field(
        default=True,
        description="recompute the class centroids from every epoch's predictions (false: keep the "
        "first ones, as the authors' fine-tuning does)",
    )


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
    yield ObjectiveSpec(
        name="soteacher",
        summary="SoTeacher (ICLR 2024): CE + Lipschitz and consistency (temporal ensembling) regularisers",
        params=SoTeacherParams,
        build="kdcore_objectives.soteacher:SoTeacher",
    )
    yield ObjectiveSpec(
        name="mcmi",
        summary="MCMI (ICLR 2024): CE minus λ times the conditional mutual information I(X; Ŷ | Y)",
        params=MCMIParams,
        build="kdcore_objectives.mcmi:MCMI",
    )
