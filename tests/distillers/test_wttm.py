import math

import pytest
import torch
import torch.nn.functional as F
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context
from distiller_testkit import build, logit_student_losses


from kdcore_distillers.published import PUBLISHED_CE_WEIGHTS
from tests.conftest import published_weights

CTX = make_distiller_context({}, {}, num_classes=5)

PUBLISHED = published_weights()



def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def wttm_by_hand(s_logits, t_logits, gamma):
    """Per sample: raise the teacher's probabilities to the power γ, normalise, KL to the
    student's plain softmax, weighted by the sum of the powers."""
    total = 0.0
    for s_row, t_row in zip(s_logits.tolist(), t_logits.tolist()):
        p_s = softmax(s_row)
        powered = [p**gamma for p in softmax(t_row)]
        weight = sum(powered)
        p_hat = [q / weight for q in powered]
        total += weight * sum(q * math.log(q / s) for q, s in zip(p_hat, p_s))
    return total / len(s_logits)


def test_default_gamma_and_weight():
    assert build("wttm", CTX).gamma == 0.2
    assert (PUBLISHED["wttm"], PUBLISHED_CE_WEIGHTS["wttm"]) == (4.0, 1.0)


@pytest.mark.parametrize("gamma", [0.1, 0.2, 0.5])
def test_matches_explicit_powers_of_the_teacher_probabilities(gamma):
    torch.manual_seed(0)
    s_logits = 3 * torch.randn(6, 5, dtype=torch.float64)
    t_logits = 4 * torch.randn(6, 5, dtype=torch.float64)
    distiller = build("wttm", CTX, gamma=gamma)
    terms = distiller({"logits": s_logits}, {"logits": t_logits}, make_batch(6))
    assert set(terms) == {"wttm"}
    assert terms["wttm"].item() == pytest.approx(wttm_by_hand(s_logits, t_logits, gamma), rel=1e-10)


def test_gamma_one_is_plain_kd_at_temperature_one():
    # U_1(p) = 1 and p̂ = p: KL(p_t ‖ p_s) averaged over the batch
    torch.manual_seed(1)
    s_logits = torch.randn(4, 5, dtype=torch.float64)
    t_logits = torch.randn(4, 5, dtype=torch.float64)
    terms = build("wttm", CTX, gamma=1.0)({"logits": s_logits}, {"logits": t_logits}, make_batch(4))
    kd = F.kl_div(F.log_softmax(s_logits, 1), F.log_softmax(t_logits, 1), log_target=True,
                  reduction="batchmean")
    assert terms["wttm"].item() == pytest.approx(kd.item(), rel=1e-12)


def test_zero_when_the_student_is_the_teacher_at_temperature_one_over_gamma():
    # p̂_t = softmax(γ·z_t), so a student with logits γ·z_t matches it exactly
    torch.manual_seed(2)
    t_logits = 5 * torch.randn(4, 5, dtype=torch.float64)
    distiller = build("wttm", CTX, gamma=0.25)
    terms = distiller({"logits": 0.25 * t_logits}, {"logits": t_logits}, make_batch(4))
    assert terms["wttm"].item() == pytest.approx(0.0, abs=1e-12)


def test_the_weight_is_largest_for_a_uniform_teacher():
    # uniform teacher: U_γ = K·K^(−γ) = K^(1−γ); a confident one: U_γ close to 1
    distiller = build("wttm", CTX, gamma=0.2)
    student = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    uniform = distiller({"logits": student}, {"logits": torch.zeros(1, 5, dtype=torch.float64)},
                        make_batch(1))
    log_p_s = F.log_softmax(student, 1)
    kl_to_uniform = (0.2 * (math.log(0.2) - log_p_s)).sum().item()
    assert uniform["wttm"].item() == pytest.approx(5**0.8 * kl_to_uniform, rel=1e-12)


def test_finite_for_a_very_confident_teacher():
    distiller = build("wttm", CTX)
    confident = torch.tensor([[800.0, 0.0, 0.0, 0.0, 0.0]])
    terms = distiller({"logits": torch.zeros(1, 5)}, {"logits": confident}, make_batch(1))
    assert torch.isfinite(terms["wttm"])


def test_gradients_reach_student_logits_but_not_teacher():
    distiller = build("wttm", CTX)
    check_gradients(
        distiller, {"logits": torch.randn(4, 5)}, {"logits": torch.randn(4, 5)}, make_batch(4)
    )


def test_training_a_small_student_reduces_the_loss():
    losses, _, _ = logit_student_losses(build("wttm", CTX), lr=0.05)
    assert_trains(losses, 0.3)
