import math

import pytest
import torch
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context, train_losses
from distiller_testkit import build
from torch import nn

from kdcore.errors import KdcoreError

SHAPES = {"stages": [(3, 4, 4), (5, 2, 2)]}


def attention_by_hand(feature, b):
    """Normalised channel-mean of squares of sample b, as a flat python list."""
    channels, height, width = feature.shape[1:]
    values = [
        sum(feature[b, c, h, w].item() ** 2 for c in range(channels)) / channels
        for h in range(height)
        for w in range(width)
    ]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def at_by_hand(student_maps, teacher_maps):
    total = 0.0
    for s_map, t_map in zip(student_maps, teacher_maps):
        batch = s_map.shape[0]
        squared, count = 0.0, 0
        for b in range(batch):
            for a_s, a_t in zip(attention_by_hand(s_map, b), attention_by_hand(t_map, b)):
                squared += (a_s - a_t) ** 2
                count += 1
        total += squared / count
    return total


def block_mean(feature, size):
    """Average non-overlapping size x size blocks (adaptive pooling by an integer factor)."""
    b, c, h, w = feature.shape
    return feature.reshape(b, c, h // size, size, w // size, size).mean(dim=(3, 5))


def test_matches_a_per_sample_computation():
    torch.manual_seed(0)
    distiller = build("at", make_distiller_context(SHAPES, {"stages": [(6, 4, 4), (2, 2, 2)]}))
    student = {
        "stages": [
            torch.randn(3, 3, 4, 4, dtype=torch.float64),
            torch.randn(3, 5, 2, 2, dtype=torch.float64),
        ]
    }
    teacher = {
        "stages": [
            torch.randn(3, 6, 4, 4, dtype=torch.float64),
            torch.randn(3, 2, 2, 2, dtype=torch.float64),
        ]
    }
    loss = distiller(student, teacher, make_batch(3))["at"]
    assert loss.item() == pytest.approx(at_by_hand(student["stages"], teacher["stages"]), rel=1e-10)


def test_hand_worked_single_position_pair():
    # Two positions; student squares (1, 0) → a_s = (1, 0); teacher squares (0, 4) → a_t = (0, 1).
    student = {"stages": [torch.tensor([[[[1.0, 0.0]]]])]}
    teacher = {"stages": [torch.tensor([[[[0.0, 2.0]]]])]}
    distiller = build("at", make_distiller_context({"stages": [(1, 1, 2)]}, {"stages": [(1, 1, 2)]}))
    assert distiller(student, teacher, make_batch(1))["at"].item() == pytest.approx(1.0)


def test_larger_maps_are_average_pooled_to_the_smaller_size():
    torch.manual_seed(1)
    ctx = make_distiller_context({"stages": [(3, 8, 8), (4, 2, 2)]}, {"stages": [(5, 4, 4), (2, 4, 4)]})
    distiller = build("at", ctx)
    student = {
        "stages": [
            torch.randn(2, 3, 8, 8, dtype=torch.float64),
            torch.randn(2, 4, 2, 2, dtype=torch.float64),
        ]
    }
    teacher = {
        "stages": [
            torch.randn(2, 5, 4, 4, dtype=torch.float64),
            torch.randn(2, 2, 4, 4, dtype=torch.float64),
        ]
    }
    loss = distiller(student, teacher, make_batch(2))["at"]
    pooled_student = [block_mean(student["stages"][0], 2), student["stages"][1]]
    pooled_teacher = [teacher["stages"][0], block_mean(teacher["stages"][1], 2)]
    assert loss.item() == pytest.approx(at_by_hand(pooled_student, pooled_teacher), rel=1e-10)


def test_zero_for_equal_features_and_invariant_to_feature_scale():
    torch.manual_seed(2)
    maps = [torch.randn(4, 3, 4, 4), torch.randn(4, 5, 2, 2)]
    distiller = build("at", make_distiller_context(SHAPES, SHAPES))
    assert distiller({"stages": maps}, {"stages": maps}, make_batch(4))[
        "at"
    ].item() == pytest.approx(0.0, abs=1e-12)
    scaled = [3.0 * m for m in maps]
    assert distiller({"stages": scaled}, {"stages": maps}, make_batch(4))[
        "at"
    ].item() == pytest.approx(0.0, abs=1e-10)


def test_stage_count_mismatch_and_flat_stages_are_build_errors():
    with pytest.raises(KdcoreError, match="stages"):
        build("at", make_distiller_context(SHAPES, {"stages": [(3, 4, 4)]}))
    with pytest.raises(KdcoreError, match=r"\(C, H, W\)"):
        build("at", make_distiller_context({"stages": [(8,)]}, {"stages": [(8,)]}))


def test_gradients_reach_student_but_not_teacher():
    distiller = build("at", make_distiller_context(SHAPES, {"stages": [(6, 8, 8), (2, 2, 2)]}))
    student = {"stages": [torch.randn(3, 3, 4, 4), torch.randn(3, 5, 2, 2)]}
    teacher = {"stages": [torch.randn(3, 6, 8, 8), torch.randn(3, 2, 2, 2)]}
    check_gradients(distiller, student, teacher, make_batch(3))


def test_training_a_small_student_reduces_the_loss():
    torch.manual_seed(3)
    images = torch.randn(16, 3, 4, 4)
    teacher_net = nn.Conv2d(3, 6, 3, padding=1)
    with torch.no_grad():
        t1 = torch.relu(teacher_net(images))
        teacher = {"stages": [t1, torch.relu(nn.functional.avg_pool2d(t1, 2))]}
    student_net = nn.Conv2d(3, 4, 3, padding=1)

    def features(net):
        s1 = torch.relu(net(images))
        return {"stages": [s1, torch.relu(nn.functional.avg_pool2d(s1, 2))]}

    distiller = build(
        "at", make_distiller_context({"stages": [(4, 4, 4), (4, 2, 2)]}, {"stages": [(6, 4, 4), (6, 2, 2)]})
    )
    losses = train_losses(distiller, student_net, features, teacher, make_batch(16), lr=5.0)
    assert_trains(losses, 0.3)
