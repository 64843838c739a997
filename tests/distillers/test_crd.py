import math
from dataclasses import replace

import pytest
import torch
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context, train_losses
from distiller_testkit import build
from torch import nn

from kdcore.errors import KdcoreError

TRAIN_SIZE, CLASSES = 40, 4
LABELS = torch.arange(TRAIN_SIZE) % CLASSES
SHAPES_S, SHAPES_T = {"pooled": (6,)}, {"pooled": (9,)}


def make_crd(**params):
    ctx = make_distiller_context(
        SHAPES_S, SHAPES_T, num_classes=CLASSES, train_size=TRAIN_SIZE, train_labels=LABELS
    )
    defaults = {"num_negatives": 12, "embed_dim": 5}
    return build("crd", ctx, **(defaults | params))


def test_published_defaults():
    distiller = build("crd", make_distiller_context(SHAPES_S, SHAPES_T, train_size=20000))
    assert (
        distiller.num_negatives == 16384
        and distiller.temperature == 0.07
        and distiller.momentum == 0.5
    )
    assert distiller.memory_student.shape == distiller.memory_teacher.shape == (20000, 128)


def test_contrast_set_is_the_sample_then_distinct_negatives_of_other_classes():
    torch.manual_seed(0)
    distiller = make_crd()
    index = torch.tensor([3, 17, 0, 38, 22])
    contrast = distiller.sample_contrast(index)
    assert contrast.shape == (5, 13)
    assert torch.equal(contrast[:, 0], index)
    for row, i in zip(contrast.tolist(), index.tolist()):
        negatives = row[1:]
        assert len(set(negatives)) == len(negatives)
        assert all(LABELS[j] != LABELS[i] for j in negatives)


def test_too_few_negatives_fall_back_to_drawing_with_replacement():
    torch.manual_seed(1)
    distiller = make_crd(num_negatives=50)  # only 30 samples of other classes
    contrast = distiller.sample_contrast(torch.tensor([5, 6]))
    assert contrast.shape == (2, 51)
    for row, i in zip(contrast.tolist(), (5, 6)):
        assert all(LABELS[j] != LABELS[i] for j in row[1:])


def test_uniform_negatives_need_no_labels():
    ctx = replace(make_distiller_context(SHAPES_S, SHAPES_T, train_size=TRAIN_SIZE), train_labels=None)
    distiller = build("crd", ctx, num_negatives=12, negatives="uniform")
    contrast = distiller.sample_contrast(torch.tensor([1, 2]))
    assert contrast.shape == (2, 13) and int(contrast.max()) < TRAIN_SIZE


def test_all_samples_of_one_class_is_a_build_error():
    ctx = make_distiller_context(
        SHAPES_S, SHAPES_T, train_size=8, train_labels=torch.zeros(8, dtype=torch.long)
    )
    with pytest.raises(KdcoreError, match="uniform"):
        build("crd", ctx, num_negatives=4)


def test_hidden_labels_of_semi_supervised_data_are_a_build_error():
    hidden = torch.as_tensor(LABELS).clone()
    hidden[::2] = -1
    ctx = make_distiller_context(SHAPES_S, SHAPES_T, train_size=TRAIN_SIZE, train_labels=hidden)
    with pytest.raises(KdcoreError, match="negatives: uniform"):
        build("crd", ctx, num_negatives=4)


def nce_by_hand(anchor_rows, bank, contrast_rows, temperature, z):
    k = len(contrast_rows[0]) - 1
    noise = k / TRAIN_SIZE
    total = 0.0
    for anchor, rows in zip(anchor_rows, contrast_rows):
        scores = [
            math.exp(sum(a * m for a, m in zip(anchor, bank[j])) / temperature) / z for j in rows
        ]
        total += math.log(scores[0] / (scores[0] + noise + 1e-7))
        total += sum(math.log(noise / (s + noise + 1e-7)) for s in scores[1:])
    return -total / len(anchor_rows)


def embed_by_hand(linear, rows):
    out = []
    for row in rows:
        values = [
            sum(w * x for w, x in zip(w_row, row)) + b
            for w_row, b in zip(linear.weight.tolist(), linear.bias.tolist())
        ]
        norm = math.sqrt(sum(v * v for v in values))
        out.append([v / norm for v in values])
    return out


def test_loss_matches_per_sample_nce_and_banks_update_by_momentum():
    torch.manual_seed(2)
    distiller = make_crd()
    student, teacher = torch.randn(5, 6), torch.randn(5, 9)
    index = torch.tensor([3, 17, 0, 38, 22])
    bank_s, bank_t = distiller.memory_student.tolist(), distiller.memory_teacher.tolist()

    torch.manual_seed(7)
    loss = distiller({"pooled": student}, {"pooled": teacher}, make_batch(5, index=index))["crd"]
    torch.manual_seed(7)
    contrast = distiller.sample_contrast(index).tolist()

    e_s = embed_by_hand(distiller.embed_student, student.tolist())
    e_t = embed_by_hand(distiller.embed_teacher, teacher.tolist())

    def normaliser(anchors, bank):
        scores = [
            math.exp(sum(a * m for a, m in zip(anchor, bank[j])) / 0.07)
            for anchor, rows in zip(anchors, contrast)
            for j in rows
        ]
        return sum(scores) / len(scores) * TRAIN_SIZE

    z_s, z_t = normaliser(e_s, bank_t), normaliser(e_t, bank_s)
    assert distiller.z_student.item() == pytest.approx(z_s, rel=1e-5)
    assert distiller.z_teacher.item() == pytest.approx(z_t, rel=1e-5)
    expected = nce_by_hand(e_s, bank_t, contrast, 0.07, z_s) + nce_by_hand(
        e_t, bank_s, contrast, 0.07, z_t
    )
    assert loss.item() == pytest.approx(expected, rel=1e-4)

    for position, i in enumerate(index.tolist()):
        mixed = [0.5 * m + 0.5 * e for m, e in zip(bank_s[i], e_s[position])]
        norm = math.sqrt(sum(v * v for v in mixed))
        assert distiller.memory_student[i].tolist() == pytest.approx(
            [v / norm for v in mixed], abs=1e-6
        )
    untouched = [j for j in range(TRAIN_SIZE) if j not in index.tolist()]
    assert torch.equal(
        distiller.memory_teacher[untouched], torch.tensor([bank_t[j] for j in untouched])
    )


def test_normalisers_are_fixed_after_the_first_batch_and_eval_mode_leaves_banks_alone():
    torch.manual_seed(3)
    distiller = make_crd()
    batch = make_batch(4, index=torch.tensor([1, 2, 3, 4]))
    distiller({"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 9)}, batch)
    z = (distiller.z_student.item(), distiller.z_teacher.item())
    banks = (distiller.memory_student.clone(), distiller.memory_teacher.clone())
    distiller.eval()
    distiller({"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 9)}, batch)
    assert (distiller.z_student.item(), distiller.z_teacher.item()) == z
    assert torch.equal(distiller.memory_student, banks[0]) and torch.equal(
        distiller.memory_teacher, banks[1]
    )
    assert set(distiller.state_dict()) >= {
        "memory_student",
        "memory_teacher",
        "z_student",
        "z_teacher",
    }


def test_normalisers_loaded_from_a_checkpoint_stay_fixed_and_fresh_ones_are_fixed_again():
    torch.manual_seed(4)
    trained = make_crd()
    batch = make_batch(4, index=torch.tensor([1, 2, 3, 4]))
    trained({"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 9)}, batch)
    resumed = make_crd()
    resumed({"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 9)}, batch)  # fixes its own Z
    resumed.load_state_dict(trained.state_dict())
    resumed({"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 9)}, batch)
    assert (resumed.z_student.item(), resumed.z_teacher.item()) == (trained.z_student.item(), trained.z_teacher.item())
    fresh = make_crd()
    fresh.load_state_dict(make_crd().state_dict())  # Z not fixed yet: the next batch fixes it
    fresh({"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 9)}, batch)
    assert fresh.z_student.item() > 0 and fresh.z_teacher.item() > 0


def test_gradients_reach_student_and_both_embeddings_but_not_teacher_features():
    distiller = make_crd()
    batch = make_batch(4, index=torch.tensor([5, 6, 7, 8]))
    check_gradients(distiller, {"pooled": torch.randn(4, 6)}, {"pooled": torch.randn(4, 9)}, batch)


def test_training_a_small_student_reduces_the_loss():
    torch.manual_seed(4)
    inputs = torch.randn(TRAIN_SIZE, 10)
    with torch.no_grad():
        teacher = {"pooled": torch.relu(nn.Linear(10, 9)(inputs))}
    student_net = nn.Linear(10, 6)
    distiller = make_crd(num_negatives=16, embed_dim=8)
    batch = make_batch(TRAIN_SIZE, index=torch.arange(TRAIN_SIZE))
    losses = train_losses(
        distiller,
        student_net,
        lambda net: {"pooled": torch.relu(net(inputs))},
        teacher,
        batch,
        lr=0.2,
    )
    assert_trains(losses, 0.5)
