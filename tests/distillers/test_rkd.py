import math

import pytest
import torch
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context
from distiller_testkit import build, pooled_student_losses


def huber_mean(a, b):
    values = [0.5 * (x - y) ** 2 if abs(x - y) < 1 else abs(x - y) - 0.5 for x, y in zip(a, b)]
    return sum(values) / len(values)


def distances_by_hand(rows):
    n = len(rows)
    d = [[math.dist(rows[i], rows[j]) if i != j else 0.0 for j in range(n)] for i in range(n)]
    mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return [d[i][j] / mean for i in range(n) for j in range(n)]


def angles_by_hand(rows):
    n = len(rows)
    out = []
    for a in range(n):
        for i in range(n):
            for j in range(n):
                u = [x - y for x, y in zip(rows[i], rows[a])]
                v = [x - y for x, y in zip(rows[j], rows[a])]
                nu, nv = math.hypot(*u), math.hypot(*v)
                out.append(
                    sum(x * y for x, y in zip(u, v)) / (nu * nv) if nu > 0 and nv > 0 else 0.0
                )
    return out


def test_matches_pair_and_triplet_loops_with_different_dims():
    torch.manual_seed(0)
    distiller = build("rkd", make_distiller_context({"pooled": (3,)}, {"pooled": (5,)}))
    student, teacher = (
        torch.randn(5, 3, dtype=torch.float64),
        torch.randn(5, 5, dtype=torch.float64),
    )
    terms = distiller({"pooled": student}, {"pooled": teacher}, make_batch(5))
    s_rows, t_rows = student.tolist(), teacher.tolist()
    expected_distance = 25.0 * huber_mean(distances_by_hand(s_rows), distances_by_hand(t_rows))
    expected_angle = 50.0 * huber_mean(angles_by_hand(s_rows), angles_by_hand(t_rows))
    assert set(terms) == {"distance", "angle"}
    assert terms["distance"].item() == pytest.approx(expected_distance, rel=1e-8)
    assert terms["angle"].item() == pytest.approx(expected_angle, rel=1e-8)


def test_hand_worked_right_triangle_against_a_line():
    # Student: right isosceles triangle; teacher: three points on a line at 0, 1, 2.
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    distiller = build(
        "rkd",
        make_distiller_context({"pooled": (2,)}, {"pooled": (2,)}),
        distance_weight=1.0,
        angle_weight=1.0,
    )
    terms = distiller({"pooled": student}, {"pooled": teacher}, make_batch(3))
    # Distances: student (1, 1, √2) / mean, teacher (1, 2, 1) / (4/3), each off-diagonal pair twice.
    s_mean, r2 = (2 + math.sqrt(2)) / 3, math.sqrt(2)
    s_d = {(0, 1): 1 / s_mean, (0, 2): 1 / s_mean, (1, 2): r2 / s_mean}
    t_d = {(0, 1): 0.75, (0, 2): 1.5, (1, 2): 0.75}
    expected_distance = 2 * sum(0.5 * (s_d[k] - t_d[k]) ** 2 for k in s_d) / 9
    assert terms["distance"].item() == pytest.approx(expected_distance)
    # Angles: 6 vertex-diagonal entries (cos 1 for both) and 6 entries between distinct edges.
    # Student cosines: vertex 0 → 0, vertex 1 → 1/√2, vertex 2 → 1/√2. Teacher: 1, -1, 1.
    diffs = [0.0 - 1.0, 1 / r2 + 1.0, 1 / r2 - 1.0]
    expected_angle = 2 * sum(0.5 * d**2 if abs(d) < 1 else abs(d) - 0.5 for d in diffs) / 27
    assert terms["angle"].item() == pytest.approx(expected_angle)


def test_zero_for_equal_features_and_invariant_to_scale_and_shift():
    torch.manual_seed(1)
    features = torch.randn(6, 4, dtype=torch.float64)
    distiller = build("rkd", make_distiller_context({"pooled": (4,)}, {"pooled": (4,)}))
    for student in (features, 3.0 * features + 1.5):
        terms = distiller({"pooled": student}, {"pooled": features}, make_batch(6))
        assert terms["distance"].item() == pytest.approx(0.0, abs=1e-10)
        assert terms["angle"].item() == pytest.approx(0.0, abs=1e-10)


def test_gradients_reach_student_but_not_teacher():
    distiller = build("rkd", make_distiller_context({"pooled": (3,)}, {"pooled": (5,)}))
    check_gradients(
        distiller, {"pooled": torch.randn(4, 3)}, {"pooled": torch.randn(4, 5)}, make_batch(4)
    )


def test_training_a_small_student_reduces_the_loss():
    assert_trains(pooled_student_losses("rkd", lr=0.01), 0.3)
