import math

import pytest
import torch
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context, train_losses
from distiller_testkit import build
from torch import nn

STUDENT = {"stages": [(2, 8, 8), (3, 4, 4)]}
TEACHER = {"stages": [(2, 8, 8), (5, 2, 2)]}


def sp_by_hand(student_map, teacher_map):
    batch = student_map.shape[0]
    s_flat = student_map.reshape(batch, -1).tolist()
    t_flat = teacher_map.reshape(batch, -1).tolist()

    def normalised_gram(rows):
        gram = [[sum(a * b for a, b in zip(x, y)) for y in rows] for x in rows]
        return [[g / math.sqrt(sum(v * v for v in row)) for g in row] for row in gram]

    g_s, g_t = normalised_gram(s_flat), normalised_gram(t_flat)
    return sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(batch) for j in range(batch)) / batch**2


def test_matches_a_pairwise_computation_on_the_last_stage_with_different_shapes():
    torch.manual_seed(0)
    distiller = build("sp", make_distiller_context(STUDENT, TEACHER))
    student = {"stages": [torch.randn(5, 2, 8, 8), torch.randn(5, 3, 4, 4, dtype=torch.float64)]}
    teacher = {"stages": [torch.randn(5, 2, 8, 8), torch.randn(5, 5, 2, 2, dtype=torch.float64)]}
    loss = distiller(student, teacher, make_batch(5))["sp"]
    assert loss.item() == pytest.approx(
        sp_by_hand(student["stages"][1], teacher["stages"][1]), rel=1e-10
    )


def test_hand_worked_case():
    # Student rows e1, e2 → G_s = I; teacher rows e1, e1 → G_t = all 1/√2. ‖G_t − G_s‖² / 4:
    # diagonal (1/√2 − 1)² twice, off-diagonal (1/√2)² twice.
    student = {"stages": [torch.tensor([[[[1.0]], [[0.0]]], [[[0.0]], [[1.0]]]])]}
    teacher = {"stages": [torch.tensor([[[[1.0]], [[0.0]]], [[[1.0]], [[0.0]]]])]}
    distiller = build("sp", make_distiller_context({"stages": [(2, 1, 1)]}, {"stages": [(2, 1, 1)]}))
    expected = (2 * (1 / math.sqrt(2) - 1) ** 2 + 2 * 0.5) / 4
    assert distiller(student, teacher, make_batch(2))["sp"].item() == pytest.approx(expected)


def test_zero_for_equal_features_and_invariant_to_scale():
    torch.manual_seed(1)
    maps = [torch.randn(6, 2, 8, 8), torch.randn(6, 3, 4, 4)]
    distiller = build("sp", make_distiller_context(STUDENT, STUDENT))
    assert distiller({"stages": maps}, {"stages": maps}, make_batch(6))[
        "sp"
    ].item() == pytest.approx(0.0, abs=1e-12)
    scaled = [m * 7.0 for m in maps]
    assert distiller({"stages": scaled}, {"stages": maps}, make_batch(6))[
        "sp"
    ].item() == pytest.approx(0.0, abs=1e-10)


def test_gradients_reach_student_but_not_teacher():
    distiller = build("sp", make_distiller_context(STUDENT, TEACHER))
    student = {"stages": [torch.randn(4, 2, 8, 8), torch.randn(4, 3, 4, 4)]}
    teacher = {"stages": [torch.randn(4, 2, 8, 8), torch.randn(4, 5, 2, 2)]}
    check_gradients(distiller, student, teacher, make_batch(4), read=[student["stages"][1]])


def test_training_a_small_student_reduces_the_loss():
    torch.manual_seed(2)
    images = torch.randn(16, 3, 4, 4)
    teacher_net = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    with torch.no_grad():
        teacher = {"stages": [torch.relu(teacher_net(images))]}
    student_net = nn.Conv2d(3, 3, 3, padding=1)
    distiller = build("sp", make_distiller_context({"stages": [(3, 4, 4)]}, {"stages": [(5, 2, 2)]}))

    def features(net):
        return {"stages": [torch.relu(net(images))]}

    losses = train_losses(distiller, student_net, features, teacher, make_batch(16), lr=10.0)
    assert_trains(losses, 0.3)
