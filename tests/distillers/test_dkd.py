import math

import pytest
import torch
import torch.nn.functional as F
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context
from distiller_testkit import build, logit_student_losses


CTX = make_distiller_context({}, {}, num_classes=5)


def softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def dkd_by_hand(s_logits, t_logits, labels, T):
    """Per-sample TCKD and NCKD from explicit probabilities, T²-scaled and batch-averaged."""
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(s_logits.tolist(), t_logits.tolist(), labels.tolist()):
        p_s, p_t = softmax(s_row, T), softmax(t_row, T)
        b_s, b_t = [p_s[y], 1 - p_s[y]], [p_t[y], 1 - p_t[y]]
        tckd += sum(t * math.log(t / s) for t, s in zip(b_t, b_s))
        rest_s = [p / (1 - p_s[y]) for k, p in enumerate(p_s) if k != y]
        rest_t = [p / (1 - p_t[y]) for k, p in enumerate(p_t) if k != y]
        nckd += sum(t * math.log(t / s) for t, s in zip(rest_t, rest_s))
    batch = len(labels)
    return T**2 * tckd / batch, T**2 * nckd / batch


def test_matches_explicit_probabilities_with_alpha_beta_and_warmup():
    torch.manual_seed(0)
    s_logits, t_logits = (
        3 * torch.randn(4, 5, dtype=torch.float64),
        3 * torch.randn(4, 5, dtype=torch.float64),
    )
    labels = torch.tensor([0, 3, 4, 3])
    distiller = build("dkd", CTX, alpha=1.5, beta=8.0, temperature=4.0)
    terms = distiller(
        {"logits": s_logits}, {"logits": t_logits}, make_batch(4, labels=labels, epoch=4)
    )
    tckd, nckd = dkd_by_hand(s_logits, t_logits, labels, 4.0)
    warmup = 5 / 20  # fifth epoch, counted from 1 as in mdistiller
    assert set(terms) == {"tckd", "nckd"}
    assert terms["tckd"].item() == pytest.approx(warmup * 1.5 * tckd, rel=1e-10)
    assert terms["nckd"].item() == pytest.approx(warmup * 8.0 * nckd, rel=1e-10)


def test_with_unit_weights_tckd_plus_weighted_nckd_is_the_kd_divergence():
    # DKD's decomposition: KL(p_t‖p_s) = KL(b_t‖b_s) + (1 − p_t[y])·KL(p̂_t‖p̂_s), per sample.
    torch.manual_seed(1)
    distiller = build("dkd", CTX, alpha=1.0, beta=1.0, temperature=2.0, warmup_epochs=0)
    for y in range(5):
        s_logits, t_logits = (
            torch.randn(1, 5, dtype=torch.float64),
            torch.randn(1, 5, dtype=torch.float64),
        )
        terms = distiller(
            {"logits": s_logits}, {"logits": t_logits}, make_batch(1, labels=torch.tensor([y]))
        )
        p_t = F.softmax(t_logits / 2.0, dim=1)
        kd = 4.0 * (p_t * (p_t.log() - F.log_softmax(s_logits / 2.0, dim=1))).sum()
        assert (terms["tckd"] + (1 - p_t[0, y]) * terms["nckd"]).item() == pytest.approx(
            kd.item(), rel=1e-10
        )


@pytest.mark.parametrize(("epoch", "factor"), [(0, 1 / 20), (9, 0.5), (19, 1.0), (150, 1.0)])
def test_warmup_is_linear_over_20_epochs_counted_from_one(epoch, factor):
    torch.manual_seed(2)
    s_logits, t_logits = torch.randn(3, 5), torch.randn(3, 5)
    distiller = build("dkd", CTX)
    warm = distiller({"logits": s_logits}, {"logits": t_logits}, make_batch(3, epoch=epoch))
    full = build("dkd", CTX, warmup_epochs=0)(
        {"logits": s_logits}, {"logits": t_logits}, make_batch(3, epoch=epoch)
    )
    for name in ("tckd", "nckd"):
        assert warm[name].item() == pytest.approx(factor * full[name].item(), rel=1e-6)


def test_zero_for_equal_logits_and_finite_for_confident_teachers():
    logits = torch.randn(4, 5)
    distiller = build("dkd", CTX)
    terms = distiller({"logits": logits}, {"logits": logits}, make_batch(4))
    assert terms["tckd"].item() == pytest.approx(0.0, abs=1e-7)
    assert terms["nckd"].item() == pytest.approx(0.0, abs=1e-7)
    confident = torch.tensor([[400.0, 0.0, 0.0, 0.0, 0.0]])
    terms = distiller(
        {"logits": torch.zeros(1, 5)},
        {"logits": confident},
        make_batch(1, labels=torch.tensor([0])),
    )
    assert all(torch.isfinite(t) for t in terms.values())


def test_unlabeled_samples_use_the_teachers_top_class():
    torch.manual_seed(3)
    s_logits, t_logits = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.tensor([1, 2, 3, 4])
    labeled = torch.tensor([True, False, True, False])
    distiller = build("dkd", CTX)
    masked = distiller(
        {"logits": s_logits}, {"logits": t_logits}, make_batch(4, labels=labels, labeled=labeled)
    )
    substituted = torch.where(labeled, labels, t_logits.argmax(dim=1))
    direct = distiller(
        {"logits": s_logits}, {"logits": t_logits}, make_batch(4, labels=substituted)
    )
    for name in ("tckd", "nckd"):
        assert masked[name].item() == pytest.approx(direct[name].item())


def test_gradients_reach_student_logits_but_not_teacher():
    distiller = build("dkd", CTX)
    check_gradients(
        distiller, {"logits": torch.randn(4, 5)}, {"logits": torch.randn(4, 5)}, make_batch(4)
    )


def test_training_a_small_student_reduces_the_loss():
    losses, _, _ = logit_student_losses(build("dkd", CTX), lr=0.02, teacher_labels=True, epoch=30)
    assert_trains(losses, 0.3)
