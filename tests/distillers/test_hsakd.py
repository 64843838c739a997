import math

import pytest
import torch
import torch.nn.functional as F
from kdcore.testing import assert_trains, make_batch, make_distiller_context, total
from distiller_testkit import build
from tiny_images import NUM_CLASSES, records, run_resnet8_pair
from torch import nn

from kdcore.api import DistillerContext
from kdcore.errors import KdcoreError
from kdcore.nn import Batch, Preparation
from kdcore.config.schema import OptimizerConfig, ScheduleConfig
from kdcore_distillers.hsakd import AuxiliaryBranch, BasicBlock, Bottleneck, joint_labels



K = 3  # classes
STUDENT = {"stages": [(4, 8, 8), (6, 4, 4), (8, 2, 2)]}
TEACHER = {"stages": [(5, 8, 8), (7, 4, 4), (9, 2, 2)]}


def context(student=STUDENT, teacher=TEACHER, teacher_features=None):
    ctx = make_distiller_context(student, teacher, num_classes=K)
    return DistillerContext(**{**ctx.__dict__, "teacher_features": teacher_features})


class TinyNet(nn.Module):
    """Three conv stages (8×8, 4×4, 2×2 on 8×8 inputs) and a linear head."""

    def __init__(self, channels):
        super().__init__()
        c1, c2, c3 = channels
        self.convs = nn.ModuleList([
            nn.Conv2d(3, c1, 3, padding=1),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
        ])
        self.fc = nn.Linear(c3, K)

    def forward(self, x):
        stages = []
        for conv in self.convs:
            x = F.relu(conv(x))
            stages.append(x)
        return {"logits": self.fc(x.mean(dim=(2, 3))), "stages": stages}


def image_batch(images, labels, epoch=0):
    return Batch(inputs=images, labels=labels, index=torch.arange(len(labels)), epoch=epoch, epochs=240)


def test_expand_batch_stacks_the_four_rotations_of_each_image():
    torch.manual_seed(0)
    images = torch.randn(3, 2, 5, 5)
    labels = torch.tensor([2, 0, 1])
    distiller = build("hsakd", context())
    expanded = distiller.expand_batch(image_batch(images, labels))
    assert expanded.inputs.shape == (12, 2, 5, 5)
    for i in range(3):
        for k in range(4):
            assert torch.equal(expanded.inputs[4 * i + k], torch.rot90(images[i], k, (1, 2)))
    assert expanded.primary.tolist() == [0, 4, 8]
    assert torch.equal(expanded.inputs[expanded.primary], images)
    assert torch.equal(expanded.labels, labels) and torch.equal(expanded.index, torch.arange(3))
    with pytest.raises(KdcoreError, match="square"):
        distiller.expand_batch(image_batch(torch.randn(2, 3, 4, 6), torch.tensor([0, 1])))


def test_joint_labels_are_four_times_the_class_plus_the_rotation():
    assert joint_labels(torch.tensor([2, 0, 5])).tolist() == [8, 9, 10, 11, 0, 1, 2, 3, 20, 21, 22, 23]


def test_one_branch_per_stage_reaching_the_last_stages_shape_with_4k_outputs():
    distiller = build("hsakd", context())
    assert len(distiller.student_branches) == len(distiller.teacher_branches) == 3
    strides = [[b.conv1.stride[0] for b in branch.blocks] for branch in distiller.teacher_branches]
    assert strides == [[2, 2], [2], [1]]  # the last stage's branch adds one stage at its own size
    for branch, stage in zip(distiller.teacher_branches, TEACHER["stages"]):
        assert branch.fc.out_features == 4 * K
        assert branch.blocks(torch.randn(2, *stage)).shape == (2, 9, 2, 2)
    deeper = build("hsakd", context(), teacher_blocks_per_stage=2)
    assert [len(branch.blocks) for branch in deeper.teacher_branches] == [4, 2, 2]
    assert [len(branch.blocks) for branch in deeper.student_branches] == [2, 1, 1]
    chosen = build("hsakd", context(), student_branch_stages=[0, 2], teacher_branch_stages=[1, 2])
    assert chosen.student_stages == [0, 2] and chosen.teacher_stages == [1, 2]


def test_resnet8_branch_is_hsakds_resnet_branch():
    # HSAKD's resnet8 branch on stage 1: a 32-channel stride-2 basic block, a 64-channel one,
    # global pooling and a linear layer to 4·K.
    shapes = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    branch = AuxiliaryBranch(shapes, 0, 400, 1, "teacher")
    first, second = branch.blocks
    assert all(isinstance(b, BasicBlock) for b in branch.blocks)
    assert (first.conv1.in_channels, first.conv1.out_channels, first.conv1.stride) == (16, 32, (2, 2))
    assert (second.conv1.in_channels, second.conv1.out_channels, second.conv1.stride) == (32, 64, (2, 2))
    assert (branch.fc.in_features, branch.fc.out_features) == (64, 400)


def test_wide_stages_get_bottleneck_blocks():
    shapes = [(128, 4, 4), (512, 2, 2)]
    auto = AuxiliaryBranch(shapes, 0, 12, 1, "teacher")
    (block,) = auto.blocks
    assert isinstance(block, Bottleneck)
    assert (block.conv1.out_channels, block.conv2.stride, block.conv3.out_channels) == (128, (2, 2), 512)
    assert auto(torch.randn(2, 128, 4, 4)).shape == (2, 12)
    assert isinstance(AuxiliaryBranch(shapes, 0, 12, 1, "teacher", "basic").blocks[0], BasicBlock)
    narrow = AuxiliaryBranch([(4, 4, 4), (8, 2, 2)], 0, 12, 1, "teacher", "bottleneck")
    assert isinstance(narrow.blocks[0], Bottleneck) and narrow.blocks[0].conv1.out_channels == 2


def test_mismatched_branch_counts_and_bad_shapes_are_build_errors():
    four = {"stages": [(4, 16, 16), *STUDENT["stages"]]}
    with pytest.raises(KdcoreError, match="student has 4 and the teacher 3"):
        build("hsakd", context(student=four))
    build("hsakd", context(student=four), student_branch_stages=[1, 2, 3])
    with pytest.raises(KdcoreError, match="out of range"):
        build("hsakd", context(), teacher_branch_stages=[3])
    with pytest.raises(KdcoreError, match="integer"):
        build("hsakd", context(student={"stages": [(4, 8, 8), (6, 3, 3)]},
                               teacher={"stages": [(4, 8, 8), (6, 4, 4)]}))


def softmax(values, T):
    exps = [math.exp(v / T) for v in values]
    return [e / sum(exps) for e in exps]


def kl_by_hand(s_logits, t_logits, T=3.0):
    """T² · mean over rows of Σ_k p_t (log p_t − log p_s)."""
    rows = list(zip(s_logits.tolist(), t_logits.tolist()))
    total_kl = 0.0
    for s_row, t_row in rows:
        p_s, p_t = softmax(s_row, T), softmax(t_row, T)
        total_kl += sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
    return T**2 * total_kl / len(rows)


def test_kl_terms_match_a_hand_computation():
    torch.manual_seed(1)
    distiller = build("hsakd", context()).double()
    student = {"logits": 3 * torch.randn(8, K, dtype=torch.float64),
               "stages": [torch.randn(8, *s, dtype=torch.float64) for s in STUDENT["stages"]]}
    teacher = {"logits": 3 * torch.randn(8, K, dtype=torch.float64),
               "stages": [torch.randn(8, *s, dtype=torch.float64) for s in TEACHER["stages"]]}
    distiller.eval()
    terms = distiller(student, teacher, make_batch(2, num_classes=K))
    assert set(terms) == {"main", "branch1", "branch2", "branch3"}
    expected = kl_by_hand(student["logits"], teacher["logits"])
    assert terms["main"].item() == pytest.approx(expected, rel=1e-10)
    for b in range(3):
        with torch.no_grad():
            s = distiller.student_branches[b](student["stages"][b])
            t = distiller.teacher_branches[b](teacher["stages"][b])
        assert s.shape == (8, 4 * K)
        assert terms[f"branch{b + 1}"].item() == pytest.approx(kl_by_hand(s, t), rel=1e-10)


def tiny_teacher():
    torch.manual_seed(2)
    net = TinyNet((5, 7, 9)).eval().requires_grad_(False)

    @torch.no_grad()
    def features(inputs):
        return net(inputs)

    return net, features


def test_preparation_trains_the_teacher_branches_with_joint_label_ce():
    net, features = tiny_teacher()
    distiller = build("hsakd", context(teacher_features=features))
    preparation = distiller.preparation()
    assert isinstance(preparation, Preparation)
    assert preparation.trainable is distiller.teacher_branches
    assert (preparation.epochs, preparation.batch_size) == (100, 64)
    optimizer = OptimizerConfig.model_validate(preparation.optimizer)
    settings = (optimizer.lr, optimizer.momentum, optimizer.nesterov, optimizer.weight_decay)
    assert settings == (0.05, 0.9, True, 5e-4)
    schedule = ScheduleConfig.model_validate(preparation.schedule)
    assert (schedule.name, schedule.milestones) == ("multistep", [30, 60, 90])

    torch.manual_seed(3)
    images, labels = torch.randn(8, 3, 8, 8), torch.arange(8) % K
    batch = image_batch(images, labels)
    loss, terms = preparation.step_loss(batch)
    rotated = torch.stack([torch.rot90(images, k, (2, 3)) for k in range(4)], dim=1).flatten(0, 1)
    stages = net(rotated)["stages"]
    joint = torch.tensor([4 * y + k for y in labels.tolist() for k in range(4)])
    for b in range(3):
        expected = F.cross_entropy(distiller.teacher_branches[b](stages[b]), joint)
        assert terms[f"branch{b + 1}_ce"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-6)

    optimiser = torch.optim.SGD(preparation.trainable.parameters(), lr=0.1, momentum=0.9)
    preparation.trainable.train()
    losses = []
    for _ in range(30):
        loss, _ = preparation.step_loss(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert_trains(losses, 0.5)
    assert all(p.grad is None for p in net.parameters())


def test_preparation_leaves_unlabeled_samples_out():
    _, features = tiny_teacher()
    distiller = build("hsakd", context(teacher_features=features))
    preparation = distiller.preparation()
    preparation.trainable.eval()  # batch statistics would differ between the two batches
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, -1, 2, -1])
    labeled = torch.tensor([True, False, True, False])
    masked = Batch(inputs=images, labels=labels, index=torch.arange(4), epoch=0, epochs=1,
                   labeled=labeled)
    _, masked_terms = preparation.step_loss(masked)
    _, kept_terms = preparation.step_loss(image_batch(images[labeled], labels[labeled]))
    for name in kept_terms:
        assert masked_terms[name].item() == pytest.approx(kept_terms[name].item(), rel=1e-5)


def test_teacher_branches_stay_frozen_and_in_eval_mode_after_preparation():
    _, features = tiny_teacher()
    distiller = build("hsakd", context(teacher_features=features))
    preparation = distiller.preparation()
    preparation.trainable.train()
    # a training step of the preparation moves the branches' BatchNorm statistics
    preparation.step_loss(image_batch(torch.randn(4, 3, 8, 8), torch.arange(4) % K))
    preparation.trainable.requires_grad_(False)  # what the kernel does after the stage
    distiller.train()  # the student stage puts its trainables in train mode
    assert all(not m.training for m in distiller.teacher_branches.modules())
    assert all(m.training for m in distiller.student_branches.modules())
    stats = {k: v.clone() for k, v in distiller.teacher_branches.state_dict().items()}
    student = {"logits": torch.randn(8, K), "stages": [torch.randn(8, *s) for s in STUDENT["stages"]]}
    teacher = {"logits": torch.randn(8, K), "stages": [torch.randn(8, *s) for s in TEACHER["stages"]]}
    total(distiller(student, teacher, make_batch(2, num_classes=K))).backward()
    assert all(p.grad is None for p in distiller.teacher_branches.parameters())
    for key, value in distiller.teacher_branches.state_dict().items():
        assert torch.equal(value, stats[key]), key
    distiller.eval().train()
    assert not distiller.teacher_branches.training and distiller.student_branches.training


def test_gradients_reach_student_logits_stages_and_branches_but_not_teacher():
    distiller = build("hsakd", context())
    student = {"logits": torch.randn(8, K, requires_grad=True),
               "stages": [torch.randn(8, *s, requires_grad=True) for s in STUDENT["stages"]]}
    teacher = {"logits": torch.randn(8, K, requires_grad=True),
               "stages": [torch.randn(8, *s, requires_grad=True) for s in TEACHER["stages"]]}
    total(distiller(student, teacher, make_batch(2, num_classes=K))).backward()
    for t in [student["logits"], *student["stages"]]:
        assert t.grad is not None and t.grad.abs().sum() > 0
    assert teacher["logits"].grad is None and all(t.grad is None for t in teacher["stages"])
    for name, p in distiller.student_branches.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad is None for p in distiller.teacher_branches.parameters())


def test_training_a_small_student_reduces_the_loss():
    net, features = tiny_teacher()
    distiller = build("hsakd", context(teacher_features=features))
    torch.manual_seed(4)
    images = torch.randn(8, 3, 8, 8)
    batch = distiller.expand_batch(image_batch(images, torch.arange(8) % K))
    distiller.train()
    with torch.no_grad():
        teacher = net(batch.inputs)
        teacher["logits"] = 3 * teacher["logits"]
    student_net = TinyNet((4, 6, 8))
    parameters = list(student_net.parameters()) + list(distiller.student_branches.parameters())
    optimiser = torch.optim.SGD(parameters, lr=0.02, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = total(distiller(student_net(batch.inputs), teacher, batch))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert_trains(losses, 0.3)


def test_end_to_end_prepares_the_teacher_branches_then_distils(registry, write_recipe, tmp_path):
    distiller = {"name": "hsakd", "params": {"prepare_epochs": 1, "prepare_batch_size": 16}}
    run = run_resnet8_pair(registry, write_recipe, tmp_path / "run", distiller)
    (prepared,) = records(run / "prepare-hsakd/metrics.jsonl")
    assert {"train/branch1_ce", "train/branch2_ce", "train/branch3_ce"} <= set(prepared)
    # the branches start near chance over the 4·K joint labels
    assert prepared["train/branch1_ce"] == pytest.approx(math.log(4 * NUM_CLASSES), rel=0.5)
    assert (run / "prepare-hsakd/model.safetensors").is_file()
    (student,) = records(run / "student/metrics.jsonl")
    terms = {"train/ce", "train/hsakd.main"} | {f"train/hsakd.branch{b}" for b in (1, 2, 3)}
    assert terms <= set(student)
    kd = sum(student[t] for t in terms - {"train/ce"})
    assert student["train/loss"] == pytest.approx(student["train/ce"] + kd, rel=1e-5)
