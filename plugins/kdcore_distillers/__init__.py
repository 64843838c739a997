"""Built-in distillation methods. Registration only: implementations import torch lazily.

Defaults are the published CIFAR-100 values (RepDistiller; mdistiller for DKD and ReviewKD;
HSAKD's own code for HSAKD); the published
loss weights, which recipes set as the distiller's ``weight``, are in
:mod:`kdcore_distillers.published`.
"""

from typing import Literal

from pydantic import Field

from kdcore.api import DistillerSpec, NoParams, Params, hookimpl


class KDParams(Params):
    temperature: float = Field(default=4.0, gt=0, description="softmax temperature T")
    scale_by_t2: bool = Field(
        default=True, description="multiply by T^2 so gradients keep their size as T changes"
    )


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


class DKDParams(Params):
    alpha: float = Field(default=1.0, ge=0, description="weight of TCKD")
    beta: float = Field(default=8.0, ge=0, description="weight of NCKD (2 to 8 by pair)")
    temperature: float = Field(default=4.0, gt=0, description="softmax temperature T")
    warmup_epochs: int = Field(
        default=20, ge=0, description="epochs of linear warm-up of both terms (0: none)"
    )


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


@hookimpl
def kdcore_distillers():
    yield DistillerSpec(
        name="kd",
        summary="Hinton KD: KL(teacher || student) of temperature-softened softmaxes",
        params=KDParams,
        build="kdcore_distillers.kd:KD",
    )
    yield DistillerSpec(
        name="fitnet",
        summary="FitNet: MSE between a regressed student stage map and the teacher's (weight 100)",
        params=FitNetParams,
        build="kdcore_distillers.fitnet:FitNet",
    )
    yield DistillerSpec(
        name="at",
        summary="Attention transfer: MSE of normalised attention maps of the stages (weight 1000)",
        params=ATParams,
        build="kdcore_distillers.at:AT",
    )
    yield DistillerSpec(
        name="pkt",
        summary="PKT: KL of cosine-similarity distributions of pooled features (weight 30000)",
        params=NoParams,
        build="kdcore_distillers.pkt:PKT",
    )
    yield DistillerSpec(
        name="sp",
        summary="Similarity-preserving: batch Gram matrices of the last stage map (weight 3000)",
        params=NoParams,
        build="kdcore_distillers.sp:SP",
    )
    yield DistillerSpec(
        name="cc",
        summary="Correlation congruence (REP form) on embedded pooled features (weight 0.02)",
        params=CCParams,
        build="kdcore_distillers.cc:CC",
    )
    yield DistillerSpec(
        name="rkd",
        summary="Relational KD: distance and angle relations of pooled features (weight 1)",
        params=RKDParams,
        build="kdcore_distillers.rkd:RKD",
    )
    yield DistillerSpec(
        name="vid",
        summary="VID: Gaussian likelihood of teacher stage maps given the student's (weight 1)",
        params=VIDParams,
        build="kdcore_distillers.vid:VID",
    )
    yield DistillerSpec(
        name="dkd",
        summary="Decoupled KD: target-class and non-target-class KL terms with warm-up (weight 1)",
        params=DKDParams,
        build="kdcore_distillers.dkd:DKD",
    )
    yield DistillerSpec(
        name="crd",
        summary="CRD: contrastive NCE on pooled-feature embeddings with memory banks (weight 0.8)",
        params=CRDParams,
        build="kdcore_distillers.crd:CRD",
    )
    yield DistillerSpec(
        name="reviewkd",
        summary="ReviewKD: ABF-fused student levels vs teacher pre-ReLU ones, HCL loss (weight 5)",
        params=ReviewKDParams,
        build="kdcore_distillers.reviewkd:ReviewKD",
    )
    yield DistillerSpec(
        name="hsakd",
        summary="HSAKD: rotation-augmented KL of main logits and of auxiliary branches (weight 1)",
        params=HSAKDParams,
        build="kdcore_distillers.hsakd:HSAKD",
    )
