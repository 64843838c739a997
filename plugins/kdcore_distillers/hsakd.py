"""Hierarchical self-supervised augmented KD (Yang et al., IJCAI 2021), as in ``winycg/HSAKD``'s
CIFAR-100 scripts with a frozen-backbone teacher (``train_teacher_cifar.py --freezed``: the
auxiliary branches trained 100 epochs, lr 0.05, milestones 30/60/90, batch 64, wd 5e-4,
nesterov; then ``train_student_cifar.py``: T 3, all weights 1).

Every training image is seen in four rotations (0°, 90°, 180°, 270°); auxiliary branches on the
stage outputs of both networks classify the 4·K joint (class, rotation) labels ``4y + k``.

**Deviation (branch architecture):** HSAKD writes each network's branches by hand so that a
branch re-runs the backbone's remaining stages with the backbone's own block type (ResNet basic
blocks, WRN pre-activation blocks, ShuffleNet units, inverted residuals, VGG conv stacks). Here
a branch is derived from the probed stage shapes: for each later stage,
``student_blocks_per_stage`` / ``teacher_blocks_per_stage`` residual blocks reaching that
stage's ``(C, H, W)``; the branch on the last stage gets one such stage at the last stage's
shape, as HSAKD's. The blocks are ResNet basic blocks, or bottlenecks
(expansion 4) for stages of more than 256 channels (``block="auto"``), which keeps the branches
of wide networks (ResNet50, ShuffleNetV1, VGG) affordable. For the CIFAR ResNets with
``*_blocks_per_stage`` = n (depth 6n+2: 1 for resnet8 and resnet8x4, 5 for resnet32x4) this is
HSAKD's ResNet branch, and for ResNet50 with ``block="bottleneck"`` and HSAKD's block counts
close to its; for WRN, ShuffleNets and MobileNetV2 the branches sit where HSAKD's do (every
stage) with the same shapes and head but another block type; HSAKD's VGG branches sit on the
stem, the first two stages and the last, here on the four stages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.api import DistillerContext
from kdcore.errors import KdcoreError
from kdcore.nn import Batch, Distiller, Features, Preparation
from kdcore_distillers import HSAKDParams
from kdcore_distillers._common import require_map, stage_shapes

METHOD = "hsakd"
ROTATIONS = 4


def rotate_batch(inputs: Tensor) -> Tensor:
    """``(B, C, H, W)`` → ``(4B, C, H, W)``: row ``4i + k`` is image ``i`` rotated by ``k·90°``
    (``torch.rot90(·, k, (H, W))``), as HSAKD stacks them."""
    if inputs.dim() != 4 or inputs.shape[2] != inputs.shape[3]:
        raise KdcoreError(
            f"{METHOD} rotates square images (B, C, H, H), got inputs of shape {tuple(inputs.shape)}"
        )
    rotations = [torch.rot90(inputs, k, (2, 3)) for k in range(ROTATIONS)]
    return torch.stack(rotations, dim=1).flatten(0, 1)


def joint_labels(labels: Tensor) -> Tensor:
    """The (class, rotation) label ``4y + k`` of row ``4i + k`` of a rotated batch."""
    return (ROTATIONS * labels[:, None] + torch.arange(ROTATIONS, device=labels.device)).flatten()


def kl_batchmean(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T² · (1/N) Σ_n KL(softmax(t_n/T) ‖ softmax(s_n/T))`` (HSAKD's ``DistillKL``)."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The residual path: identity, or a strided 1×1 conv + BN when the shape changes."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """3×3 conv (stride s) – BN – ReLU – 3×3 conv – BN, plus the input (through a 1×1 conv
    (stride s) – BN when the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 conv to ``C_out/4`` – BN – ReLU – 3×3 conv (stride s) – BN – ReLU – 1×1 conv to
    ``C_out`` – BN, plus the input (through a 1×1 conv (stride s) – BN when the shape changes),
    then ReLU: the torchvision / HSAKD ResNet50 bottleneck (expansion 4)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        width = max(1, out_channels // 4)
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


BOTTLENECK_ABOVE = 256
"""``block="auto"`` uses bottlenecks for stages of more channels than this."""


def make_block(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    bottleneck = kind == "bottleneck" or (kind == "auto" and out_channels > BOTTLENECK_ABOVE)
    return (Bottleneck if bottleneck else BasicBlock)(in_channels, out_channels, stride)


def _stride(source: tuple[int, int, int], target: tuple[int, int, int], who: str) -> int:
    (_, h, w), (_, h_out, w_out) = source, target
    if h % h_out or w % w_out or h // h_out != w // w_out:
        raise KdcoreError(
            f"{METHOD}: the {who}'s stage maps {source} → {target} do not shrink by one integer "
            "factor, so no auxiliary branch can follow them"
        )
    return h // h_out


class AuxiliaryBranch(nn.Module):
    """An auxiliary classifier on stage ``start`` of a network with stage shapes ``shapes``:
    ``blocks_per_stage`` residual blocks (:class:`BasicBlock`, or :class:`Bottleneck` per
    ``block``) per later stage, reaching that stage's ``(C, H, W)`` (one stage at the last
    stage's shape for the last stage's branch), global average pooling, and a linear layer to
    ``outputs`` = 4·K joint logits."""

    def __init__(self, shapes: list[tuple[int, int, int]], start: int, outputs: int,
                 blocks_per_stage: int, who: str, block: str = "auto") -> None:
        super().__init__()
        targets = shapes[start + 1:] or [shapes[-1]]
        blocks: list[nn.Module] = []
        current = shapes[start]
        for target in targets:
            stride = _stride(current, target, who)
            blocks.append(make_block(block, current[0], target[0], stride))
            blocks.extend(
                make_block(block, target[0], target[0], 1) for _ in range(blocks_per_stage - 1)
            )
            current = target
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(current[0], outputs)
        for module in self.modules():  # HSAKD's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.blocks(x), 1).flatten(1))


def _branches(shapes: dict, chosen: list[int] | None, outputs: int, blocks_per_stage: int,
              block: str, who: str) -> tuple[nn.ModuleList, list[int]]:
    stages = [require_map(s, who, METHOD) for s in stage_shapes(shapes, who, METHOD)]
    indices = list(range(len(stages))) if chosen is None else list(chosen)
    if not indices:
        raise KdcoreError(f"{METHOD}: {who}_branch_stages must name at least one stage")
    bad = [i for i in indices if not 0 <= i < len(stages)]
    if bad:
        raise KdcoreError(
            f"{METHOD}: {who}_branch_stages {bad} out of range; the {who} has {len(stages)} stages"
        )
    branches = nn.ModuleList(
        AuxiliaryBranch(stages, i, outputs, blocks_per_stage, who, block) for i in indices
    )
    return branches, indices


class HSAKD(Distiller):
    """Student terms over all 4 rotations of every image, each ``T²·batchmean`` KL with T = 3:
    ``main = KL(p_t ‖ p_s)`` of the main logits and ``branch<b> = KL(q_t^b ‖ q_s^b)`` of the
    4·K joint logits of each branch pair; all weights 1 (the kernel adds the student's CE on the
    unrotated rows, ``batch.primary``). The student's branches train with it, their gradients
    reaching the backbone. The teacher's branches are trained first, in :meth:`preparation`, on
    the frozen teacher (CE on the joint labels, summed over branches), and are kept in eval
    mode afterwards. Branches sit on every stage of each network (HSAKD: ResNet, WRN and
    ShuffleNets have 3 stages and 3 branches, MobileNetV2 4) or on the stages the params name;
    the student and teacher need as many. See the module docstring for the branch layout."""

    student_taps = ("logits", "stages")
    teacher_taps = ("logits", "stages")

    def __init__(self, params: HSAKDParams, ctx: DistillerContext) -> None:
        super().__init__()
        self.params = params
        self.temperature = params.temperature
        outputs = ROTATIONS * ctx.num_classes
        self.student_branches, self.student_stages = _branches(
            ctx.student_shapes, params.student_branch_stages, outputs,
            params.student_blocks_per_stage, params.block, "student"
        )
        self.teacher_branches, self.teacher_stages = _branches(
            ctx.teacher_shapes, params.teacher_branch_stages, outputs,
            params.teacher_blocks_per_stage, params.block, "teacher"
        )
        if len(self.student_branches) != len(self.teacher_branches):
            raise KdcoreError(
                f"{METHOD} pairs the auxiliary branches one to one, but the student has "
                f"{len(self.student_branches)} and the teacher {len(self.teacher_branches)}; set "
                "student_branch_stages / teacher_branch_stages"
            )
        self._teacher_features = ctx.teacher_features

    def train(self, mode: bool = True) -> HSAKD:
        """The teacher's branches stay in eval mode (their BatchNorm statistics are the ones
        the preparation learned)."""
        super().train(mode)
        self.teacher_branches.eval()
        return self

    def expand_batch(self, batch: Batch) -> Batch:
        """The four rotations of each image, rows ``4i..4i+3`` for image ``i``; ``primary``
        rows ``0::4`` hold the images as they came."""
        inputs = rotate_batch(batch.inputs)
        return Batch(inputs=inputs, labels=batch.labels, index=batch.index, epoch=batch.epoch,
                     epochs=batch.epochs, labeled=batch.labeled,
                     primary=torch.arange(0, len(inputs), ROTATIONS, device=inputs.device))

    @staticmethod
    def branch_logits(
        branches: nn.ModuleList, indices: list[int], stages: list[Tensor]
    ) -> list[Tensor]:
        """Each branch's joint logits from the stage it sits on."""
        return [branch(stages[i]) for branch, i in zip(branches, indices)]

    def preparation(self) -> Preparation:
        """Train the teacher's branches with CE on the joint labels of all rotated copies, the
        teacher frozen (HSAKD's ``--freezed`` mode, whose CE on the frozen main logits is a
        constant and left out). Samples the batch marks unlabeled are left out of the CE."""
        params = self.params
        if self._teacher_features is None:
            raise KdcoreError(
                f"{METHOD}: the distiller context offers no teacher_features to train the branches"
            )

        def step_loss(batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
            features = self._teacher_features(rotate_batch(batch.inputs))
            labels, weights = batch.labels, None
            if batch.labeled is not None:  # unusable labels may be anything, even -1
                labels = torch.where(batch.labeled, labels, torch.zeros_like(labels))
                weights = batch.labeled.repeat_interleave(ROTATIONS).to(features["logits"].dtype)
            labels = joint_labels(labels)
            terms: dict[str, Tensor] = {}
            stages = features["stages"]
            logits = self.branch_logits(self.teacher_branches, self.teacher_stages, stages)
            for b, branch in enumerate(logits, start=1):
                if weights is None:
                    terms[f"branch{b}_ce"] = F.cross_entropy(branch, labels)
                else:
                    per_row = F.cross_entropy(branch, labels, reduction="none")
                    terms[f"branch{b}_ce"] = (per_row * weights).sum() / weights.sum().clamp(min=1)
            return sum(terms.values()), terms

        return Preparation(
            trainable=self.teacher_branches,
            step_loss=step_loss,
            epochs=params.prepare_epochs,
            batch_size=params.prepare_batch_size,
            optimizer={
                "lr": params.prepare_lr,
                "momentum": params.prepare_momentum,
                "nesterov": True,
                "weight_decay": params.prepare_weight_decay,
            },
            schedule={"name": "multistep", "milestones": list(params.prepare_milestones)},
        )

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        T = self.temperature
        terms = {"main": kl_batchmean(student["logits"], teacher["logits"].detach(), T)}
        s_logits = self.branch_logits(self.student_branches, self.student_stages, student["stages"])
        with torch.no_grad():
            t_stages = [t.detach() for t in teacher["stages"]]
            t_logits = self.branch_logits(self.teacher_branches, self.teacher_stages, t_stages)
        for b, (s, t) in enumerate(zip(s_logits, t_logits), start=1):
            terms[f"branch{b}"] = kl_batchmean(s, t, T)
        return terms
