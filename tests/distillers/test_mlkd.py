import math
import statistics

import numpy as np
import pytest
import torch
from kdcore.testing import assert_trains, check_gradients, make_distiller_context, total
from distiller_testkit import build
from torch import nn

from kdcore.errors import KdcoreError
from kdcore.nn import Batch

K = 5
CTX = make_distiller_context({}, {}, num_classes=K)
TERMS = {"ce_strong", "instance_weak", "instance_strong", "class", "batch"}



def image_batch(n, labels=None, labeled=None, strong=True, epoch=0):
    generator = torch.Generator().manual_seed(n)
    inputs = torch.randn(n, 3, 4, 4, generator=generator)
    views = {"strong": torch.randn(n, 3, 4, 4, generator=generator)} if strong else {}
    return Batch(inputs=inputs, labels=torch.arange(n) % K if labels is None else labels,
                 index=torch.arange(n), epoch=epoch, epochs=240, labeled=labeled, views=views)


# --- an independent computation, one number at a time ---------------------------------------

def softmax(row, T):
    exps = [math.exp(v / T) for v in row]
    return [e / sum(exps) for e in exps]


def zscore(row):
    mean, sd = statistics.fmean(row), statistics.stdev(row)
    return [(v - mean) / (sd + 1e-7) for v in row]


def kl(s, t, T, standardize):
    """T² · (1/B) Σ_b KL(p_t ‖ p_s)."""
    out = 0.0
    for s_row, t_row in zip(s, t):
        if standardize:
            s_row, t_row = zscore(s_row), zscore(t_row)
        p_s, p_t = softmax(s_row, T), softmax(t_row, T)
        out += sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    return T * T * out / len(s)


def gram_loss(s, t, T, over):
    """Squared Frobenius distance of the class (K×K) or batch (B×B) Gram matrices, / K or / B."""
    q_s = [softmax(r, T) for r in s]
    q_t = [softmax(r, T) for r in t]
    B = len(s)
    if over == "class":
        G = lambda q, i, j: sum(q[b][i] * q[b][j] for b in range(B))  # noqa: E731
        size = K
    else:
        G = lambda q, i, j: sum(q[i][k] * q[j][k] for k in range(K))  # noqa: E731
        size = B
    return sum((G(q_t, i, j) - G(q_s, i, j)) ** 2 for i in range(size) for j in range(size)) / size


def ce(logits, labels):
    return statistics.fmean(-math.log(softmax(row, 1.0)[y]) for row, y in zip(logits, labels))


def mlkd_by_hand(s, t, labels, temps, strong_count=3, kd_w=0.9, ce_w=0.1, standardize=False):
    n = len(labels)
    s_weak, s_strong, t_weak, t_strong = s[:n], s[n:], t[:n], t[n:]
    p_t = [softmax(r, 1.0) for r in t_weak]
    confidence = [max(r) for r in p_t]
    sample_kept = statistics.fmean(c <= np.percentile(confidence, 50) for c in confidence)
    per_class = [sum(r[k] for r in p_t) for k in range(K)]
    class_kept = statistics.fmean(c <= np.percentile(per_class, 50) for c in per_class)
    strong = [kl(s_strong, t_strong, T, standardize) if i < strong_count
              else kl(s_weak, t_weak, T, standardize) for i, T in enumerate(temps)]
    return {
        "ce_strong": ce_w * ce(s_strong, labels),
        "instance_weak": kd_w * sum(sample_kept * kl(s_weak, t_weak, T, standardize) for T in temps),
        "instance_strong": kd_w * sum(strong),
        "class": kd_w * sum(class_kept * gram_loss(s_weak, t_weak, T, "class") for T in temps),
        "batch": kd_w * sum(sample_kept * gram_loss(s_weak, t_weak, T, "batch") for T in temps),
    }


def logits(n, seed):
    generator = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(2 * n, K, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("n", [6, 7])
def test_terms_match_a_hand_computation(n):
    s, t = logits(n, 1), logits(n, 2)
    labels = torch.tensor([0, 3, 4, 1, 2, 2, 0][:n])
    distiller = build("mlkd", CTX)
    terms = distiller({"logits": s}, {"logits": t}, distiller.expand_batch(image_batch(n, labels)))
    expected = mlkd_by_hand(s.tolist(), t.tolist(), labels.tolist(), [4.0, 3.0, 5.0, 2.0, 6.0])
    assert set(terms) == TERMS
    for name in TERMS:
        assert terms[name].item() == pytest.approx(expected[name], rel=1e-9), name


def test_standardize_uses_base_temperature_two_weight_nine_on_the_instance_terms_only():
    s, t = logits(6, 3), logits(6, 4)
    labels = torch.arange(6) % K
    distiller = build("mlkd", CTX, standardize=True)
    assert distiller.temperatures == [2.0, 3.0, 5.0, 2.0, 6.0] and distiller.kd_weight == 9.0
    terms = distiller({"logits": s}, {"logits": t}, distiller.expand_batch(image_batch(6, labels)))
    expected = mlkd_by_hand(s.tolist(), t.tolist(), labels.tolist(), [2.0, 3.0, 5.0, 2.0, 6.0],
                            kd_w=9.0, standardize=True)
    for name in TERMS:
        assert terms[name].item() == pytest.approx(expected[name], rel=1e-9), name


def test_strong_view_temperatures_and_the_weights_are_params():
    s, t = logits(6, 5), logits(6, 6)
    labels = torch.arange(6) % K
    distiller = build("mlkd", CTX, strong_view_temperatures=5, temperature=3.0,
                      extra_temperatures=[1.5], kd_weight=2.0, strong_ce_weight=0.5,
                      confidence_percentile=50)
    terms = distiller({"logits": s}, {"logits": t}, distiller.expand_batch(image_batch(6, labels)))
    expected = mlkd_by_hand(s.tolist(), t.tolist(), labels.tolist(), [3.0, 1.5], strong_count=5,
                            kd_w=2.0, ce_w=0.5)
    for name in TERMS:
        assert terms[name].item() == pytest.approx(expected[name], rel=1e-9), name


def test_masks_scale_the_terms_by_the_kept_fraction_as_released():
    # a teacher whose confidences are all distinct keeps half of an even batch, (n+1)/2 of an odd one
    distiller = build("mlkd", CTX, strong_view_temperatures=0)
    for n in (8, 9):
        s, t = logits(n, 7), logits(n, 8)
        batch = distiller.expand_batch(image_batch(n))
        masked = distiller({"logits": s}, {"logits": t}, batch)
        unmasked = build("mlkd", CTX, confidence_percentile=100, strong_view_temperatures=0)(
            {"logits": s}, {"logits": t}, batch)
        kept = (n // 2 + n % 2) / n
        assert masked["instance_weak"].item() == pytest.approx(kept * unmasked["instance_weak"].item())
        assert masked["batch"].item() == pytest.approx(kept * unmasked["batch"].item())
        assert masked["class"].item() == pytest.approx(3 / 5 * unmasked["class"].item())  # 3 of 5 classes
        assert masked["instance_strong"].item() == pytest.approx(unmasked["instance_strong"].item())


def test_expand_batch_stacks_weak_then_strong_and_needs_the_strong_view():
    distiller = build("mlkd", CTX)
    assert distiller.input_views == ("strong",)
    batch = image_batch(4, labeled=torch.tensor([True, False, True, True]))
    expanded = distiller.expand_batch(batch)
    assert torch.equal(expanded.inputs, torch.cat([batch.inputs, batch.views["strong"]]))
    assert expanded.primary.tolist() == [0, 1, 2, 3]
    assert torch.equal(expanded.inputs[expanded.primary], batch.inputs)
    assert expanded.labels is batch.labels and expanded.labeled is batch.labeled
    assert (expanded.epoch, expanded.epochs) == (batch.epoch, batch.epochs)
    with pytest.raises(KdcoreError, match="no 'strong' view"):
        distiller.expand_batch(image_batch(4, strong=False))
    wrong = image_batch(4)
    wrong.views["strong"] = wrong.views["strong"][:3]
    with pytest.raises(KdcoreError, match="same images"):
        distiller.expand_batch(wrong)
    with pytest.raises(KdcoreError, match="expected 8"):
        distiller({"logits": torch.randn(4, K)}, {"logits": torch.randn(4, K)}, expanded)


def test_strong_cross_entropy_leaves_unlabeled_samples_out():
    s, t = logits(4, 9).float(), logits(4, 10).float()
    labels = torch.tensor([1, -1, 3, -1])
    labeled = torch.tensor([True, False, True, False])
    distiller = build("mlkd", CTX)
    terms = distiller({"logits": s}, {"logits": t}, distiller.expand_batch(image_batch(4, labels, labeled)))
    strong = s[4:][labeled]
    assert terms["ce_strong"].item() == pytest.approx(0.1 * ce(strong.tolist(), [1, 3]), rel=1e-5)


def test_gradients_reach_both_views_of_the_student_but_not_the_teacher():
    distiller = build("mlkd", CTX)
    batch = distiller.expand_batch(image_batch(6))
    check_gradients(distiller, {"logits": torch.randn(12, K)}, {"logits": torch.randn(12, K)}, batch)
    student = torch.randn(12, K, requires_grad=True)
    total(distiller({"logits": student}, {"logits": torch.randn(12, K)}, batch)).backward()
    assert student.grad[:6].abs().sum() > 0 and student.grad[6:].abs().sum() > 0


def test_training_a_small_student_on_both_views_reduces_the_loss():
    torch.manual_seed(4)
    n = 32
    weak, strong = torch.randn(n, 8), torch.randn(n, 8)
    teacher_net = nn.Linear(8, K)
    with torch.no_grad():
        teacher = {"logits": 3 * teacher_net(torch.cat([weak, strong]))}
    labels = teacher["logits"][:n].argmax(dim=1)
    distiller = build("mlkd", CTX)
    batch = Batch(inputs=weak, labels=labels, index=torch.arange(n), epoch=0, epochs=240,
                  views={"strong": strong})
    expanded = distiller.expand_batch(batch)
    student = nn.Linear(8, K)
    optimiser = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = total(distiller({"logits": student(expanded.inputs)}, teacher, expanded))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert_trains(losses, 0.3)
