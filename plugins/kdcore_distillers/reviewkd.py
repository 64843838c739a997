"""Review KD: distilling knowledge via knowledge review (Chen et al., CVPR 2021), as in
mdistiller's CIFAR-100 ``ReviewKD`` (loss weight 5, 20-epoch warm-up, ``MAX_MID_CHANNEL`` 512,
student features post-ReLU) and the original ``dvlab-research/ReviewKD`` code.

The channel and spatial layouts that both codebases write out per architecture
(``build_review_kd``: ``in_channels``, ``out_channels``, ``shapes``, ``out_shapes``) are derived
here from the probed tap shapes, so that any pair with as many student as teacher stages works;
for the published pairs the derived layouts are the published ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.api import DistillerContext
from kdcore.errors import KdcoreError
from kdcore.nn import Batch, Distiller, Features
from kdcore_distillers import ReviewKDParams
from kdcore_distillers._common import require_map

METHOD = "reviewkd"

HCL_POOL_SIZES = (4, 2, 1)


def hcl_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """Hierarchical context loss, summed over levels. Per level of height ``h``:
    ``(MSE(f_s, f_t) + Σ_j w_j · MSE(pool_l(f_s), pool_l(f_t))) / (1 + Σ_j w_j)`` over the
    pool sizes ``l`` of (4, 2, 1) smaller than ``h``, in that order, with weights
    ``w_j = 2^-j`` for the j-th size kept (j = 1, 2, 3); ``pool_l`` is adaptive average pooling
    to ``l × l`` and each MSE a mean over all elements."""
    total = student[0].new_zeros(())
    for fs, ft in zip(student, teacher, strict=True):
        height = fs.shape[2]
        loss = F.mse_loss(fs, ft)
        weight = norm = 1.0
        for size in HCL_POOL_SIZES:
            if size >= height:
                continue
            weight /= 2.0
            pooled = F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            loss = loss + weight * pooled
            norm += weight
        total = total + loss / norm
    return total


class ABF(nn.Module):
    """Attention-based fusion of one level.

    ``x`` (the student's map at this level) → 1×1 conv + BN to ``mid`` channels; except at the
    deepest level, fused with the residual ``r`` from the level below (nearest-upsampled to the
    student's ``H×W`` here): ``a = σ(conv1×1([x, r]))`` with two output channels,
    ``x ← x·a₀ + r·a₁``; the fused map, nearest-resized to the teacher's ``H×W`` when it
    differs, is the residual passed on; 3×3 conv + BN to the teacher's channels gives the output.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid_channels),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.att_conv = None
        if fuse:
            self.att_conv = nn.Sequential(
                nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()
            )
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """(output at the teacher's shape, residual for the next shallower level)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the residual of the deeper level")
            residual = F.interpolate(residual, size=x.shape[2:], mode="nearest")
            attention = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * attention[:, 0:1] + residual * attention[:, 1:2]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


def _levels(shapes: dict, stage_tap: str, who: str) -> list[tuple[int, int, int]]:
    """Per-sample ``(C, H, W)`` of each level: the stages, then the pooled feature as 1×1."""
    stages = shapes.get(stage_tap)
    if not stages:
        raise KdcoreError(f"{METHOD}: the {who} exposes no '{stage_tap}' feature tap")
    levels = [require_map(tuple(s), who, METHOD) for s in stages]
    pooled = shapes.get("pooled")
    if pooled is None or len(pooled) != 1:
        raise KdcoreError(f"{METHOD}: the {who} needs a 'pooled' tap of shape (C,), got {pooled}")
    return levels + [(pooled[0], 1, 1)]


class ReviewKD(Distiller):
    """``w · HCL(ABF(student levels), teacher levels)``, where the student's levels are its
    post-ReLU ``stages`` plus ``pooled`` as a 1×1 map, the teacher's its ``preact_stages`` plus
    ``pooled``, and the ABF blocks are run deepest level first, each fusing its level with the
    residual of the level below (see :class:`ABF`). ``mid = min(max_mid_channels, C)`` with ``C``
    the channels of the student's deepest level (the pooled feature, mdistiller's
    ``in_channels[-1]``). ``w = min((epoch + 1)/warmup_epochs, 1)``: mdistiller counts epochs
    from 1, kdcore's ``batch.epoch`` from 0 (the original repository counts from 0, so its first
    epoch has no ReviewKD loss). Published CIFAR-100: loss weight 5 (per pair in
    ``published.REVIEWKD_WEIGHT``), CE weight 1, warm-up 20."""

    student_taps = ("stages", "pooled")
    teacher_taps = ("preact_stages", "pooled")

    def __init__(self, params: ReviewKDParams, ctx: DistillerContext) -> None:
        super().__init__()
        self.warmup_epochs = params.warmup_epochs
        student = _levels(ctx.student_shapes, "stages", "student")
        teacher = _levels(ctx.teacher_shapes, "preact_stages", "teacher")
        if len(student) != len(teacher):
            raise KdcoreError(
                f"{METHOD} pairs the stages one to one, but the student has {len(student) - 1} and "
                f"the teacher {len(teacher) - 1}; adjust one network's 'stages' tap"
            )
        mid = min(params.max_mid_channels, student[-1][0])
        last = len(student) - 1
        # shallowest level first, as the published in_channels / out_channels lists
        self.in_channels = [c for c, _, _ in student]
        self.out_channels = [c for c, _, _ in teacher]
        self.shapes = [(h, w) for _, h, w in student]
        self.out_shapes = [(h, w) for _, h, w in teacher]
        self.mid_channels = mid
        abfs = [ABF(c_in, mid, c_out, fuse=i < last) for i, (c_in, c_out) in
                enumerate(zip(self.in_channels, self.out_channels))]
        self.abfs = nn.ModuleList(abfs[::-1])  # deepest first

    def warmup_factor(self, epoch: int) -> float:
        """``min((epoch + 1)/warmup_epochs, 1)`` for a 0-based epoch; 1 without warm-up."""
        if self.warmup_epochs == 0:
            return 1.0
        return min((epoch + 1) / self.warmup_epochs, 1.0)

    def fuse(self, stages: list[Tensor], pooled: Tensor) -> list[Tensor]:
        """The ABF outputs, shallowest level first, each at the teacher's shape of its level."""
        levels = [*stages, pooled[:, :, None, None]][::-1]
        out_shapes = self.out_shapes[::-1]
        results: list[Tensor] = []
        residual = None
        for x, abf, out_size in zip(levels, self.abfs, out_shapes, strict=True):
            out, residual = abf(x, residual, out_size)
            results.insert(0, out)
        return results

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        fused = self.fuse(student["stages"], student["pooled"])
        targets = [t.detach() for t in teacher["preact_stages"]]
        targets.append(teacher["pooled"].detach()[:, :, None, None])
        return {METHOD: self.warmup_factor(batch.epoch) * hcl_loss(fused, targets)}
