"""Built-in distillation methods. Registration only: implementations import torch lazily.

Defaults are the published CIFAR-100 values (RepDistiller; mdistiller for DKD and ReviewKD;
HSAKD's own code for HSAKD; the authors' code of the newer methods); each spec's
``published_weight`` is the method's published loss weight, a recipe's default ``weight``.
Per-pair values and the published cross-entropy weights are in
:mod:`kdcore_distillers.published`.
"""

from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from kdcore.api import DistillerSpec, NoParams, Params, hookimpl

STANDARDIZED_TEMPERATURE = 2.0
"""The logit-standardisation paper's base temperature (its ``--base-temp`` default), the
default T of ``kd`` and ``dkd`` when ``standardize`` is set and no temperature is given."""


class _LogitStandardization(Params):
    """Params with a ``standardize`` switch: when it is set and ``temperature`` is not given,
    the temperature defaults to :data:`STANDARDIZED_TEMPERATURE` instead of the field's default
    (the authors' ``train.py`` replaces the method's T by ``--base-temp`` with
    ``--logit-stand``)."""

    @model_validator(mode="before")
    @classmethod
    def _standardized_temperature(cls, data: Any) -> Any:
        if isinstance(data, dict) and "temperature" not in data:
            try:
                on = TypeAdapter(bool).validate_python(data.get("standardize", False))
            except ValidationError:
                return data  # the field's own validation reports it
            if on:
                return {**data, "temperature": STANDARDIZED_TEMPERATURE}
        return data


STANDARDIZE_DESCRIPTION = (
    "Z-score each sample's logits of both networks (Sun et al., CVPR 2024) before dividing by "
    "T; T then defaults to 2"
)


class KDParams(_LogitStandardization):
    temperature: float = Field(
        default=4.0, gt=0, description="softmax temperature T (default 2 with standardize)"
    )
    scale_by_t2: bool = Field(
        default=True, description="multiply by T^2 so gradients keep their size as T changes"
    )
    standardize: bool = Field(default=False, description=STANDARDIZE_DESCRIPTION)


class FitNetParams(Params):
    hint_layer: int = Field(
        default=2, ge=0, description="REP feature index of the hint: 0 = stem, i >= 1 = stages[i-1]"
    )


class ATParams(Params):
    p: float = Field(default=2.0, gt=0, description="power of the activations in the attention map")


class CCParams(Params):
    embed_dim: int = Field(default=128, ge=1, description="size of the linear embeddings")


class RKDParams(Params):
    distance_weight: float = Field(default=25.0, ge=0, description="weight of the distance term")
    angle_weight: float = Field(default=50.0, ge=0, description="weight of the angle term")


class VIDParams(Params):
    init_pred_var: float = Field(default=5.0, gt=0, description="initial predicted variance")
    eps: float = Field(default=1e-5, gt=0, description="floor added to the variance")


class DKDParams(_LogitStandardization):
    alpha: float = Field(default=1.0, ge=0, description="weight of TCKD")
    beta: float = Field(default=8.0, ge=0, description="weight of NCKD (2 to 8 by pair)")
    temperature: float = Field(
        default=4.0, gt=0, description="softmax temperature T (default 2 with standardize)"
    )
    warmup_epochs: int = Field(
        default=20, ge=0, description="epochs of linear warm-up of both terms (0: none)"
    )
    standardize: bool = Field(default=False, description=STANDARDIZE_DESCRIPTION)


class CRDParams(Params):
    embed_dim: int = Field(default=128, ge=1, description="size of the normalised embeddings")
    num_negatives: int = Field(default=16384, ge=1, description="negatives per sample (nce_k)")
    temperature: float = Field(default=0.07, gt=0, description="NCE temperature (nce_t)")
    momentum: float = Field(default=0.5, ge=0, lt=1, description="memory-bank momentum (nce_m)")
    negatives: Literal["other_class", "uniform"] = Field(
        default="other_class",
        description="draw negatives from other classes (published) or uniformly (needs no labels)",
    )


class ReviewKDParams(Params):
    warmup_epochs: int = Field(
        default=20, ge=0, description="epochs of linear warm-up of the loss (0: none)"
    )
    max_mid_channels: int = Field(
        default=512, ge=1, description="cap on the ABF blocks' inner width (mid channels)"
    )


class HSAKDParams(Params):
    temperature: float = Field(
        default=3.0, gt=0, description="softmax temperature T of both KL terms"
    )
    student_blocks_per_stage: int = Field(
        default=1, ge=1,
        description="residual blocks per stage that a student branch re-creates (HSAKD: n)",
    )
    teacher_blocks_per_stage: int = Field(
        default=1, ge=1,
        description="residual blocks per stage that a teacher branch re-creates (HSAKD: n)",
    )
    block: Literal["auto", "basic", "bottleneck"] = Field(
        default="auto",
        description="branch block type; auto: bottlenecks for stages of more than 256 channels",
    )
    student_branch_stages: list[int] | None = Field(
        default=None,
        description="indices into the student's 'stages' that carry a branch (default: all)",
    )
    teacher_branch_stages: list[int] | None = Field(
        default=None,
        description="indices into the teacher's 'stages' that carry a branch (default: all)",
    )
    prepare_epochs: int = Field(
        default=100, ge=1, description="epochs of training the teacher's branches (frozen backbone)"
    )
    prepare_batch_size: int = Field(
        default=64, ge=1, description="images per batch of the preparation (×4 with rotations)"
    )
    prepare_lr: float = Field(default=0.05, gt=0, description="learning rate of the preparation")
    prepare_momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum (nesterov)")
    prepare_weight_decay: float = Field(default=5e-4, ge=0, description="weight decay")
    prepare_milestones: list[int] = Field(
        default=[30, 60, 90], description="epochs after which the preparation's lr drops ×0.1"
    )


class DISTParams(Params):
    beta: float = Field(default=1.0, ge=0, description="weight β of the inter-class relation")
    gamma: float = Field(default=1.0, ge=0, description="weight γ of the intra-class relation")
    temperature: float = Field(default=4.0, gt=0, description="softmax temperature τ")


class NKDParams(Params):
    temperature: float = Field(
        default=3.0, gt=0, description="temperature T of the non-target distributions"
    )
    gamma: float = Field(default=3.5, ge=0, description="weight γ of the non-target term")


class WTTMParams(Params):
    gamma: float = Field(
        default=0.2, gt=0,
        description="power γ of the teacher's probabilities (a teacher temperature of 1/γ)",
    )


class CTKDParams(Params):
    t_start: float = Field(
        default=1.0, gt=0, description="lower bound of the learnt temperature T (CTKD --t_start)"
    )
    t_range: float = Field(
        default=20.0, gt=0,
        description="T = t_start + t_range·sigmoid(θ) stays below t_start + t_range (CTKD --t_end)",
    )
    raw_init: float = Field(
        default=1.0, description="initial θ (CTKD's Global_T: 1, so T starts near 15.6)"
    )
    lambda_min: float = Field(
        default=0.0, ge=0,
        description="gradient-reversal strength λ before the first epoch (CTKD --decay_max 0)",
    )
    lambda_max: float = Field(
        default=1.0, ge=0,
        description="λ reached at epoch curriculum_epochs and kept (CTKD --decay_min -1)",
    )
    curriculum_epochs: int = Field(
        default=10, ge=0,
        description="epochs of the cosine ramp of λ (CTKD --decay_loops; 0: lambda_max throughout)",
    )
    standardize: bool = Field(
        default=False,
        description="Z-score each sample's logits of both networks (Sun et al., CVPR 2024) before "
        "dividing by T; their runs then use the recipe weight 9",
    )


class MLKDParams(_LogitStandardization):
    temperature: float = Field(
        default=4.0, gt=0,
        description="base temperature, the first of the five (default 2 with standardize)",
    )
    extra_temperatures: list[float] = Field(
        default=[3.0, 5.0, 2.0, 6.0], description="the other temperatures, in MLKD's order"
    )
    strong_view_temperatures: int = Field(
        default=3, ge=0,
        description="how many of [temperature, *extra_temperatures], from the first, the "
        "strong-view instance term computes on the strong view; the others read the weak view, "
        "as released (3: T 4, 3, 5 strong; 2, 6 weak)",
    )
    confidence_percentile: float = Field(
        default=50.0, ge=0, le=100,
        description="teacher-confidence percentile of the sample and class masks",
    )
    kd_weight: float = Field(
        default=0.9, ge=0,
        description="weight of every alignment term (MLKD's KD weight; default 9 with standardize)",
    )
    strong_ce_weight: float = Field(
        default=0.1, ge=0,
        description="weight of the strong view's CE (MLKD: the recipe's ce_weight, 0.1)",
    )
    standardize: bool = Field(
        default=False,
        description=STANDARDIZE_DESCRIPTION + " and kd_weight to 9 (instance terms only)",
    )

    @model_validator(mode="before")
    @classmethod
    def _standardized_weight(cls, data: Any) -> Any:
        """With ``standardize`` and no ``kd_weight``, the logit-standardisation runs' 9."""
        if isinstance(data, dict) and "kd_weight" not in data:
            try:
                on = TypeAdapter(bool).validate_python(data.get("standardize", False))
            except ValidationError:
                return data
            if on:
                return {**data, "kd_weight": 9.0}
        return data

    @model_validator(mode="after")
    def _positive_temperatures(self) -> "MLKDParams":
        if any(t <= 0 for t in self.extra_temperatures):
            raise ValueError("extra_temperatures must all be > 0")
        return self


@hookimpl
def kdcore_distillers():
    yield DistillerSpec(
        name="kd",
        summary="Hinton KD: KL(teacher || student) of temperature-softened softmaxes",
        published_weight=0.9,
        params=KDParams,
        build="kdcore_distillers.kd:KD",
    )
    yield DistillerSpec(
        name="fitnet",
        summary="FitNet: MSE between a regressed student stage map and the teacher's",
        published_weight=100.0,
        params=FitNetParams,
        build="kdcore_distillers.fitnet:FitNet",
    )
    yield DistillerSpec(
        name="at",
        summary="Attention transfer: MSE of normalised attention maps of the stages",
        published_weight=1000.0,
        params=ATParams,
        build="kdcore_distillers.at:AT",
    )
    yield DistillerSpec(
        name="pkt",
        summary="PKT: KL of cosine-similarity distributions of pooled features",
        published_weight=30000.0,
        params=NoParams,
        build="kdcore_distillers.pkt:PKT",
    )
    yield DistillerSpec(
        name="sp",
        summary="Similarity-preserving: batch Gram matrices of the last stage map",
        published_weight=3000.0,
        params=NoParams,
        build="kdcore_distillers.sp:SP",
    )
    yield DistillerSpec(
        name="cc",
        summary="Correlation congruence (REP form) on embedded pooled features",
        published_weight=0.02,
        params=CCParams,
        build="kdcore_distillers.cc:CC",
    )
    yield DistillerSpec(
        name="rkd",
        summary="Relational KD: distance and angle relations of pooled features",
        published_weight=1.0,
        params=RKDParams,
        build="kdcore_distillers.rkd:RKD",
    )
    yield DistillerSpec(
        name="vid",
        summary="VID: Gaussian likelihood of teacher stage maps given the student's",
        published_weight=1.0,
        params=VIDParams,
        build="kdcore_distillers.vid:VID",
    )
    yield DistillerSpec(
        name="dkd",
        summary="Decoupled KD: target-class and non-target-class KL terms with warm-up",
        published_weight=1.0,
        params=DKDParams,
        build="kdcore_distillers.dkd:DKD",
    )
    yield DistillerSpec(
        name="crd",
        summary="CRD: contrastive NCE on pooled-feature embeddings with memory banks",
        published_weight=0.8,
        params=CRDParams,
        build="kdcore_distillers.crd:CRD",
    )
    yield DistillerSpec(
        name="reviewkd",
        summary="ReviewKD: ABF-fused student levels vs teacher pre-ReLU ones, HCL loss",
        published_weight=5.0,
        params=ReviewKDParams,
        build="kdcore_distillers.reviewkd:ReviewKD",
    )
    yield DistillerSpec(
        name="hsakd",
        summary="HSAKD: rotation-augmented KL of main logits and of auxiliary branches",
        published_weight=1.0,
        params=HSAKDParams,
        build="kdcore_distillers.hsakd:HSAKD",
    )
    yield DistillerSpec(
        name="dist",
        summary="DIST: Pearson correlation of softmaxes per sample and per class",
        published_weight=2.0,  # DIST's kd_loss_weight (dist_cifar.yaml), with β = γ = 1 inside
        params=DISTParams,
        build="kdcore_distillers.dist:DIST",
    )
    yield DistillerSpec(
        name="nkd",
        summary="NKD: teacher-weighted target CE plus normalised non-target CE",
        published_weight=1.0,  # cls_KD adds the NKD loss unweighted
        params=NKDParams,
        build="kdcore_distillers.nkd:NKD",
    )
    yield DistillerSpec(
        name="wttm",
        summary="WTTM: KL to the power-transformed teacher, weighted by its power sum",
        published_weight=4.0,  # zkxufo/TTM README's only WTTM command (-a 4, there added to CRD)
        params=WTTMParams,
        build="kdcore_distillers.wttm:WTTM",
    )
    yield DistillerSpec(
        name="ctkd",
        summary="CTKD: KD at a learnt temperature trained adversarially on a curriculum",
        published_weight=0.9,  # zhengli97/CTKD run_cifar_distill.sh: -a 0.9 on the KL at the learnt T
        params=CTKDParams,
        build="kdcore_distillers.ctkd:CTKD",
    )
    yield DistillerSpec(
        name="mlkd",
        summary="MLKD: instance/class/batch softmax alignment, 5 temperatures, weak+strong views",
        published_weight=1.0,  # MLKD's KD weight 0.9 and strong-view CE 0.1 are the distiller's params
        params=MLKDParams,
        build="kdcore_distillers.mlkd:MLKD",
    )
