"""Logit standardisation (Sun et al., CVPR 2024) as the ``standardize`` param of kd and dkd."""

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context
from distiller_testkit import build, logit_student_losses


from kdcore_distillers import DKDParams, KDParams
from kdcore_distillers.dkd import binary_log_probs, kl_batchmean, non_target_log_probs
from kdcore_distillers.kd import standardize
from kdcore_distillers.published import (
    DKD_STANDARDIZED,
    KD_STANDARDIZED,
    STANDARDIZED_CE_WEIGHTS,
    STANDARDIZED_WEIGHTS,
)

CTX = make_distiller_context({}, {}, num_classes=5)



def z_scores(row):
    """A sample's logits minus their mean, over their sample standard deviation plus 1e-7."""
    mean, spread = statistics.fmean(row), statistics.stdev(row)
    return [(v - mean) / (spread + 1e-7) for v in row]


def softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def kd_by_hand(s_logits, t_logits, T):
    total = 0.0
    for s_row, t_row in zip(s_logits.tolist(), t_logits.tolist()):
        p_s, p_t = softmax(z_scores(s_row), T), softmax(z_scores(t_row), T)
        total += sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
    return T**2 * total / len(s_logits)


def dkd_by_hand(s_logits, t_logits, labels, T):
    tckd = nckd = 0.0
    for s_row, t_row, y in zip(s_logits.tolist(), t_logits.tolist(), labels.tolist()):
        p_s, p_t = softmax(z_scores(s_row), T), softmax(z_scores(t_row), T)
        b_s, b_t = [p_s[y], 1 - p_s[y]], [p_t[y], 1 - p_t[y]]
        tckd += sum(t * math.log(t / s) for t, s in zip(b_t, b_s))
        rest_s = [p / (1 - p_s[y]) for k, p in enumerate(p_s) if k != y]
        rest_t = [p / (1 - p_t[y]) for k, p in enumerate(p_t) if k != y]
        nckd += sum(t * math.log(t / s) for t, s in zip(rest_t, rest_s))
    return T**2 * tckd / len(labels), T**2 * nckd / len(labels)


def test_standardize_uses_the_sample_standard_deviation_plus_an_epsilon():
    torch.manual_seed(0)
    logits = 5 * torch.randn(4, 7, dtype=torch.float64) + 3
    expected = torch.tensor([z_scores(row) for row in logits.tolist()], dtype=torch.float64)
    assert torch.allclose(standardize(logits), expected, rtol=1e-12, atol=1e-12)
    # not the population deviation: that would give unit variance with K, not K − 1
    assert standardize(logits).var(dim=1, unbiased=True).tolist() == pytest.approx([1.0] * 4)


def test_standardize_defaults_the_temperature_to_the_papers_base_temperature():
    assert KDParams().temperature == 4.0 and DKDParams().temperature == 4.0
    assert KDParams(standardize=True).temperature == 2.0
    assert DKDParams(standardize=True).temperature == 2.0
    assert KDParams(standardize=True, temperature=3.0).temperature == 3.0
    assert DKDParams(standardize=True, temperature=4.0).temperature == 4.0
    assert KDParams(standardize=False, temperature=3.0).temperature == 3.0


def test_published_weights_of_the_standardized_runs():
    assert STANDARDIZED_WEIGHTS == {"kd": 9.0, "dkd": 9.0}
    assert STANDARDIZED_CE_WEIGHTS == {"kd": 0.1, "dkd": 1.0}
    assert KD_STANDARDIZED[("resnet32x4", "resnet8x4")] == (2.0, 9.0)
    assert KD_STANDARDIZED[("wrn_40_2", "wrn_16_2")] == (2.0, 9.0)
    assert DKD_STANDARDIZED[("resnet32x4", "resnet8x4")] == (2.0, 9.0, 8.0)
    assert DKD_STANDARDIZED[("wrn_40_2", "wrn_16_2")] == (2.0, 12.0, 2.0)


@pytest.mark.parametrize("T", [None, 3.0])
def test_kd_matches_explicit_z_scores_and_probabilities(T):
    torch.manual_seed(1)
    s_logits = 3 * torch.randn(4, 5, dtype=torch.float64)
    t_logits = 6 * torch.randn(4, 5, dtype=torch.float64) + 2
    params = {"standardize": True} | ({} if T is None else {"temperature": T})
    terms = build("kd", CTX, **params)({"logits": s_logits}, {"logits": t_logits}, make_batch(4))
    assert terms["kd"].item() == pytest.approx(kd_by_hand(s_logits, t_logits, T or 2.0), rel=1e-10)


def test_dkd_matches_explicit_z_scores_and_probabilities():
    torch.manual_seed(2)
    s_logits = 3 * torch.randn(4, 5, dtype=torch.float64)
    t_logits = 6 * torch.randn(4, 5, dtype=torch.float64)
    labels = torch.tensor([0, 3, 4, 3])
    distiller = build("dkd", CTX, standardize=True, beta=2.0)
    terms = distiller(
        {"logits": s_logits}, {"logits": t_logits}, make_batch(4, labels=labels, epoch=9)
    )
    tckd, nckd = dkd_by_hand(s_logits, t_logits, labels, 2.0)
    warmup = 10 / 20
    assert terms["tckd"].item() == pytest.approx(warmup * tckd, rel=1e-10)
    assert terms["nckd"].item() == pytest.approx(warmup * 2.0 * nckd, rel=1e-10)


def test_only_the_relations_of_the_logits_count():
    # the Z-score removes each sample's offset and scale: a student whose logits are the
    # teacher's divided by 3 and shifted has (almost) no loss, and any per-sample affine map
    # with a positive scale leaves the loss unchanged
    torch.manual_seed(3)
    t_logits = 4 * torch.randn(6, 5, dtype=torch.float64)
    s_logits = torch.randn(6, 5, dtype=torch.float64)
    scale = torch.rand(6, 1, dtype=torch.float64) + 0.2
    shift = torch.randn(6, 1, dtype=torch.float64)
    for name in ("kd", "dkd"):
        distiller = build(name, CTX, standardize=True)
        batch = make_batch(6, num_classes=5)
        near = distiller({"logits": t_logits / 3 + 1}, {"logits": t_logits}, batch)
        assert all(abs(v.item()) < 1e-9 for v in near.values())
        base = distiller({"logits": s_logits}, {"logits": t_logits}, batch)
        moved = distiller({"logits": scale * s_logits + shift}, {"logits": t_logits}, batch)
        for term in base:
            assert moved[term].item() == pytest.approx(base[term].item(), rel=1e-6)


def test_without_standardize_kd_and_dkd_are_unchanged_bit_for_bit():
    torch.manual_seed(4)
    s_logits, t_logits = 3 * torch.randn(8, 5), 3 * torch.randn(8, 5)
    labels = torch.arange(8) % 5
    kd = build("kd", CTX)({"logits": s_logits}, {"logits": t_logits}, make_batch(8, num_classes=5))
    reference = F.kl_div(
        F.log_softmax(s_logits / 4.0, dim=1), F.log_softmax(t_logits / 4.0, dim=1),
        log_target=True, reduction="batchmean",
    ) * 16.0
    assert torch.equal(kd["kd"], reference)
    dkd = build("dkd", CTX)(
        {"logits": s_logits}, {"logits": t_logits}, make_batch(8, num_classes=5, epoch=30)
    )
    tckd = kl_batchmean(
        binary_log_probs(t_logits, labels, 4.0), binary_log_probs(s_logits, labels, 4.0)
    )
    nckd = kl_batchmean(
        non_target_log_probs(t_logits, labels, 4.0), non_target_log_probs(s_logits, labels, 4.0)
    )
    assert torch.equal(dkd["tckd"], 16.0 * 1.0 * tckd)
    assert torch.equal(dkd["nckd"], 16.0 * 8.0 * nckd)


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_gradients_reach_student_logits_but_not_teacher(name):
    distiller = build(name, CTX, standardize=True)
    check_gradients(
        distiller, {"logits": torch.randn(4, 5)}, {"logits": torch.randn(4, 5)}, make_batch(4)
    )


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_training_a_small_student_reduces_the_loss(name):
    losses, _, _ = logit_student_losses(build(name, CTX, standardize=True), lr=0.02, teacher_labels=True,
                                        epoch=30, seed=5)
    assert_trains(losses, 0.3)
