"""Perturbed Bayes targets (the paper's Set 1) and the two notions of closeness to p*."""

import math

import pytest
import torch

from kdcore.api import DistillerContext
from kdcore.nn import Batch
from kdcore.engine.evaluate import _batch_sums
from kdcore_toy.noisy_bayes import perturb

TRUE = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]], dtype=torch.float64)
LABELS = torch.tensor([0, 2])


def distances(estimate, true=TRUE):
    mse = (estimate - true).pow(2).sum(1).mean().item()
    ce = -(true * estimate.log()).sum(1).mean().item()
    return mse, ce


def test_worked_example_closer_in_cross_entropy_but_farther_in_squared_error():
    """p* = (0.7, 0.2, 0.1). q1 = (0.7, 0.28, 0.02): MSE 0.0128, CE 0.8955.
    q2 = (0.6, 0.25, 0.15): MSE 0.0150, CE 0.8246. q2 wins in CE, q1 in MSE."""
    true = torch.tensor([[0.7, 0.2, 0.1]])
    q1, q2 = torch.tensor([[0.7, 0.28, 0.02]]), torch.tensor([[0.6, 0.25, 0.15]])
    hand = {
        "q1": (0.08**2 + 0.08**2, -(0.7 * math.log(0.7) + 0.2 * math.log(0.28) + 0.1 * math.log(0.02))),
        "q2": (0.1**2 + 0.05**2 + 0.05**2, -(0.7 * math.log(0.6) + 0.2 * math.log(0.25) + 0.1 * math.log(0.15))),
    }
    assert hand["q1"][0] == pytest.approx(0.0128) and hand["q1"][1] == pytest.approx(0.8955, abs=1e-4)
    assert hand["q2"][0] == pytest.approx(0.0150) and hand["q2"][1] == pytest.approx(0.8246, abs=1e-4)
    for name, q in (("q1", q1), ("q2", q2)):
        sums = _batch_sums(q.log(), torch.tensor([0]), true)  # kdcore's own metrics
        assert sums["mse_to_true"].item() == pytest.approx(hand[name][0], rel=1e-5)
        assert sums["ce_to_true"].item() == pytest.approx(hand[name][1], rel=1e-5)
    assert hand["q2"][1] < hand["q1"][1] and hand["q1"][0] < hand["q2"][0]


def test_mix_and_temperature_by_hand():
    mixed = perturb(TRUE, LABELS, "mix", 0.4, seed=0)
    assert torch.allclose(mixed[0], torch.tensor([0.82, 0.12, 0.06], dtype=torch.float64))
    assert torch.allclose(mixed[1], torch.tensor([0.12, 0.30, 0.58], dtype=torch.float64))
    sharp = perturb(TRUE, LABELS, "temperature", 0.5, seed=0)
    squares = TRUE.pow(2)
    assert torch.allclose(sharp, squares / squares.sum(1, keepdim=True))


def test_random_kinds_are_seeded_normalised_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    for kind, level in (("additive", 0.1), ("dirichlet", 5.0)):
        first = perturb(TRUE, LABELS, kind, level, seed=7)
        assert torch.equal(first, perturb(TRUE, LABELS, kind, level, seed=7))
        assert not torch.equal(first, perturb(TRUE, LABELS, kind, level, seed=8))
        assert torch.allclose(first.sum(1), torch.ones(2, dtype=torch.float64)) and bool((first > 0).all())
    assert torch.equal(torch.rand(1), expected_next)
    many = perturb(TRUE[:1].expand(20000, 3), LABELS[:1].expand(20000), "dirichlet", 5.0, seed=0)
    assert torch.allclose(many.mean(0), TRUE[0], atol=0.01)  # the Dirichlet's mean is p*


def test_perturbation_kinds_rank_targets_differently_in_mse_and_ce():
    """With one-hot mixing alone both distances grow together; additive noise, clipped at a
    tiny probability, costs little squared error but much cross-entropy."""
    generator = torch.Generator().manual_seed(0)
    true = torch.softmax(torch.randn(4000, 3, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.multinomial(true, 1, generator=generator).flatten()
    mix = distances(perturb(true, labels, "mix", 0.3, seed=0), true)
    additive = distances(perturb(true, labels, "additive", 0.15, seed=0), true)
    assert additive[0] < mix[0] and additive[1] > mix[1]


def test_distiller_loss_summary_and_no_teacher(registry):
    spec = registry.get("distiller", "noisy-bayes").spec
    params = spec.params(kind="mix", level=0.4)
    ctx = DistillerContext(student=None, teacher=None, student_shapes={}, teacher_shapes={}, num_classes=3,
                           train_size=2, train_labels=LABELS, epochs=1, train_true_probs=TRUE.float())
    distiller = spec.builder()(params, ctx)
    assert distiller.teacher_taps == ()
    targets = perturb(TRUE, LABELS, "mix", 0.4, seed=0)
    mse, ce = distances(targets)
    assert distiller.summary() == pytest.approx({"mse_to_true": mse, "ce_to_true": ce})
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.5, 0.2]])
    batch = Batch(inputs=torch.zeros(2, 1), labels=LABELS, index=torch.tensor([1, 0]), epoch=0, epochs=1)
    loss = distiller({"logits": logits}, {}, batch)["kl"]
    q = logits.log_softmax(1).double()
    by_hand = sum((targets[i] * (targets[i].log() - q[j])).sum() for j, i in enumerate([1, 0])) / 2
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_levels_are_validated(registry):
    spec = registry.get("distiller", "noisy-bayes").spec
    with pytest.raises(ValueError, match=r"mix needs a level in \[0, 1\]"):
        spec.params(kind="mix", level=1.5)
    with pytest.raises(ValueError, match="temperature needs a level above 0"):
        spec.params(kind="temperature", level=0)
