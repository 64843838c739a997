import math

import numpy as np
import pytest
import torch
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context
from distiller_testkit import build, logit_student_losses


from kdcore_distillers.published import PUBLISHED_CE_WEIGHTS
from tests.conftest import published_weights

CTX = make_distiller_context({}, {}, num_classes=6)

PUBLISHED = published_weights()



def softmax_rows(logits, tau):
    rows = []
    for row in logits.tolist():
        exps = [math.exp(v / tau) for v in row]
        rows.append([e / sum(exps) for e in exps])
    return np.array(rows)


def dist_by_hand(s_logits, t_logits, beta, gamma, tau):
    """Both relations from numpy's correlation coefficients, sample by sample and class by
    class (no epsilon: the authors' 1e-8 changes nothing at this precision)."""
    p_s, p_t = softmax_rows(s_logits, tau), softmax_rows(t_logits, tau)
    per_sample = [np.corrcoef(p_s[b], p_t[b])[0, 1] for b in range(p_s.shape[0])]
    per_class = [np.corrcoef(p_s[:, k], p_t[:, k])[0, 1] for k in range(p_s.shape[1])]
    inter = tau**2 * (1 - sum(per_sample) / len(per_sample))
    intra = tau**2 * (1 - sum(per_class) / len(per_class))
    return beta * inter, gamma * intra


def test_defaults_are_the_published_cifar_values():
    distiller = build("dist", CTX)
    assert (distiller.beta, distiller.gamma, distiller.temperature) == (1.0, 1.0, 4.0)
    assert (PUBLISHED["dist"], PUBLISHED_CE_WEIGHTS["dist"]) == (2.0, 1.0)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_matches_correlations_computed_row_by_row_and_column_by_column(tau):
    torch.manual_seed(0)
    s_logits = 3 * torch.randn(8, 6, dtype=torch.float64)
    t_logits = 3 * torch.randn(8, 6, dtype=torch.float64)
    distiller = build("dist", CTX, beta=1.5, gamma=0.5, temperature=tau)
    terms = distiller({"logits": s_logits}, {"logits": t_logits}, make_batch(8, num_classes=6))
    inter, intra = dist_by_hand(s_logits, t_logits, 1.5, 0.5, tau)
    assert set(terms) == {"inter", "intra"}
    assert terms["inter"].item() == pytest.approx(inter, rel=1e-6)
    assert terms["intra"].item() == pytest.approx(intra, rel=1e-6)


def test_equal_logits_leave_only_the_epsilon_and_a_logit_shift_changes_nothing():
    # r(x, x) = ‖x − x̄‖² / (‖x − x̄‖² + 1e-8): τ = 4 flattens the softmax enough for the
    # epsilon to show, so the loss of equal logits is small but not zero
    torch.manual_seed(1)
    logits = torch.randn(5, 6, dtype=torch.float64)
    distiller = build("dist", CTX)
    terms = distiller({"logits": logits}, {"logits": logits}, make_batch(5))
    p = softmax_rows(logits, 4.0)
    rows = ((p - p.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    columns = ((p - p.mean(axis=0, keepdims=True)) ** 2).sum(axis=0)
    assert terms["inter"].item() == pytest.approx(16 * (1 - np.mean(rows / (rows + 1e-8))))
    assert terms["intra"].item() == pytest.approx(16 * (1 - np.mean(columns / (columns + 1e-8))))
    assert 0 < terms["inter"].item() < 1e-3
    # softmax ignores a constant added to a sample's logits, so the loss does too
    shifted = logits + 10 * torch.randn(5, 1, dtype=torch.float64)
    again = distiller({"logits": shifted}, {"logits": logits}, make_batch(5))
    for name in ("inter", "intra"):
        assert again[name].item() == pytest.approx(terms[name].item(), rel=1e-9)


def test_a_batch_of_one_has_a_finite_intra_term_of_tau_squared():
    # one sample: every class column is constant, its correlation is 0 (the epsilon), 1 − 0 = 1
    distiller = build("dist", CTX)
    terms = distiller({"logits": torch.randn(1, 6)}, {"logits": torch.randn(1, 6)}, make_batch(1))
    assert terms["intra"].item() == pytest.approx(16.0)


def test_gradients_reach_student_logits_but_not_teacher():
    distiller = build("dist", CTX)
    check_gradients(
        distiller, {"logits": torch.randn(4, 6)}, {"logits": torch.randn(4, 6)}, make_batch(4)
    )


def test_training_a_small_student_reduces_the_loss():
    losses, _, _ = logit_student_losses(build("dist", CTX), lr=0.05, num_classes=6)
    assert_trains(losses, 0.3)
