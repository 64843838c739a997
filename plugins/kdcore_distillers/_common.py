"""Helpers shared by the feature-based distillers: shape checks and spatial matching."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from kdcore.errors import KdcoreError


def stage_shapes(shapes: dict, who: str, method: str) -> list[tuple[int, ...]]:
    """The per-sample ``(C, H, W)`` shapes of a network's ``stages`` tap."""
    stages = shapes.get("stages")
    if not stages:
        raise KdcoreError(f"{method}: the {who} exposes no 'stages' feature tap")
    return [tuple(shape) for shape in stages]


def require_map(shape: tuple[int, ...], who: str, method: str) -> tuple[int, int, int]:
    """A per-sample feature shape that must be a ``(C, H, W)`` map."""
    if len(shape) != 3:
        raise KdcoreError(
            f"{method} needs (C, H, W) feature maps, but the {who}'s feature has shape {shape}"
        )
    return shape


def paired_stage_shapes(
    student_shapes: dict, teacher_shapes: dict, method: str
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(student, teacher) shapes of each stage; both networks must have as many stages."""
    student = stage_shapes(student_shapes, "student", method)
    teacher = stage_shapes(teacher_shapes, "teacher", method)
    if len(student) != len(teacher):
        raise KdcoreError(
            f"{method} pairs the stages one to one, but the student has {len(student)} and the "
            f"teacher {len(teacher)}; adjust one network's 'stages' tap"
        )
    return [
        (require_map(s, "student", method), require_map(t, "teacher", method))
        for s, t in zip(student, teacher)
    ]


def flat_dim(shape: Sequence[int]) -> int:
    """Number of values of one sample's feature of this shape."""
    size = 1
    for extent in shape:
        size *= extent
    return size


def pool_to_common_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the map with the larger height down to the other's ``H×W``
    (REP's rule for AT and VID); maps of equal height are returned as they are."""
    s_height, t_height = student.shape[2], teacher.shape[2]
    if s_height > t_height:
        student = F.adaptive_avg_pool2d(student, teacher.shape[2:])
    elif s_height < t_height:
        teacher = F.adaptive_avg_pool2d(teacher, student.shape[2:])
    return student, teacher
