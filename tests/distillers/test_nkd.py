import math

import pytest
import torch
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context
from distiller_testkit import build, logit_student_losses


CTX = make_distiller_context({}, {}, num_classes=5)



def softmax(values, temperature=1.0):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def nkd_by_hand(s_logits, t_logits, labels, T, gamma):
    """Per-sample sums over explicit probabilities: the non-target distributions are the
    full-softmax probabilities of the other classes divided by their sum (at temperature T)."""
    target = non_target = 0.0
    for s_row, t_row, y in zip(s_logits.tolist(), t_logits.tolist(), labels.tolist()):
        target -= softmax(t_row)[y] * math.log(softmax(s_row)[y])
        p_s, p_t = softmax(s_row, T), softmax(t_row, T)
        rest_s = [p / (1 - p_s[y]) for k, p in enumerate(p_s) if k != y]
        rest_t = [p / (1 - p_t[y]) for k, p in enumerate(p_t) if k != y]
        non_target -= gamma * T**2 * sum(t * math.log(s) for t, s in zip(rest_t, rest_s))
    batch = len(labels)
    return target / batch, non_target / batch


def test_defaults_are_the_published_cifar_values():
    distiller = build("nkd", CTX)
    assert (distiller.temperature, distiller.gamma) == (3.0, 3.5)


@pytest.mark.parametrize(("T", "gamma"), [(3.0, 3.5), (1.0, 1.5)])
def test_matches_explicit_probabilities(T, gamma):
    torch.manual_seed(0)
    s_logits = 3 * torch.randn(6, 5, dtype=torch.float64)
    t_logits = 3 * torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 3, 4, 3, 1, 2])
    distiller = build("nkd", CTX, temperature=T, gamma=gamma)
    terms = distiller({"logits": s_logits}, {"logits": t_logits}, make_batch(6, labels=labels))
    target, non_target = nkd_by_hand(s_logits, t_logits, labels, T, gamma)
    assert set(terms) == {"target", "non_target"}
    assert terms["target"].item() == pytest.approx(target, rel=1e-10)
    assert terms["non_target"].item() == pytest.approx(non_target, rel=1e-10)


def test_uniform_logits_give_closed_form_values():
    # all logits 0: p[y] = 1/K, so target = (1/K)·log K; the K − 1 non-target classes are
    # uniform too, so non_target = γ·T²·log(K − 1)
    distiller = build("nkd", CTX)
    zeros = torch.zeros(3, 5, dtype=torch.float64)
    terms = distiller({"logits": zeros}, {"logits": zeros}, make_batch(3))
    assert terms["target"].item() == pytest.approx(math.log(5) / 5, rel=1e-12)
    assert terms["non_target"].item() == pytest.approx(3.5 * 9 * math.log(4), rel=1e-12)


def test_the_non_target_term_is_smallest_when_the_student_matches_the_teacher():
    # a cross-entropy in the student's non-target distribution: minimal (the teacher's
    # entropy) at equality, whatever the target logit does
    torch.manual_seed(1)
    t_logits = torch.randn(1, 5, dtype=torch.float64)
    labels = torch.tensor([2])
    distiller = build("nkd", CTX)
    at_teacher = distiller({"logits": t_logits}, {"logits": t_logits}, make_batch(1, labels=labels))
    moved_target = t_logits.clone()
    moved_target[0, 2] += 5.0
    same = distiller({"logits": moved_target}, {"logits": t_logits}, make_batch(1, labels=labels))
    assert same["non_target"].item() == pytest.approx(at_teacher["non_target"].item(), rel=1e-12)
    for _ in range(5):
        other = t_logits + torch.randn(1, 5, dtype=torch.float64)
        terms = distiller({"logits": other}, {"logits": t_logits}, make_batch(1, labels=labels))
        assert terms["non_target"].item() > at_teacher["non_target"].item()


def test_unlabeled_samples_use_the_teachers_top_class():
    torch.manual_seed(3)
    s_logits, t_logits = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.tensor([1, 2, 3, 4])
    labeled = torch.tensor([True, False, True, False])
    distiller = build("nkd", CTX)
    masked = distiller(
        {"logits": s_logits}, {"logits": t_logits}, make_batch(4, labels=labels, labeled=labeled)
    )
    substituted = torch.where(labeled, labels, t_logits.argmax(dim=1))
    direct = distiller(
        {"logits": s_logits}, {"logits": t_logits}, make_batch(4, labels=substituted)
    )
    for name in ("target", "non_target"):
        assert masked[name].item() == pytest.approx(direct[name].item())


def test_gradients_reach_student_logits_but_not_teacher():
    distiller = build("nkd", CTX)
    check_gradients(
        distiller, {"logits": torch.randn(4, 5)}, {"logits": torch.randn(4, 5)}, make_batch(4)
    )


def test_training_a_small_student_reduces_the_loss():
    distiller = build("nkd", CTX)
    losses, teacher, batch = logit_student_losses(distiller, lr=0.02, teacher_labels=True)
    # the loss is a cross-entropy: its non-target part is bounded below by its value at the
    # teacher's logits (the teacher's entropies), the target part by 0; the excess must fall
    floor = distiller(teacher, teacher, batch)["non_target"].item()
    assert_trains([loss - floor for loss in losses], 0.3)
