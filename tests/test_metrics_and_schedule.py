"""Evaluation metrics, learning-rate schedules and the semi-supervised cross-entropy by hand."""

import math

import pytest
import torch

from kdcore.nn import Split
from kdcore.config.schema import ScheduleConfig
from kdcore.distill.loss import masked_cross_entropy as _cross_entropy
from kdcore.engine.accelerator import Accelerator, AcceleratorSettings
from kdcore.engine.evaluate import evaluate
from kdcore.engine.schedule import learning_rate


class Fixed(torch.nn.Module):
    """Returns stored logits for the sample indices it is given as inputs."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, index):
        return self.logits[index.long().flatten()]


def test_evaluate_matches_hand_computed_metrics():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2, 1, 0])
    true_probs = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [1 / 3, 1 / 3, 1 / 3]])
    split = Split(inputs=torch.arange(4.0)[:, None], labels=labels, true_probs=true_probs)
    metrics = evaluate(Fixed(logits), split, Accelerator.resolve(AcceleratorSettings(device="cpu")), batch_size=3)
    q = logits.softmax(1)
    assert metrics["top1"] == pytest.approx(25.0)  # only sample 0 is right
    assert metrics["top5"] == pytest.approx(100.0)  # K = 3: top-5 is top-3
    nll = -sum(math.log(q[i, labels[i]]) for i in range(4)) / 4
    assert metrics["nll"] == pytest.approx(nll, rel=1e-5)
    brier = sum(((q[i] - torch.eye(3)[labels[i]]) ** 2).sum().item() for i in range(4)) / 4
    assert metrics["brier"] == pytest.approx(brier, rel=1e-5)
    assert metrics["mse_to_true"] == pytest.approx(((q - true_probs) ** 2).sum(1).mean().item(), rel=1e-5)
    ce = -sum((true_probs[i] * q[i].log()).sum().item() for i in range(4)) / 4
    assert metrics["ce_to_true"] == pytest.approx(ce, rel=1e-5)
    bins: dict[int, list[tuple[float, bool]]] = {}
    for i in range(4):
        confidence, predicted = q[i].max(0)
        bins.setdefault(min(int(confidence * 15), 14), []).append((confidence.item(), predicted.item() == labels[i].item()))
    ece = sum(abs(sum(c for c, _ in members) - sum(ok for _, ok in members)) for members in bins.values()) / 4
    assert metrics["ece"] == pytest.approx(ece, rel=1e-5)


def test_multistep_decays_after_each_milestone_like_repdistiller():
    schedule = ScheduleConfig(name="multistep", milestones=[150, 180, 210], gamma=0.1)
    rates = [learning_rate(0.05, schedule, epoch, 240) for epoch in (0, 149, 150, 179, 180, 210, 239)]
    assert rates == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005, 0.00005, 0.00005])


def test_cosine_goes_from_base_to_min_lr():
    schedule = ScheduleConfig(name="cosine", min_lr=0.001)
    assert learning_rate(0.1, schedule, 0, 100) == pytest.approx(0.1)
    assert learning_rate(0.1, schedule, 50, 100) == pytest.approx(0.0505)
    assert learning_rate(0.1, schedule, 100, 100) == pytest.approx(0.001)
    assert learning_rate(0.1, ScheduleConfig(), 77, 100) == 0.1


def test_multistep_without_milestones_is_rejected():
    with pytest.raises(ValueError, match="multistep needs milestones"):
        ScheduleConfig(name="multistep")


def test_cross_entropy_uses_only_labeled_samples():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    mask = torch.tensor([True, False, True, False, False])
    expected = torch.nn.functional.cross_entropy(logits[mask], labels[mask])
    assert _cross_entropy(logits, labels, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    assert _cross_entropy(logits, labels, torch.zeros(5, dtype=torch.bool)).item() == 0.0


def test_distillers_never_see_the_labels_of_unlabeled_samples():
    from kdcore.distill.student import _usable_labels

    split = Split(inputs=torch.zeros(4, 1), labels=torch.tensor([3, 1, 2, 0]),
                  labeled=torch.tensor([True, False, True, False]))
    assert _usable_labels(split).tolist() == [3, -1, 2, -1]
    assert _usable_labels(Split(inputs=torch.zeros(2, 1), labels=torch.tensor([1, 0]))).tolist() == [1, 0]
