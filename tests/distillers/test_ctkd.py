import math
import statistics

import pytest
import torch
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context
from distiller_testkit import build, logit_student_losses


CTX = make_distiller_context({}, {}, num_classes=5)



def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def softmax(values, T):
    exps = [math.exp(v / T) for v in values]
    return [e / sum(exps) for e in exps]


def zscore(row):
    mean, sd = statistics.fmean(row), statistics.stdev(row)
    return [(v - mean) / (sd + 1e-7) for v in row]


def kd_by_hand(s_logits, t_logits, T, standardize=False):
    """T² · mean over samples of Σ_k p_t log(p_t / p_s), one sample at a time."""
    total = 0.0
    for s_row, t_row in zip(s_logits.tolist(), t_logits.tolist()):
        if standardize:
            s_row, t_row = zscore(s_row), zscore(t_row)
        p_s, p_t = softmax(s_row, T), softmax(t_row, T)
        total += sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
    return T * T * total / len(s_logits)


# CTKD's recorded GRL factors (the signed ``decay_value`` of epochs 1 to 8 in the logs of
# sunshangquan/logit-standardization-KD, logs/CTKD/*.txt), then -1 from epoch 10 on
LOGGED_DECAY = [-0.02447174185242318, -0.09549150281252627, -0.20610737385376343,
                -0.3454915028125263, -0.5, -0.6545084971874737, -0.7938926261462365,
                -0.9045084971874737]


def test_curriculum_is_the_published_cosine_ramp_over_ten_epochs_counted_from_one():
    distiller = build("ctkd", CTX)
    for epoch, decay in enumerate(LOGGED_DECAY):  # 0-based kdcore epochs
        assert distiller.curriculum(epoch) == pytest.approx(-decay, abs=1e-12)
    assert distiller.curriculum(8) == pytest.approx(0.5 * (1 - math.cos(0.9 * math.pi)))
    for epoch in (9, 10, 50, 239):
        assert distiller.curriculum(epoch) == pytest.approx(1.0)
    shifted = build("ctkd", CTX, lambda_min=0.2, lambda_max=0.6, curriculum_epochs=4)
    assert shifted.curriculum(1) == pytest.approx(0.2 + 0.4 * 0.5)  # halfway at epoch 2 of 4
    assert build("ctkd", CTX, curriculum_epochs=0).curriculum(0) == 1.0


def test_temperature_starts_at_ctkds_initial_value_and_stays_within_its_bounds():
    distiller = build("ctkd", CTX)
    assert distiller.temperature().item() == pytest.approx(1 + 20 * sigmoid(1.0), rel=1e-6)
    assert distiller.summary() == {"temperature": pytest.approx(15.6217, abs=1e-3)}
    with torch.no_grad():
        distiller.raw_temperature.fill_(40.0)
        assert distiller.temperature().item() == pytest.approx(21.0)
        distiller.raw_temperature.fill_(-40.0)
        assert distiller.temperature().item() == pytest.approx(1.0)
    other = build("ctkd", CTX, t_start=2.0, t_range=8.0, raw_init=0.0)
    assert other.temperature().item() == pytest.approx(6.0)


@pytest.mark.parametrize("standardize", [False, True])
def test_loss_is_kd_at_the_learnt_temperature(standardize):
    torch.manual_seed(0)
    s_logits = 3 * torch.randn(6, 5, dtype=torch.float64)
    t_logits = 3 * torch.randn(6, 5, dtype=torch.float64)
    distiller = build("ctkd", CTX, raw_init=-0.7, standardize=standardize)
    terms = distiller({"logits": s_logits}, {"logits": t_logits}, make_batch(6, epoch=3))
    assert set(terms) == {"kd"} and terms["kd"].shape == ()
    T = 1 + 20 * sigmoid(-0.7)
    assert terms["kd"].item() == pytest.approx(kd_by_hand(s_logits, t_logits, T, standardize), rel=1e-6)


def test_gradients_reach_the_student_and_the_temperature_but_not_the_teacher():
    distiller = build("ctkd", CTX)
    check_gradients(distiller, {"logits": torch.randn(4, 5)}, {"logits": torch.randn(4, 5)},
                    make_batch(4))
    assert distiller.raw_temperature.grad.abs().item() > 0


@pytest.mark.parametrize("epoch", [0, 4, 20])
def test_temperature_gradient_is_the_reversed_loss_gradient_scaled_by_lambda(epoch):
    torch.manual_seed(1)
    s_logits = 3 * torch.randn(8, 5, dtype=torch.float64)
    t_logits = 3 * torch.randn(8, 5, dtype=torch.float64)
    distiller = build("ctkd", CTX, raw_init=0.3).double()
    student = s_logits.clone().requires_grad_(True)
    distiller({"logits": student}, {"logits": t_logits}, make_batch(8, epoch=epoch))["kd"].backward()
    # d loss / d T by central differences of the hand computation, times dT/dθ = 20 σ'(θ)
    T, h = 1 + 20 * sigmoid(0.3), 1e-5
    dloss_dT = (kd_by_hand(s_logits, t_logits, T + h) - kd_by_hand(s_logits, t_logits, T - h)) / (2 * h)
    dT_dtheta = 20 * sigmoid(0.3) * (1 - sigmoid(0.3))
    lam = distiller.curriculum(epoch)
    assert distiller.raw_temperature.grad.item() == pytest.approx(-lam * dloss_dT * dT_dtheta, rel=1e-6)
    # the student's gradient is plain KD's at that temperature: the reversal is the temperature's only
    fixed = build("kd", CTX, temperature=T)
    plain = s_logits.clone().requires_grad_(True)
    fixed({"logits": plain}, {"logits": t_logits}, make_batch(8))["kd"].backward()
    assert torch.allclose(student.grad, plain.grad, rtol=1e-6, atol=1e-12)


def test_an_sgd_step_moves_the_temperature_up_the_loss():
    # the student's optimiser descends the reversed gradient: the loss at the new T is higher
    torch.manual_seed(2)
    s_logits, t_logits = 2 * torch.randn(16, 5), 2 * torch.randn(16, 5)
    distiller = build("ctkd", CTX, raw_init=-1.0)
    optimiser = torch.optim.SGD(distiller.parameters(), lr=1.0)
    batch = make_batch(16, epoch=30)
    before = distiller({"logits": s_logits}, {"logits": t_logits}, batch)["kd"]
    optimiser.zero_grad()
    before.backward()
    optimiser.step()
    after = distiller({"logits": s_logits}, {"logits": t_logits}, batch)["kd"]
    assert after.item() > before.item()


def test_training_a_small_student_reduces_the_loss():
    losses, _, _ = logit_student_losses(build("ctkd", CTX), lr=0.02, epoch=30)
    assert_trains(losses, 0.3)
