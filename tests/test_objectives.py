"""Teacher objectives against hand computations and the decomposition behind the paper."""

import math

import pytest
import torch

from kdcore.api import ObjectiveContext


def build(registry, name, **params):
    spec = registry.get("objective", name).spec
    return spec.builder()(spec.params(**params), ObjectiveContext(num_classes=3))


LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.5]])
LABELS = torch.tensor([0, 1])


def softmax_by_hand(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_mse_is_squared_distance_of_softmax_to_one_hot_averaged_over_batch(registry):
    expected = 0.0
    for row, label in zip(LOGITS.tolist(), LABELS.tolist()):
        q = softmax_by_hand(row)
        expected += sum((q[k] - (1.0 if k == label else 0.0)) ** 2 for k in range(3))
    expected /= 2
    assert build(registry, "mse")(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)
    assert build(registry, "mse", reduction="mean")(LOGITS, LABELS).item() == pytest.approx(expected / 3, rel=1e-6)
    assert build(registry, "mse", scale=2.5)(LOGITS, LABELS).item() == pytest.approx(expected * 2.5, rel=1e-6)


def test_expected_mse_to_labels_is_mse_to_bayes_plus_a_constant(registry):
    """Σ_y p*(y) ‖e_y − q‖² = ‖p* − q‖² + 1 − ‖p*‖²: the objective ranks teachers as MSE to p*."""
    mse = build(registry, "mse")
    true_probs = torch.tensor([0.6, 0.3, 0.1])
    for logits in (torch.tensor([[1.0, 0.2, -0.3]]), torch.tensor([[0.0, 2.0, 0.0]])):
        expected_loss = sum(true_probs[y] * mse(logits, torch.tensor([y])) for y in range(3))
        q = logits.softmax(1)[0]
        decomposition = (true_probs - q).pow(2).sum() + 1 - true_probs.pow(2).sum()
        assert expected_loss.item() == pytest.approx(decomposition.item(), rel=1e-6)


def test_cross_entropy_matches_hand_computation_and_label_smoothing(registry):
    expected = -sum(math.log(softmax_by_hand(r)[y]) for r, y in zip(LOGITS.tolist(), LABELS.tolist())) / 2
    assert build(registry, "ce")(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)
    eps = 0.1
    smoothed = 0.0
    for row, label in zip(LOGITS.tolist(), LABELS.tolist()):
        q = softmax_by_hand(row)
        target = [eps / 3 + (1 - eps) * (k == label) for k in range(3)]
        smoothed -= sum(t * math.log(p) for t, p in zip(target, q))
    assert build(registry, "ce", label_smoothing=eps)(LOGITS, LABELS).item() == pytest.approx(smoothed / 2, rel=1e-6)


def test_mse_gradient_vanishes_at_the_one_hot_optimum_only_in_the_limit(registry):
    logits = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    build(registry, "mse")(logits, torch.tensor([2])).backward()
    assert logits.grad[0, 2] < 0 < logits.grad[0, 0]
