"""The vision architectures: parameter counts against the published ones (methods.md §3, with
100 classes), tap shapes against methods.md §3 tables, and the pre-/post-ReLU tap relation."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kdcore.api import ArchitectureContext
from kdcore.registry import load_registry
from kdcore.distill.taps import FeatureRecorder, feature_shapes
from kdcore_vision.models.shufflenet import channel_shuffle

TAPS = ["stem", "stages", "preact_stages", "pooled"]


def _resnet_shapes(widths):
    stem, s1, s2, s3 = widths
    return (stem, 32, 32), [(s1, 32, 32), (s2, 16, 16), (s3, 8, 8)], (s3,)


def _wrn_shapes(k):
    return (16, 32, 32), [(16 * k, 32, 32), (32 * k, 16, 16), (64 * k, 8, 8)], (64 * k,)


VGG_SHAPES = (64, 32, 32), [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)], (512,)
TV_RESNET_SHAPES = (64, 112, 112), [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)], (512,)

# name: (stem, stages, pooled) for one 32×32 image (224×224 for the torchvision networks)
SHAPES = {
    **{f"resnet{d}": _resnet_shapes((16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _resnet_shapes((32, 64, 128, 256)),
    "resnet32x4": _resnet_shapes((32, 64, 128, 256)),
    "wrn-16-1": _wrn_shapes(1),
    "wrn-40-1": _wrn_shapes(1),
    "wrn-16-2": _wrn_shapes(2),
    "wrn-40-2": _wrn_shapes(2),
    **{f"vgg{d}": VGG_SHAPES for d in (8, 11, 13, 16, 19)},
    "resnet18": ((64, 32, 32), [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)], (512,)),
    "resnet50": ((64, 32, 32), [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)], (2048,)),
    "mobilenetv2": ((16, 16, 16), [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)], (1280,)),
    # methods.md §1.7: channels collapse to 3/2/3/9/32, the last conv keeps 1280
    "mobilenetv2-x0.1": ((3, 16, 16), [(2, 16, 16), (3, 8, 8), (9, 4, 4), (32, 2, 2)], (1280,)),
    "shufflenetv1": ((24, 32, 32), [(240, 16, 16), (480, 8, 8), (960, 4, 4)], (960,)),
    "shufflenetv2": ((24, 32, 32), [(116, 16, 16), (232, 8, 8), (464, 4, 4)], (1024,)),
    "tv-resnet18": TV_RESNET_SHAPES,
    "tv-resnet34": TV_RESNET_SHAPES,
    "tv-resnet50": ((64, 112, 112), [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)],
                    (2048,)),
    "tv-mobilenet_v2": ((32, 112, 112), [(24, 56, 56), (32, 28, 28), (96, 14, 14), (320, 7, 7)],
                        (1280,)),
}


# --- parameter counts computed by hand, for the networks methods.md does not list -------------

def _bn(c):
    return 2 * c


def _basic_resnet_params(stem, widths, blocks, strides, classes):
    """Stem conv3×3 + BN, basic blocks with a 1×1 conv + BN shortcut where the shape changes."""
    total, c_in = 27 * stem + _bn(stem), stem
    for c, n, stride in zip(widths, blocks, strides):
        for i in range(n):
            block_in = c_in if i == 0 else c
            total += 9 * block_in * c + _bn(c) + 9 * c * c + _bn(c)
            if block_in != c or (i == 0 and stride != 1):
                total += block_in * c + _bn(c)
        c_in = c
    return total + widths[-1] * classes + classes


def _cifar_resnet_params(depth, widths, classes=100):
    n = (depth - 2) // 6
    return _basic_resnet_params(widths[0], widths[1:], [n] * 3, [1, 2, 2], classes)


def _wrn_params(depth, k, classes=100):
    n = (depth - 4) // 6
    total, c_in = 27 * 16, 16
    for c in (16 * k, 32 * k, 64 * k):
        for i in range(n):
            block_in = c_in if i == 0 else c
            total += _bn(block_in) + 9 * block_in * c + _bn(c) + 9 * c * c
            total += block_in * c if block_in != c else 0
        c_in = c
    return total + _bn(64 * k) + 64 * k * classes + classes


def _vgg_params(widths, classes=100):
    total, c_in = 0, 3
    for c in widths:
        total += 9 * c_in * c + c + _bn(c)
        c_in = c
    return total + 512 * classes + classes


def _mobilenetv2_params(width, classes=100, expansion=6):
    c_in = int(32 * width)
    total = 27 * c_in + _bn(c_in)
    for t, c, n in ((1, 16, 1), (expansion, 24, 2), (expansion, 32, 3), (expansion, 64, 4),
                    (expansion, 96, 3), (expansion, 160, 3), (expansion, 320, 1)):
        for _ in range(n):
            hidden, out = c_in * t, int(c * width)
            total += c_in * hidden + _bn(hidden) + 9 * hidden + _bn(hidden) + hidden * out + _bn(out)
            c_in = out
    return total + c_in * 1280 + _bn(1280) + 1280 * classes + classes


# name: (parameters in millions at 100 classes, decimals printed)
PUBLISHED_PARAMS = {
    "resnet8": (0.08, 2), "resnet20": (0.28, 2), "resnet56": (0.86, 2), "resnet110": (1.74, 2),
    "resnet8x4": (1.23, 2), "resnet32x4": (7.43, 2),
    "wrn-16-2": (0.70, 2), "wrn-40-2": (2.26, 2), "wrn-40-1": (0.57, 2),
    "vgg8": (3.97, 2), "vgg13": (9.46, 2),
    "resnet50": (23.71, 2), "mobilenetv2": (0.81, 2),
    "shufflenetv1": (0.95, 2), "shufflenetv2": (1.36, 2),
}
HAND_COUNTED_PARAMS = {
    **{f"resnet{d}": _cifar_resnet_params(d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _cifar_resnet_params(8, (32, 64, 128, 256)),
    "resnet32x4": _cifar_resnet_params(32, (32, 64, 128, 256)),
    "resnet18": _basic_resnet_params(64, (64, 128, 256, 512), [2] * 4, [1, 2, 2, 2], 100),
    **{f"wrn-{d}-{k}": _wrn_params(d, k) for d in (16, 40) for k in (1, 2)},
    "vgg8": _vgg_params([64, 128, 256, 512, 512]),
    "vgg11": _vgg_params([64, 128, 256, 256, 512, 512, 512, 512]),
    "vgg13": _vgg_params([64, 64, 128, 128, 256, 256, 512, 512, 512, 512]),
    "vgg16": _vgg_params([64, 64, 128, 128] + [256] * 3 + [512] * 6),
    "vgg19": _vgg_params([64, 64, 128, 128] + [256] * 4 + [512] * 8),
    "mobilenetv2": _mobilenetv2_params(0.5),
    "mobilenetv2-x0.1": _mobilenetv2_params(0.1),
}
# torchvision's documented counts (1000 classes)
TORCHVISION_PARAMS = {
    "tv-resnet18": 11_689_512, "tv-resnet34": 21_797_672, "tv-resnet50": 25_557_032,
    "tv-mobilenet_v2": 3_504_872,
}


@pytest.fixture(scope="module")
def registry():
    return load_registry()


MODELS_BY_NAME = {"torchvision", "timm"}
"""Architectures that build any model by name (tests/vision/test_model_hub.py tests them)."""


def _vision_names(registry):
    return sorted(c.name for c in registry.all_components()
                  if c.kind == "architecture" and c.provider.name == "vision" and c.name not in MODELS_BY_NAME)


def _build(registry, name, num_classes, input_shape):
    spec = registry.get("architecture", name).spec
    params = spec.params()
    model = spec.builder()(params, ArchitectureContext(num_classes, input_shape))
    return model, spec.tap_paths(params)


def test_every_architecture_has_expected_shapes_and_a_parameter_count(registry):
    names = set(_vision_names(registry))
    assert names == set(SHAPES)
    assert names == set(HAND_COUNTED_PARAMS) | set(PUBLISHED_PARAMS) | set(TORCHVISION_PARAMS)


def test_hand_counts_agree_with_published_counts():
    for name, (millions, decimals) in PUBLISHED_PARAMS.items():
        if name in HAND_COUNTED_PARAMS:
            assert round(HAND_COUNTED_PARAMS[name] / 1e6, decimals) == millions, name


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_parameters_taps_and_logits(registry, name):
    imagenet = name.startswith("tv-")
    classes, size = (1000, 224) if imagenet else (100, 32)
    torch.manual_seed(0)
    model, paths = _build(registry, name, classes, (3, size, size))

    count = sum(p.numel() for p in model.parameters())
    if imagenet:
        assert count == TORCHVISION_PARAMS[name]
    if name in PUBLISHED_PARAMS:
        millions, decimals = PUBLISHED_PARAMS[name]
        assert round(count / 1e6, decimals) == millions
    if name in HAND_COUNTED_PARAMS:
        assert count == HAND_COUNTED_PARAMS[name]

    model.eval()
    recorder = FeatureRecorder(model, paths, ["logits", *TAPS])
    with torch.no_grad():
        features = recorder(torch.randn(1, 3, size, size))
    shapes = feature_shapes(features)
    stem, stages, pooled = SHAPES[name]
    assert shapes["logits"] == (classes,)
    assert shapes["stem"] == stem
    assert shapes["stages"] == stages
    assert shapes["preact_stages"] == stages
    assert shapes["pooled"] == pooled
    # the pooled vector is what the classifier reads
    classifier = model.fc if hasattr(model, "fc") else (
        model.linear if hasattr(model, "linear") else model.classifier)
    assert torch.allclose(classifier(features["pooled"]), features["logits"], atol=1e-5)

    # pre-ReLU stage taps: the stage output is the ReLU of the tapped tensor
    pre, post = features["preact_stages"], features["stages"]
    if name.startswith(("resnet", "vgg", "shufflenetv1", "tv-resnet")):
        assert any((p < 0).any() for p in pre)
        for p, q in zip(pre, post):
            assert torch.equal(F.relu(p), q)
    elif name == "shufflenetv2":
        for p, q in zip(pre, post):
            assert torch.equal(channel_shuffle(F.relu(p), 2), q)
    elif name.startswith("wrn"):
        # the next BatchNorm of each raw residual sum (RepDistiller's preact for WRN)
        for p, q, bn in zip(pre, post, (model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1)):
            assert torch.allclose(p, bn(q), atol=1e-5)
    else:  # MobileNetV2: linear bottlenecks, no ReLU at the stage ends
        for p, q in zip(pre, post):
            assert torch.equal(p, q)


def test_vgg_pools_after_block3_at_64_pixels(registry):
    model, paths = _build(registry, "vgg8", 10, (3, 64, 64))
    features = FeatureRecorder(model, paths, ["stages"])(torch.randn(1, 3, 64, 64))
    assert [tuple(s.shape[2:]) for s in features["stages"]] == [(32, 32), (16, 16), (8, 8), (4, 4)]


def test_cifar_models_follow_input_channels_and_classes(registry):
    model, _ = _build(registry, "resnet8", 2, (1, 32, 32))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)


def test_mobilenetv2_width_is_a_parameter(registry):
    spec = registry.get("architecture", "mobilenetv2").spec
    model = spec.builder()(spec.params(width=0.1), ArchitectureContext(100, (3, 32, 32)))
    assert sum(p.numel() for p in model.parameters()) == HAND_COUNTED_PARAMS["mobilenetv2-x0.1"]


def test_registration_does_not_import_torch():
    code = ("import sys, kdcore_vision as v; "
            "specs = [*v.kdcore_architectures(), *v.kdcore_datasets()]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
