"""The example distiller's tests, written with kdcore's test kit (``kdcore.testing``, which pytest
loads by itself once kdcore is installed) exactly as a third-party package would."""

import torch
from torch import nn

from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context, train_losses
from kdcore_example import LogitMatchingParams
from kdcore_example.logit_matching import LogitMatching


def build(center: bool = True) -> LogitMatching:
    return LogitMatching(LogitMatchingParams(center=center), make_distiller_context({}, {}, num_classes=5))


def test_loss_is_the_mean_squared_difference_of_centred_logits():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 5), torch.randn(4, 5)
    expected = sum(((s - s.mean()) - (t - t.mean())).pow(2).sum() for s, t in zip(student, teacher)) / 20
    loss = build()({"logits": student}, {"logits": teacher}, make_batch(4, num_classes=5))["mse"]
    assert torch.allclose(loss, expected)


def test_gradients_reach_the_student_only():
    torch.manual_seed(1)
    check_gradients(build(), {"logits": torch.randn(4, 5)}, {"logits": torch.randn(4, 5)}, make_batch(4, num_classes=5))


def test_a_student_learns_the_teachers_logits():
    torch.manual_seed(2)
    inputs = torch.randn(8, 3)
    teacher = {"logits": nn.Linear(3, 5)(inputs).detach()}
    losses = train_losses(build(), nn.Linear(3, 5), lambda net: {"logits": net(inputs)}, teacher,
                          make_batch(8, num_classes=5))
    assert_trains(losses, factor=0.1)
