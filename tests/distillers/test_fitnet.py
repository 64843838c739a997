import pytest
import torch
import torch.nn.functional as F
from kdcore.testing import assert_trains, check_gradients, make_batch, make_distiller_context, train_losses
from distiller_testkit import build
from torch import nn

from kdcore.errors import KdcoreError

STUDENT = {"stem": (3, 8, 8), "stages": [(4, 8, 8), (6, 4, 4), (8, 2, 2)], "pooled": (8,)}
TEACHER = {"stem": (5, 8, 8), "stages": [(5, 8, 8), (7, 4, 4), (9, 2, 2)], "pooled": (9,)}


def random_stages(shapes, batch_size=4):
    return [torch.randn(batch_size, *shape) for shape in shapes]


def test_hint_layer_2_is_the_second_stage_and_the_loss_is_bn_relu_conv_mse():
    torch.manual_seed(0)
    distiller = build("fitnet", make_distiller_context(STUDENT, TEACHER)).double()
    student = {"stages": [s.double() for s in random_stages(STUDENT["stages"])]}
    teacher = {"stages": [t.double() for t in random_stages(TEACHER["stages"])]}
    conv = distiller.regressor.conv
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (6, 7, (1, 1))

    loss = distiller(student, teacher, make_batch(4))["fitnet"]

    x, target = student["stages"][1], teacher["stages"][1]
    weight, bias = conv.weight[:, :, 0, 0], conv.bias
    expected_sum, count = 0.0, 0
    for o in range(7):
        pre = torch.zeros(4, 4, 4, dtype=torch.float64)
        for c in range(6):
            pre += weight[o, c] * x[:, c]
        pre += bias[o]
        mean = pre.sum() / pre.numel()
        variance = ((pre - mean) ** 2).sum() / pre.numel()
        bn = distiller.regressor.bn
        out = ((pre - mean) / torch.sqrt(variance + bn.eps)) * bn.weight[o] + bn.bias[o]
        out = torch.clamp(out, min=0)
        for b in range(4):
            for h in range(4):
                for w in range(4):
                    expected_sum += (out[b, h, w] - target[b, o, h, w]).item() ** 2
                    count += 1
    assert loss.item() == pytest.approx(expected_sum / count, rel=1e-9)


def test_hint_layer_0_uses_the_stem():
    distiller = build("fitnet", make_distiller_context(STUDENT, TEACHER), hint_layer=0)
    assert distiller.student_taps == ("stem",) and distiller.teacher_taps == ("stem",)
    loss = distiller(
        {"stem": torch.randn(2, 3, 8, 8)}, {"stem": torch.randn(2, 5, 8, 8)}, make_batch(2)
    )
    assert torch.isfinite(loss["fitnet"])


@pytest.mark.parametrize(
    ("student_map", "teacher_map", "kind"),
    [
        ((4, 8, 8), (6, 4, 4), nn.Conv2d),  # student twice the size: strided 3x3 conv
        ((4, 4, 4), (6, 8, 8), nn.ConvTranspose2d),  # half the size: transposed conv
        ((4, 6, 6), (6, 4, 4), nn.Conv2d),  # larger by 2: valid 3x3 conv
    ],
)
def test_regressor_maps_mismatched_shapes_onto_the_teacher(student_map, teacher_map, kind):
    ctx = make_distiller_context({"stages": [(2, 8, 8), student_map]}, {"stages": [(2, 8, 8), teacher_map]})
    distiller = build("fitnet", ctx)
    assert isinstance(distiller.regressor.conv, kind)
    out = distiller.regressor(torch.randn(3, *student_map))
    assert tuple(out.shape[1:]) == teacher_map


def test_impossible_shapes_and_missing_stages_are_build_errors():
    with pytest.raises(KdcoreError, match="no regressor"):
        build(
            "fitnet",
            make_distiller_context({"stages": [(2, 8, 8), (4, 3, 3)]}, {"stages": [(2, 8, 8), (6, 8, 8)]}),
        )
    with pytest.raises(KdcoreError, match=r"\(C, H, W\)"):
        build("fitnet", make_distiller_context({"stages": [(8,), (8,)]}, {"stages": [(8,), (8,)]}))
    with pytest.raises(KdcoreError, match="hint_layer 4"):
        build("fitnet", make_distiller_context(STUDENT, TEACHER), hint_layer=4)


def test_gradients_reach_student_and_regressor_but_not_teacher():
    distiller = build("fitnet", make_distiller_context(STUDENT, TEACHER))
    student = {"stages": random_stages(STUDENT["stages"])}
    teacher = {"stages": random_stages(TEACHER["stages"])}
    check_gradients(distiller, student, teacher, make_batch(4), read=[student["stages"][1]])
    assert student["stages"][0].grad is None and student["stages"][2].grad is None


def test_training_a_small_student_reduces_the_loss():
    torch.manual_seed(1)
    images = torch.randn(16, 3, 8, 8)
    teacher_net = nn.Sequential(nn.Conv2d(3, 7, 3, stride=2, padding=1), nn.ReLU())
    with torch.no_grad():
        teacher = {
            "stages": [torch.zeros(16, 5, 8, 8), teacher_net(images), torch.zeros(16, 9, 2, 2)]
        }
    student_net = nn.Conv2d(3, 6, 3, stride=2, padding=1)
    distiller = build("fitnet", make_distiller_context(STUDENT, TEACHER))

    def features(net):
        return {"stages": [torch.zeros(16, 4, 8, 8), F.relu(net(images)), torch.zeros(16, 8, 2, 2)]}

    losses = train_losses(distiller, student_net, features, teacher, make_batch(16), lr=0.05)
    assert_trains(losses, 0.3)
