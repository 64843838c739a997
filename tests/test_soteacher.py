"""The soteacher objective against independent computations of its three terms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.api import ObjectiveContext
from kdcore.nn import Batch
from kdcore_objectives import SoTeacherParams, kdcore_objectives
from kdcore_objectives.soteacher import SoTeacher, lipschitz_layers, lipschitz_penalty

torch.set_num_threads(1)

K = 4


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, K)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def tiny_model(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    model = Tiny()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([0.5, -2.0, 1.5]))
        model.bn.running_var.copy_(torch.tensor([0.25, 0.25, 1.0]))  # |γ|/σ = 1, 4, 1.5
    return model


def make(model=None, train_size=0, epochs=3, **params) -> SoTeacher:
    return SoTeacher(SoTeacherParams(**params), ObjectiveContext(K, model=model, train_size=train_size, epochs=epochs))


def batch(index, epoch, epochs=3, labels=None) -> Batch:
    index = torch.as_tensor(index)
    labels = torch.zeros(len(index), dtype=torch.long) if labels is None else labels
    return Batch(inputs=torch.zeros(len(index)), labels=labels, index=index, epoch=epoch, epochs=epochs)


def test_defaults_are_the_authors_soteacher_settings():
    # shwinshaker/SoTeacher run_teacher.sh: --lip_alpha 0.00001 --consist_alpha 1.0 --consist_scheduler linear
    params = SoTeacherParams()
    assert (params.lipschitz_weight, params.consistency_weight, params.consistency_schedule) == (1e-5, 1.0, "linear")


def test_registered_with_its_params():
    specs = {spec.name: spec for spec in kdcore_objectives()}
    assert specs["soteacher"].params is SoTeacherParams
    assert specs["soteacher"].builder() is SoTeacher


def test_lipschitz_penalty_matches_layer_bounds_computed_elementwise():
    model = tiny_model()
    conv = sum(abs(w) for w in model.conv.weight.detach().flatten().tolist())  # entry-wise l1 of the kernel
    # the l1 operator norm: the largest ||W e_j||_1 over the basis vectors e_j
    basis = torch.eye(model.fc.in_features)
    linear = max(float((model.fc.weight.detach() @ basis[j]).abs().sum()) for j in range(len(basis)))
    assert linear == pytest.approx(float(torch.linalg.matrix_norm(model.fc.weight.detach(), ord=1)))
    bn = max(abs(g) / (v + model.bn.eps) ** 0.5 for g, v in zip(model.bn.weight.tolist(), model.bn.running_var.tolist()))
    assert bn == pytest.approx(2.0 / (0.25 + 1e-5) ** 0.5)
    layers = lipschitz_layers(model)
    assert layers == [model.conv, model.bn, model.fc]
    assert float(lipschitz_penalty(layers).detach()) == pytest.approx(conv + linear + bn, rel=1e-6)


def test_lipschitz_term_is_weighted_and_sends_gradients_to_the_weights():
    model = tiny_model()
    objective = make(model, lipschitz_weight=0.5, consistency_weight=0.0)
    terms = objective(torch.zeros(2, K), batch([0, 1], 0))
    assert set(terms) == {"ce", "lipschitz"}
    assert float(terms["lipschitz"].detach()) == pytest.approx(0.5 * float(lipschitz_penalty(lipschitz_layers(model)).detach()))
    terms["lipschitz"].backward()
    assert model.conv.weight.grad.abs().sum() > 0 and model.fc.weight.grad.abs().sum() > 0
    assert model.bn.weight.grad[1] != 0 and model.bn.weight.grad[0] == 0  # only the max channel
    assert model.bn.running_var.grad is None


def reference_consistency(batches, train_size, weight, schedule, epochs):
    """A per-sample loop: each sample's ensemble as a list, tau = 1 at its first visit, then
    1 / (epoch + 2); the loss of a batch uses the ensembles from before its update."""
    ensembles: dict[int, list[float]] = {}
    losses = []
    for epoch, index, logits in batches:
        scale = 0.0 if epoch == 0 else weight * ((epoch + 1) / epochs if schedule == "linear" else 1.0)
        probabilities = torch.softmax(logits.double(), dim=1).tolist()
        total = 0.0
        for i, p in zip(index, probabilities):
            if i in ensembles:
                total += sum((a - b) ** 2 for a, b in zip(p, ensembles[i]))
        losses.append(scale * total / len(index))
        for i, p in zip(index, probabilities):
            if i not in ensembles:
                ensembles[i] = list(p)
            else:
                tau = 1.0 / (epoch + 2)
                ensembles[i] = [(1 - tau) * s + tau * q for s, q in zip(ensembles[i], p)]
    return losses, ensembles


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_consistency_term_matches_a_per_sample_temporal_ensemble(schedule):
    generator = torch.Generator().manual_seed(1)
    train_size, epochs = 6, 4
    batches = []
    for epoch in range(epochs):
        order = torch.randperm(train_size, generator=generator).tolist()
        if epoch == 0:
            order = order[:4]  # two samples first seen in epoch 1 (as with drop_last)
        for start in range(0, len(order), 3):
            index = order[start:start + 3]
            batches.append((epoch, index, 3 * torch.randn(len(index), K, generator=generator)))
    objective = make(None, train_size, epochs, lipschitz_weight=0.0, consistency_weight=0.7,
                     consistency_schedule=schedule)
    expected, ensembles = reference_consistency(batches, train_size, 0.7, schedule, epochs)
    for (epoch, index, logits), want in zip(batches, expected, strict=True):
        got = objective(logits, batch(index, epoch, epochs))["consistency"]
        assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-7)
    for i, values in ensembles.items():
        assert objective.ensemble[i].tolist() == pytest.approx(values, rel=1e-5)
    assert objective.seen.all()
    assert objective.consistency_scale(0, epochs) == 0.0
    assert objective.consistency_scale(epochs - 1, epochs) == pytest.approx(0.7)


def test_consistency_gradient_reaches_the_logits_not_the_ensemble():
    objective = make(None, 2, 2, lipschitz_weight=0.0)
    objective(torch.randn(2, K), batch([0, 1], 0, 2))
    logits = torch.randn(2, K, requires_grad=True)
    terms = objective(logits, batch([0, 1], 1, 2))
    assert float(terms["ce"].detach()) == pytest.approx(float(F.cross_entropy(logits.detach(), torch.zeros(2, dtype=torch.long))))
    terms["consistency"].backward()
    assert logits.grad.abs().sum() > 0
    assert not objective.ensemble.requires_grad


def sgd_step(model: nn.Module, lr: float) -> None:
    """Plain gradient descent (torch.optim would import torch._dynamo, seconds of start-up)."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter -= lr * parameter.grad


def test_a_short_optimisation_lowers_the_loss():
    model = tiny_model()
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(32, 1, 5, 5, generator=generator)
    labels = (inputs.mean(dim=(1, 2, 3)) > 0).long() + 2 * (inputs[:, 0, 2, 2] > 0).long()
    epochs = 20
    objective = make(model, len(labels), epochs, lipschitz_weight=1e-3)
    epoch_losses = []
    for epoch in range(epochs):
        total = 0.0
        for index in torch.arange(32).split(8):
            terms = objective(model(inputs[index]), batch(index, epoch, epochs, labels[index]))
            loss = sum(terms.values())
            model.zero_grad()
            loss.backward()
            sgd_step(model, lr=0.5)
            total += float(loss.detach())
        epoch_losses.append(total / 4)
    assert epoch_losses[-1] < 0.7 * epoch_losses[0], epoch_losses


def test_missing_context_is_a_clear_error():
    from kdcore.errors import KdcoreError

    with pytest.raises(KdcoreError, match="needs the trained network"):
        make(None, 10)
    with pytest.raises(KdcoreError, match="needs the training-set size"):
        make(tiny_model(), 0)
    make(None, 0, lipschitz_weight=0.0, consistency_weight=0.0)  # plain CE needs neither


def test_trains_a_teacher_through_the_kernel(tmp_path, monkeypatch, capsys):
    from tests.conftest import teacher_log

    log = teacher_log("soteacher", tmp_path, monkeypatch, capsys)
    terms = ("ce", "lipschitz", "consistency")  # the last one starts in epoch 1
    assert all(f"train/soteacher.{t}" in log[0] for t in terms)
    assert log[0][f"train/soteacher.{terms[-1]}"] == 0.0 and log[-1][f"train/soteacher.{terms[-1]}"] != 0.0
    assert log[-1]["train/loss"] < log[0]["train/loss"]
