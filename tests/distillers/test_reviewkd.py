import pytest
import torch
import torch.nn.functional as F
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context, train_losses
from distiller_testkit import build
from tiny_images import records, run_resnet8_pair
from torch import nn

from kdcore.errors import KdcoreError
from kdcore_distillers.published import REVIEWKD_WEIGHT
from tests.conftest import published_weights
from kdcore_distillers.reviewkd import hcl_loss

PUBLISHED = published_weights()


STUDENT = {"stages": [(4, 8, 8), (6, 4, 4), (8, 2, 2)], "pooled": (8,)}
TEACHER = {"preact_stages": [(5, 8, 8), (7, 4, 4), (9, 2, 2)], "pooled": (9,)}


def student_features(batch_size=4, shapes=STUDENT):
    return {
        "stages": [torch.randn(batch_size, *s) for s in shapes["stages"]],
        "pooled": torch.randn(batch_size, *shapes["pooled"]),
    }


def teacher_features(batch_size=4, shapes=TEACHER):
    return {
        "preact_stages": [torch.randn(batch_size, *s) for s in shapes["preact_stages"]],
        "pooled": torch.randn(batch_size, *shapes["pooled"]),
    }


def block_mean(x, size):
    """Average over each of the size×size equal blocks of the (B, C, H, H) map, by loops."""
    k = x.shape[2] // size
    out = torch.zeros(x.shape[0], x.shape[1], size, size, dtype=x.dtype)
    for i in range(size):
        for j in range(size):
            out[:, :, i, j] = x[:, :, i * k:(i + 1) * k, j * k:(j + 1) * k].mean(dim=(2, 3))
    return out


def mean_square(a, b):
    return ((a - b) ** 2).sum().item() / a.numel()


# The pooled sizes HCL adds for a level of height h, with their weights (halved per size kept).
HCL_TERMS = {8: {4: 1 / 2, 2: 1 / 4, 1: 1 / 8}, 4: {2: 1 / 2, 1: 1 / 4}, 2: {1: 1 / 2}, 1: {}}


def test_hcl_matches_a_hand_computation_over_levels_and_pool_sizes():
    torch.manual_seed(0)
    heights = [8, 4, 2, 1]
    student = [torch.randn(2, 3, h, h, dtype=torch.float64) for h in heights]
    teacher = [torch.randn(2, 3, h, h, dtype=torch.float64) for h in heights]
    expected = 0.0
    for fs, ft, h in zip(student, teacher, heights):
        level = mean_square(fs, ft)
        norm = 1.0
        for size, weight in HCL_TERMS[h].items():
            level += weight * mean_square(block_mean(fs, size), block_mean(ft, size))
            norm += weight
        expected += level / norm
    assert hcl_loss(student, teacher).item() == pytest.approx(expected, rel=1e-12)


def test_distiller_loss_is_hcl_of_the_fused_student_levels_against_teacher_levels():
    torch.manual_seed(1)
    distiller = build("reviewkd", make_distiller_context(STUDENT, TEACHER), warmup_epochs=0)
    student, teacher = student_features(), teacher_features()
    loss = distiller(student, teacher, make_batch(4))["reviewkd"]
    fused = distiller.fuse(student["stages"], student["pooled"])
    targets = teacher["preact_stages"] + [teacher["pooled"][:, :, None, None]]
    assert [tuple(f.shape) for f in fused] == [tuple(t.shape) for t in targets]
    assert loss.item() == pytest.approx(hcl_loss(fused, targets).item(), rel=1e-6)


def test_abf_fuses_with_the_nearest_upsampled_residual_by_hand():
    torch.manual_seed(2)
    distiller = build("reviewkd", make_distiller_context(STUDENT, TEACHER)).double().eval()
    abf = distiller.abfs[2]  # the shallowest-but-one level: stage 2, 6×4×4 → teacher 7×4×4
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    residual = torch.randn(2, 8, 2, 2, dtype=torch.float64)  # mid = 8 channels, from the 2×2 level
    out, passed = abf(x, residual, (4, 4))

    def bn(values, module):  # eval mode: running mean 0, variance 1
        scale = module.weight / torch.sqrt(module.running_var + module.eps)
        centred = values - module.running_mean[:, None, None]
        return centred * scale[:, None, None] + module.bias[:, None, None]

    w1 = abf.conv1[0].weight[:, :, 0, 0]
    transformed = torch.stack(
        [bn(torch.einsum("oc,chw->ohw", w1, x[b]), abf.conv1[1]) for b in range(2)]
    )
    upsampled = torch.zeros(2, 8, 4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            upsampled[:, :, i, j] = residual[:, :, i // 2, j // 2]
    wa, ba = abf.att_conv[0].weight[:, :, 0, 0], abf.att_conv[0].bias
    both = torch.cat([transformed, upsampled], dim=1)
    attention = torch.sigmoid(torch.einsum("oc,bchw->bohw", wa, both) + ba[None, :, None, None])
    fused = transformed * attention[:, :1] + upsampled * attention[:, 1:]
    torch.testing.assert_close(passed, fused)
    w2 = abf.conv2[0].weight
    padded = F.pad(fused, (1, 1, 1, 1))
    conv = torch.zeros(2, 7, 4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            conv[:, :, i, j] = torch.einsum("ocuv,bcuv->bo", w2, padded[:, :, i:i + 3, j:j + 3])
    torch.testing.assert_close(out, torch.stack([bn(conv[b], abf.conv2[1]) for b in range(2)]))


# Real pairs' shapes (methods.md §3) and the layouts build_review_kd writes out for them
# (in_channels, out_channels, shallowest level first; shapes, out_shapes deepest first).
PAIRS = {
    "resnet32x4->resnet8x4": (
        {"stages": [(64, 32, 32), (128, 16, 16), (256, 8, 8)], "pooled": (256,)},
        {"preact_stages": [(64, 32, 32), (128, 16, 16), (256, 8, 8)], "pooled": (256,)},
        [64, 128, 256, 256], [64, 128, 256, 256], [1, 8, 16, 32], [1, 8, 16, 32], 256,
    ),
    "wrn-40-2->shufflenetv1": (
        {"stages": [(240, 16, 16), (480, 8, 8), (960, 4, 4)], "pooled": (960,)},
        {"preact_stages": [(32, 32, 32), (64, 16, 16), (128, 8, 8)], "pooled": (128,)},
        [240, 480, 960, 960], [32, 64, 128, 128], [1, 4, 8, 16], [1, 8, 16, 32], 512,
    ),
    "vgg13->mobilenetv2": (
        {"stages": [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)], "pooled": (1280,)},
        {"preact_stages": [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)], "pooled": (512,)},
        [12, 16, 48, 160, 1280], [128, 256, 512, 512, 512], [1, 2, 4, 8, 16], [1, 4, 4, 8, 16], 512,
    ),
}


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_abf_layout_of_published_pairs_and_outputs_at_the_teachers_shapes(pair):
    s_shapes, t_shapes, in_channels, out_channels, shapes, out_shapes, mid = PAIRS[pair]
    distiller = build("reviewkd", make_distiller_context(s_shapes, t_shapes))
    assert distiller.in_channels == in_channels and distiller.out_channels == out_channels
    assert [h for h, _ in distiller.shapes[::-1]] == shapes
    assert [h for h, _ in distiller.out_shapes[::-1]] == out_shapes
    assert distiller.mid_channels == mid
    deepest, *others = distiller.abfs
    assert deepest.att_conv is None and deepest.conv1[0].in_channels == in_channels[-1]
    for abf in others:
        assert abf.att_conv[0].in_channels == 2 * mid and abf.att_conv[0].out_channels == 2
    student = student_features(2, s_shapes)
    fused = distiller.fuse(student["stages"], student["pooled"])
    expected = [(2, *s) for s in t_shapes["preact_stages"]] + [(2, t_shapes["pooled"][0], 1, 1)]
    assert [tuple(f.shape) for f in fused] == expected


def test_gradients_reach_student_levels_and_fusion_params_but_not_teacher():
    distiller = build("reviewkd", make_distiller_context(STUDENT, TEACHER), warmup_epochs=0)
    check_gradients(distiller, student_features(), teacher_features(), make_batch(4))
    assert all(abf.att_conv[0].weight.grad.abs().sum() > 0 for abf in distiller.abfs[1:])


@pytest.mark.parametrize(("epoch", "factor"), [(0, 1 / 20), (9, 0.5), (19, 1.0), (150, 1.0)])
def test_warmup_is_linear_over_20_epochs_counted_from_one(epoch, factor):
    torch.manual_seed(3)
    warm = build("reviewkd", make_distiller_context(STUDENT, TEACHER))
    full = build("reviewkd", make_distiller_context(STUDENT, TEACHER), warmup_epochs=0)
    full.load_state_dict(warm.state_dict())
    student, teacher = student_features(), teacher_features()
    got = warm(student, teacher, make_batch(4, epoch=epoch))["reviewkd"]
    reference = full(student, teacher, make_batch(4, epoch=epoch))["reviewkd"]
    assert got.item() == pytest.approx(factor * reference.item(), rel=1e-6)


def test_published_weights():
    assert PUBLISHED["reviewkd"] == 5.0
    assert REVIEWKD_WEIGHT[("resnet32x4", "ShuffleV2")] == 8.0
    assert REVIEWKD_WEIGHT[("resnet56", "resnet20")] == 0.6
    assert REVIEWKD_WEIGHT[("resnet110", "resnet32")] == 1.0


def test_mismatched_stage_counts_and_missing_taps_are_build_errors():
    fewer = {"preact_stages": TEACHER["preact_stages"][:2], "pooled": (9,)}
    with pytest.raises(KdcoreError, match="student has 3 and the teacher 2"):
        build("reviewkd", make_distiller_context(STUDENT, fewer))
    with pytest.raises(KdcoreError, match="'preact_stages'"):
        build("reviewkd", make_distiller_context(STUDENT, {"stages": TEACHER["preact_stages"], "pooled": (9,)}))
    with pytest.raises(KdcoreError, match="'pooled'"):
        build("reviewkd", make_distiller_context({"stages": STUDENT["stages"]}, TEACHER))


class TinyStudent(nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1),
            nn.Conv2d(6, 8, 3, stride=2, padding=1),
        ])

    def forward(self, x):
        stages = []
        for conv in self.stages:
            x = F.relu(conv(x))
            stages.append(x)
        return {"stages": stages, "pooled": x.mean(dim=(2, 3))}


def test_training_a_small_student_reduces_the_loss():
    torch.manual_seed(4)
    images = torch.randn(16, 3, 8, 8)
    teacher_net = TinyStudent()
    with torch.no_grad():
        t = teacher_net(images)
    teacher = {"preact_stages": [torch.cat([s, s[:, :1]], dim=1) for s in t["stages"]],
               "pooled": torch.cat([t["pooled"], t["pooled"][:, :1]], dim=1)}
    distiller = build("reviewkd", make_distiller_context(STUDENT, TEACHER), warmup_epochs=0)
    losses = train_losses(
        distiller, TinyStudent(), lambda net: net(images), teacher, make_batch(16), lr=0.05
    )
    assert_trains(losses, 0.3)


def test_end_to_end_through_the_trainer(registry, write_recipe, tmp_path):
    run = run_resnet8_pair(registry, write_recipe, tmp_path / "run", {"name": "reviewkd", "weight": 5.0})
    (student,) = records(run / "student/metrics.jsonl")
    assert {"train/ce", "train/reviewkd"} <= set(student)
    assert student["train/reviewkd"] > 0
    weighted = student["train/ce"] + 5.0 * student["train/reviewkd"]
    assert student["train/loss"] == pytest.approx(weighted, rel=1e-5)
