import pytest
import torch
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context
from distiller_testkit import build, pooled_student_losses


def embed_by_hand(linear, rows):
    weight, bias = linear.weight.tolist(), linear.bias.tolist()
    return [
        [sum(w * x for w, x in zip(w_row, row)) + b for w_row, b in zip(weight, bias)]
        for row in rows
    ]


def cc_by_hand(distiller, student, teacher):
    e_s = embed_by_hand(distiller.embed_student, student.tolist())
    e_t = embed_by_hand(distiller.embed_teacher, teacher.tolist())
    delta = [[abs(a - b) for a, b in zip(s, t)] for s, t in zip(e_s, e_t)]
    pairs = [sum(a * b for a, b in zip(delta[i], delta[i + 1])) for i in range(len(delta) - 1)]
    return sum(pairs) / len(pairs)


def test_matches_a_per_pair_computation_with_different_dims():
    torch.manual_seed(0)
    distiller = build("cc", make_distiller_context({"pooled": (6,)}, {"pooled": (9,)}), embed_dim=5).double()
    student, teacher = (
        torch.randn(4, 6, dtype=torch.float64),
        torch.randn(4, 9, dtype=torch.float64),
    )
    loss = distiller({"pooled": student}, {"pooled": teacher}, make_batch(4))["cc"]
    assert loss.item() == pytest.approx(cc_by_hand(distiller, student, teacher), rel=1e-10)


def test_published_embedding_size_and_zero_for_equal_embeddings():
    distiller = build("cc", make_distiller_context({"pooled": (8,)}, {"pooled": (8,)}))
    assert distiller.embed_student.out_features == distiller.embed_teacher.out_features == 128
    distiller.embed_teacher.load_state_dict(distiller.embed_student.state_dict())
    features = torch.randn(5, 8)
    assert distiller({"pooled": features}, {"pooled": features}, make_batch(5))["cc"].item() == 0.0


def test_gradients_reach_student_and_both_embeddings_but_not_teacher_features():
    distiller = build("cc", make_distiller_context({"pooled": (6,)}, {"pooled": (9,)}))
    check_gradients(
        distiller, {"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 9)}, make_batch(4)
    )


def test_training_a_small_student_reduces_the_loss():
    assert_trains(pooled_student_losses("cc", lr=0.01), 0.3)
