"""The mcmi objective: CE − λ·CMI with class centroids from the previous epoch's predictions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.api import ObjectiveContext
from kdcore.nn import Batch
from kdcore_objectives import MCMIParams, kdcore_objectives
from kdcore_objectives.mcmi import MCMI, empirical_cmi

torch.set_num_threads(1)

K = 3


def make(**params) -> MCMI:
    return MCMI(MCMIParams(**params), ObjectiveContext(K, model=None, train_size=12, epochs=4))


def batch(labels, epoch, epochs=4) -> Batch:
    labels = torch.as_tensor(labels)
    return Batch(inputs=torch.zeros(len(labels)), labels=labels, index=torch.arange(len(labels)),
                 epoch=epoch, epochs=epochs)


def test_defaults_are_the_authors_settings():
    # iclr2024mcmi/ICLRMCMI CIFAR-100 scripts: FineTuneTeacher.py --param 1 -0.25 (loss = CE - 0.25 KL)
    params = MCMIParams()
    assert (params.cmi_weight, params.start_epoch, params.refresh_centroids) == (0.25, 1, True)


def test_registered_with_its_params():
    specs = {spec.name: spec for spec in kdcore_objectives()}
    assert specs["mcmi"].params is MCMIParams
    assert specs["mcmi"].builder() is MCMI


def test_empirical_cmi_is_the_mean_kl_to_the_label_centroid():
    generator = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(7, K, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 0, 2])
    centroids = torch.softmax(torch.randn(K, K, generator=generator, dtype=torch.float64), dim=1)
    expected = 0.0
    for z, y in zip(logits.tolist(), labels.tolist()):
        q = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
        expected += sum(qk * math.log(qk / ck) for qk, ck in zip(q, centroids[y].tolist()))
    expected /= len(labels)
    assert float(empirical_cmi(logits, labels, centroids)) == pytest.approx(expected, rel=1e-10)
    # torch's KL(q || c) spelled as the authors' loss spells it: kl_div(log c, log q, log_target)
    torch_kl = F.kl_div(centroids[labels].log(), F.log_softmax(logits, 1), reduction="batchmean", log_target=True)
    assert float(torch_kl) == pytest.approx(expected, rel=1e-10)


def test_with_the_batch_class_means_as_centroids_it_is_the_conditional_mutual_information():
    """I(X; Ŷ | Y) = Σ_y P(y) [H(Q_y) − E(H(q) | y)] when Q_y is the class mean of q."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(9, K, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    q = logits.softmax(1)
    entropy = lambda p: -(p * p.log()).sum(-1)  # noqa: E731
    centroids = torch.stack([q[labels == k].mean(0) for k in range(K)])
    mutual = sum((labels == k).double().mean() * (entropy(centroids[k]) - entropy(q[labels == k]).mean()) for k in range(K))
    assert float(empirical_cmi(logits, labels, centroids)) == pytest.approx(float(mutual), rel=1e-10)


def epochs_of_logits(seed=2, epochs=3):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    return labels, [[torch.randn(4, K, generator=generator) for _ in range(2)] for _ in range(epochs)]


def class_means(labels, logits_pair):
    q = torch.cat([z.softmax(1) for z in logits_pair]).double()
    return torch.stack([q[labels == k].mean(0) for k in range(K)])


def run(objective, labels, epochs):
    out = []
    for epoch, pair in enumerate(epochs):
        for half, logits in zip((labels[:4], labels[4:]), pair):
            out.append((epoch, logits, half, objective(logits, batch(half, epoch, len(epochs)))))
    return out


@pytest.mark.parametrize("refresh", [True, False])
def test_centroids_are_the_previous_epochs_class_means(refresh):
    labels, epochs = epochs_of_logits()
    objective = make(cmi_weight=0.5, refresh_centroids=refresh)
    for epoch, logits, half, terms in run(objective, labels, epochs):
        assert float(terms["ce"]) == pytest.approx(float(F.cross_entropy(logits, half)))
        if epoch == 0:
            assert float(terms["neg_cmi"]) == 0.0
            continue
        source = epoch - 1 if refresh else 0
        centroids = class_means(labels, epochs[source])
        expected = -0.5 * empirical_cmi(logits.double(), half, centroids)
        assert float(terms["neg_cmi"]) == pytest.approx(float(expected), rel=1e-5)


def test_start_epoch_delays_the_term_and_takes_the_centroids_of_the_epoch_before():
    labels, epochs = epochs_of_logits(epochs=4)
    objective = make(start_epoch=2, refresh_centroids=False)
    for epoch, logits, half, terms in run(objective, labels, epochs):
        if epoch < 2:
            assert float(terms["neg_cmi"]) == 0.0
        else:
            expected = -0.25 * empirical_cmi(logits.double(), half, class_means(labels, epochs[1]))
            assert float(terms["neg_cmi"]) == pytest.approx(float(expected), rel=1e-5)


def test_a_class_absent_from_the_previous_epoch_adds_no_term():
    objective = make()
    objective(torch.randn(3, K), batch([0, 0, 1], 0))  # class 2 never seen in epoch 0
    logits = torch.randn(2, K)
    terms = objective(logits, batch([2, 2], 1))
    assert float(terms["neg_cmi"]) == 0.0
    assert objective.valid.tolist() == [True, True, False]


def test_gradient_reaches_the_logits_but_not_the_centroids():
    objective = make()
    objective(torch.randn(6, K), batch([0, 1, 2, 0, 1, 2], 0))
    logits = torch.randn(6, K, requires_grad=True)
    terms = objective(logits, batch([0, 1, 2, 0, 1, 2], 1))
    terms["neg_cmi"].backward()
    assert logits.grad.abs().sum() > 0
    assert not objective.centroids.requires_grad


def test_a_short_optimisation_lowers_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, K))
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(48, 4, generator=generator)
    labels = inputs[:, :K].argmax(1)
    objective = make()
    epoch_losses = []
    for epoch in range(15):
        total = 0.0
        for index in torch.arange(48).split(12):
            loss = sum(objective(model(inputs[index]), batch(labels[index], epoch, 15)).values())
            model.zero_grad()
            loss.backward()
            with torch.no_grad():  # plain gradient descent (torch.optim imports torch._dynamo)
                for parameter in model.parameters():
                    parameter -= 0.3 * parameter.grad
            total += float(loss.detach())
        epoch_losses.append(total / 4)
    assert epoch_losses[-1] < 0.5 * epoch_losses[0], epoch_losses


def test_trains_a_teacher_through_the_kernel(tmp_path, monkeypatch, capsys):
    from tests.conftest import teacher_log

    log = teacher_log("mcmi", tmp_path, monkeypatch, capsys)
    terms = ("ce", "neg_cmi")  # the last one starts in epoch 1
    assert all(f"train/mcmi.{t}" in log[0] for t in terms)
    assert log[0][f"train/mcmi.{terms[-1]}"] == 0.0 and log[-1][f"train/mcmi.{terms[-1]}"] != 0.0
    assert log[-1]["train/loss"] < log[0]["train/loss"]


def test_state_survives_a_checkpoint_mid_run():
    """Centroids, the sums of the current epoch and the host-side epoch counter come back from
    a state dict (kdcore checkpoints the objective with the network), so a resumed run
    continues as an uninterrupted one."""
    labels, epochs = epochs_of_logits(epochs=3)
    straight = make()
    outputs = run(straight, labels, epochs)
    resumed = make()
    run(resumed, labels, epochs[:2])
    state = {k: v.clone() for k, v in resumed.state_dict().items()}
    fresh = make()
    fresh.load_state_dict(state)
    assert (fresh._epoch, fresh._computed) == (1, True)
    for _, logits, half, want in outputs[4:]:  # the two batches of epoch 2
        got = fresh(logits, batch(half, 2, 3))
        assert float(got["neg_cmi"]) != 0.0
        assert float(got["neg_cmi"]) == pytest.approx(float(want["neg_cmi"]))
