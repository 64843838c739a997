import math

import pytest
import torch
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context
from distiller_testkit import build, pooled_student_losses

EPS = 1e-7


def pkt_by_hand(student, teacher):
    def distribution(rows):
        norms = [math.sqrt(sum(v * v for v in row)) + EPS for row in rows]
        kernel = [
            [(sum(a * b for a, b in zip(x, y)) / (nx * ny) + 1) / 2 for y, ny in zip(rows, norms)]
            for x, nx in zip(rows, norms)
        ]
        return [[k / sum(row) for k in row] for row in kernel]

    p_s, p_t = distribution(student.tolist()), distribution(teacher.tolist())
    batch = len(p_s)
    return (
        sum(
            p_t[i][j] * math.log((p_t[i][j] + EPS) / (p_s[i][j] + EPS))
            for i in range(batch)
            for j in range(batch)
        )
        / batch**2
    )


def test_matches_a_pairwise_computation_with_different_dims():
    torch.manual_seed(0)
    distiller = build("pkt", make_distiller_context({"pooled": (6,)}, {"pooled": (9,)}))
    student, teacher = (
        torch.randn(5, 6, dtype=torch.float64),
        torch.randn(5, 9, dtype=torch.float64),
    )
    loss = distiller({"pooled": student}, {"pooled": teacher}, make_batch(5))["pkt"]
    assert loss.item() == pytest.approx(pkt_by_hand(student, teacher), rel=1e-9)


def test_zero_for_equal_features_and_invariant_to_positive_scale():
    torch.manual_seed(1)
    features = torch.randn(6, 8)
    distiller = build("pkt", make_distiller_context({"pooled": (8,)}, {"pooled": (8,)}))
    assert distiller({"pooled": features}, {"pooled": features}, make_batch(6))["pkt"].item() == 0.0
    scaled = distiller({"pooled": 5.0 * features}, {"pooled": features}, make_batch(6))["pkt"]
    assert scaled.item() == pytest.approx(0.0, abs=1e-7)


def test_gradients_reach_student_but_not_teacher():
    distiller = build("pkt", make_distiller_context({"pooled": (6,)}, {"pooled": (9,)}))
    check_gradients(
        distiller, {"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 9)}, make_batch(4)
    )


def test_training_a_small_student_reduces_the_loss():
    assert_trains(pooled_student_losses("pkt", lr=100.0), 0.3)
