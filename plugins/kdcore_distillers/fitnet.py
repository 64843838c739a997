"""FitNets: hints for thin deep nets (Romero et al., 2015), in the single-stage form of
RepDistiller's CIFAR-100 benchmark (loss weight 100, hint layer 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.api import DistillerContext
from kdcore.errors import KdcoreError
from kdcore.nn import Batch, Distiller, Features
from kdcore_distillers import FitNetParams
from kdcore_distillers._common import require_map


class ConvRegressor(nn.Module):
    """Maps a student map ``(C_s, H_s, W_s)`` onto the teacher's ``(C_t, H_t, W_t)``:
    conv → BatchNorm → ReLU, where the conv is

    * 3×3, stride 2, padding 1 when ``H_s = 2·H_t``;
    * transposed 4×4, stride 2, padding 1 when ``2·H_s = H_t``;
    * a valid ``(1 + H_s − H_t) × (1 + W_s − W_t)`` conv otherwise (1×1 for equal sizes).
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        (s_channels, s_height, s_width), (t_channels, t_height, t_width) = (
            student_shape,
            teacher_shape,
        )
        if s_height == 2 * t_height:
            self.conv = nn.Conv2d(s_channels, t_channels, kernel_size=3, stride=2, padding=1)
        elif 2 * s_height == t_height:
            self.conv = nn.ConvTranspose2d(
                s_channels, t_channels, kernel_size=4, stride=2, padding=1
            )
        elif s_height >= t_height and s_width >= t_width:
            kernel = (1 + s_height - t_height, 1 + s_width - t_width)
            self.conv = nn.Conv2d(s_channels, t_channels, kernel_size=kernel)
        else:
            raise KdcoreError(
                f"fitnet: no regressor maps a student map of {student_shape} onto a teacher map "
                f"of {teacher_shape} (the student map must be twice, half, or at least the "
                "teacher's size); choose another hint_layer"
            )
        with torch.no_grad():
            produced = tuple(self.conv(torch.zeros(1, *student_shape)).shape[1:])
        if produced != tuple(teacher_shape):
            raise KdcoreError(
                f"fitnet: the regressor maps {student_shape} to {produced}, not to the teacher's "
                f"{teacher_shape}; choose another hint_layer"
            )
        self.bn = nn.BatchNorm2d(t_channels)

    def forward(self, student: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(student)))


class FitNet(Distiller):
    """``mean((r(f_s) − f_t)²)`` over batch, channels and positions, where ``f`` is the
    feature of REP index ``hint_layer`` (0: ``stem``, i ≥ 1: ``stages[i−1]``) and ``r`` is a
    trainable :class:`ConvRegressor`. Published CIFAR-100 loss weight: 100 (hint layer 2)."""

    def __init__(self, params: FitNetParams, ctx: DistillerContext) -> None:
        super().__init__()
        self.hint_layer = params.hint_layer
        tap = "stem" if self.hint_layer == 0 else "stages"
        self.student_taps = self.teacher_taps = (tap,)
        self.regressor = ConvRegressor(
            require_map(self._hint_shape(ctx.student_shapes, "student"), "student", "fitnet"),
            require_map(self._hint_shape(ctx.teacher_shapes, "teacher"), "teacher", "fitnet"),
        )

    def _hint_shape(self, shapes: dict, who: str) -> tuple[int, ...]:
        if self.hint_layer == 0:
            if "stem" not in shapes:
                raise KdcoreError(f"fitnet: hint_layer 0 needs a 'stem' tap, which the {who} lacks")
            return tuple(shapes["stem"])
        stages = shapes.get("stages") or []
        if self.hint_layer > len(stages):
            raise KdcoreError(
                f"fitnet: hint_layer {self.hint_layer} needs stage {self.hint_layer} but the "
                f"{who} has {len(stages)} stages"
            )
        return tuple(stages[self.hint_layer - 1])

    def _hint(self, features: Features) -> Tensor:
        if self.hint_layer == 0:
            return features["stem"]
        return features["stages"][self.hint_layer - 1]

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        regressed = self.regressor(self._hint(student))
        return {"fitnet": F.mse_loss(regressed, self._hint(teacher).detach())}
