"""Architectures ``torchvision`` and ``timm``: any classifier by name, weights from local files
(safetensors and weights-only torch pickles, written here) or torchvision's weights enum (read
from a torch hub cache laid out here: nothing is downloaded), head replacement, the taps of each
family, the weights' normalisation, and a feature distillation through the real trainer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
import torchvision

from kdcore.api import ArchitectureContext, DatasetSpec
from kdcore.distill.taps import FeatureRecorder, feature_shapes
from kdcore.errors import KdcoreError
from kdcore.nn import DatasetBundle, Split
from kdcore.testing import run_recipe
from kdcore_vision.models import hub, torchvision_any

SIZE = 32


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test (there is no network here anyway)."""
    def refuse(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _spec(registry, name):
    return registry.get("architecture", name).spec


def _build(registry, arch, classes=10, size=SIZE, **params):
    spec = _spec(registry, arch)
    validated = spec.params(**params)
    model = spec.builder()(validated, ArchitectureContext(classes, (3, size, size)))
    return model, spec.tap_paths(validated)


def _logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(inputs)


def _save(model, path: Path) -> Path:
    if path.suffix == ".safetensors":
        safetensors.torch.save_model(model, str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


# --- torchvision: weights ---------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_torchvision_weights_file_round_trip(registry, tmp_path, suffix):
    torch.manual_seed(0)
    saved, _ = _build(registry, "torchvision", model="resnet18")
    path = _save(saved, tmp_path / f"resnet18{suffix}")
    torch.manual_seed(1)
    loaded, _ = _build(registry, "torchvision", model="resnet18", weights=str(path))
    inputs = torch.randn(2, 3, SIZE, SIZE)
    assert torch.equal(_logits(loaded, inputs), _logits(saved, inputs))


def test_a_file_for_other_classes_keeps_the_backbone_and_gets_a_new_head(registry, tmp_path):
    torch.manual_seed(0)
    saved, paths = _build(registry, "torchvision", classes=10, model="mobilenet_v3_small")
    path = _save(saved, tmp_path / "mnv3.pth")
    loaded, _ = _build(registry, "torchvision", classes=4, model="mobilenet_v3_small", weights=str(path),
                       num_classes=4)
    inputs = torch.randn(2, 3, SIZE, SIZE)
    features = {}
    for name, model in (("saved", saved), ("loaded", loaded)):
        model.eval()
        with torch.no_grad():
            features[name] = FeatureRecorder(model, paths, ["logits", "pooled"])(inputs)
    assert features["loaded"]["logits"].shape == (2, 4)
    assert torch.equal(features["loaded"]["pooled"], features["saved"]["pooled"])


def test_checkpoint_dicts_and_wrapper_prefixes_are_unwrapped(registry, tmp_path):
    torch.manual_seed(0)
    saved, _ = _build(registry, "torchvision", model="resnet18")
    # an old checkpoint (no BatchNorm num_batches_tracked), saved from DistributedDataParallel
    state = {f"module.{key}": value for key, value in saved.state_dict().items()
             if not key.endswith("num_batches_tracked")}
    # as timm's train.py writes them: the training arguments beside the state dict
    checkpoint = {"epoch": 3, "args": argparse.Namespace(lr=0.1), "state_dict": state}
    torch.save(checkpoint, tmp_path / "model_best.pth.tar")
    loaded, _ = _build(registry, "torchvision", model="resnet18", weights=str(tmp_path / "model_best.pth.tar"))
    inputs = torch.randn(1, 3, SIZE, SIZE)
    assert torch.equal(_logits(loaded, inputs), _logits(saved, inputs))


class _Payload:
    """Unpickling this would run ``open(marker, "w")``: a stand-in for code in a weights file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_pickle_that_would_run_code_is_refused_unrun(registry, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"fc.weight": torch.zeros(10, 512), "payload": _Payload(marker)}, tmp_path / "bad.pth")
    with pytest.raises(KdcoreError, match="objects other than tensors"):
        _build(registry, "torchvision", model="resnet18", weights=str(tmp_path / "bad.pth"))
    assert not marker.exists()


def test_weights_that_do_not_fit_are_an_error(registry, tmp_path):
    torch.manual_seed(0)
    other, _ = _build(registry, "torchvision", model="shufflenet_v2_x0_5")
    path = _save(other, tmp_path / "shufflenet.safetensors")
    with pytest.raises(KdcoreError, match="do not fit ResNet.*missing"):
        _build(registry, "torchvision", model="resnet18", weights=str(path))
    with pytest.raises(KdcoreError, match="does not exist"):
        _build(registry, "torchvision", model="resnet18", weights=str(tmp_path / "absent.pth"))


def test_weights_enum_names_resolve_without_fetching():
    enum = torchvision.models.ResNet18_Weights
    assert torchvision_any.resolve_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1") is enum.IMAGENET1K_V1
    assert torchvision.models.get_weight("ResNet18_Weights.IMAGENET1K_V1") is enum.IMAGENET1K_V1
    assert torchvision_any.resolve_weights("resnet18", "IMAGENET1K_V1") is enum.IMAGENET1K_V1
    assert torchvision_any.resolve_weights("resnet18", "DEFAULT") is enum.DEFAULT
    assert torchvision_any.resolve_weights("resnet18", None) is None
    assert torchvision_any.resolve_weights("resnet18", "~/w/resnet18.pth") == "~/w/resnet18.pth"
    with pytest.raises(KdcoreError, match="ResNet50_Weights, not resnet18's ResNet18_Weights"):
        torchvision_any.resolve_weights("resnet18", "ResNet50_Weights.IMAGENET1K_V2")
    with pytest.raises(KdcoreError, match="did you mean 'ResNet18_Weights.IMAGENET1K_V1'"):
        torchvision_any.resolve_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V2")


def _cache_file(torch_home: Path, weights) -> Path:
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    return checkpoints / Path(weights.url).name


def test_enum_weights_load_from_the_torch_cache_and_the_head_is_replaced(registry, tmp_path, monkeypatch):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18()  # stands in for the published weights, 1000 classes
    torch.save(imagenet.state_dict(), _cache_file(tmp_path, weights))
    model, paths = _build(registry, "torchvision", classes=10, model="resnet18",
                          weights="ResNet18_Weights.IMAGENET1K_V1")
    assert model.fc.out_features == 10
    inputs = torch.randn(2, 3, SIZE, SIZE)
    imagenet.eval()
    model.eval()
    with torch.no_grad():
        expected = FeatureRecorder(imagenet, paths, ["pooled"])(inputs)["pooled"]
        assert torch.equal(FeatureRecorder(model, paths, ["pooled"])(inputs)["pooled"], expected)

    marker = tmp_path / "ran"
    torch.save({"payload": _Payload(marker)}, _cache_file(tmp_path, weights))
    with pytest.raises(KdcoreError, match="cannot load torchvision weights"):
        _build(registry, "torchvision", model="resnet18", weights="DEFAULT")
    assert not marker.exists()


# --- names ------------------------------------------------------------------------------------

def test_unknown_models_get_a_did_you_mean(registry):
    with pytest.raises(KdcoreError, match="unknown torchvision model 'resnet181'.*did you mean 'resnet18'"):
        _build(registry, "torchvision", model="resnet181")
    with pytest.raises(KdcoreError, match="not an image classifier"):
        _build(registry, "torchvision", model="fasterrcnn_resnet50_fpn")
    with pytest.raises(KdcoreError, match="3-channel"):
        _spec(registry, "torchvision").builder()(_spec(registry, "torchvision").params(model="resnet18"),
                                                 ArchitectureContext(10, (1, SIZE, SIZE)))
    with pytest.raises(KdcoreError, match="num_classes 7 differs from the dataset's 10"):
        _build(registry, "torchvision", model="resnet18", num_classes=7)


def test_model_is_required_and_unknown_keys_are_refused(registry):
    from pydantic import ValidationError

    for arch in ("torchvision", "timm"):
        with pytest.raises(ValidationError):
            _spec(registry, arch).params()
        with pytest.raises(ValidationError):
            _spec(registry, arch).params(model="resnet18", pretrained=True)


def test_builder_kwargs_reach_the_builder(registry):
    model, paths = _build(registry, "torchvision", model="mobilenet_v2", kwargs={"width_mult": 0.5})
    shapes = feature_shapes(FeatureRecorder(model.eval(), paths, ["stages"])(torch.randn(1, 3, SIZE, SIZE)))
    assert [s[0] for s in shapes["stages"]] == [16, 16, 48, 160]  # 24, 32, 96, 320 at width 1
    with pytest.raises(KdcoreError, match="torchvision mobilenet_v2: .*no_such_argument"):
        _build(registry, "torchvision", model="mobilenet_v2", kwargs={"no_such_argument": 1})
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="kwargs may not set num_classes"):
        _spec(registry, "torchvision").params(model="resnet18", kwargs={"num_classes": 3})


# --- torchvision: taps ------------------------------------------------------------------------

# one small model per family, at 64×64 (32×32 is too small for SqueezeNet's and GoogLeNet's pools)
FAMILY_MODELS = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "mnasnet0_5", "regnet_x_400mf",
                 "shufflenet_v2_x0_5", "squeezenet1_1", "googlenet"]
PRE_RELU = ("resnet", "vgg")
LINEAR_BOTTLENECKS = ("mobilenet", "efficientnet", "mnasnet", "convnext")


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_every_declared_tap_is_recorded_with_sane_shapes(registry, name):
    torch.manual_seed(0)
    model, paths = _build(registry, "torchvision", classes=10, size=64, model=name)
    model.eval()
    with torch.no_grad():
        features = FeatureRecorder(model, paths, ["logits", *paths])(torch.randn(2, 3, 64, 64))
    shapes = feature_shapes(features)
    assert shapes["logits"] == (10,)
    assert "stages" in shapes and all(len(s) == 3 for s in shapes["stages"])
    sides = [s[1] for s in shapes["stages"]]
    assert sides == sorted(sides, reverse=True) and sides[0] > sides[-1]
    if "stem" in shapes:
        assert len(shapes["stem"]) == 3 and shapes["stem"][1] >= sides[0]
    head = model.get_submodule(torchvision_any.head_path(name))
    if "pooled" in shapes:
        assert shapes["pooled"] == (head.in_features,)
        assert torch.allclose(head(features["pooled"]), features["logits"], atol=1e-5)
    if name.startswith(PRE_RELU):
        for pre, post in zip(features["preact_stages"], features["stages"], strict=True):
            assert torch.equal(F.relu(pre), post)
    elif name.startswith(LINEAR_BOTTLENECKS):
        assert paths["preact_stages"] == paths["stages"]


def test_vgg_taps_follow_its_blocks():
    taps = torchvision_any.taps(torchvision_any_params("vgg11_bn"))
    # vgg11_bn: conv-bn-relu ×1, M, ×1, M, ×2, M, ×2, M, ×2, M
    assert taps["stem"] == "features.2"
    assert taps["stages"] == ("features.6", "features.13", "features.20", "features.27")
    assert taps["preact_stages"] == ("features.5", "features.12", "features.19", "features.26")
    assert torchvision_any.taps(torchvision_any_params("vgg16"))["stages"][-1] == "features.29"


def torchvision_any_params(model, weights=None):
    from kdcore_vision.params import TorchvisionParams

    return TorchvisionParams(model=model, weights=weights)


def test_a_family_without_known_taps_offers_logits_and_pooled_only(registry, monkeypatch):
    monkeypatch.setattr(torchvision_any, "_FAMILIES", [])  # as if resnet18 were a new family
    model, paths = _build(registry, "torchvision", classes=3, model="resnet18")
    assert paths == {"pooled": "fc:input"} and model.fc.out_features == 3
    with pytest.raises(KdcoreError, match="no feature tap 'stages'.*arch.taps"):
        FeatureRecorder(model, paths, ["logits", "stages"])


def test_a_distiller_asking_for_a_missing_tap_is_told_to_add_it(registry):
    model, paths = _build(registry, "torchvision", classes=3, model="squeezenet1_1")  # a conv head
    assert "pooled" not in paths
    with pytest.raises(KdcoreError, match="no feature tap 'pooled'.*arch.taps"):
        FeatureRecorder(model, paths, ["pooled"])


def test_inplace_activations_are_switched_off(registry):
    model, _ = _build(registry, "torchvision", model="mobilenet_v3_small")
    assert not any(getattr(m, "inplace", False) for m in model.modules())


# --- normalisation ----------------------------------------------------------------------------

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_normalisation_comes_from_the_weights_metadata(registry):
    spec = _spec(registry, "torchvision")
    assert spec.weights_normalization(torchvision_any_params("resnet18", "DEFAULT")) == IMAGENET
    assert spec.weights_normalization(torchvision_any_params("resnet18")) == IMAGENET
    assert spec.weights_normalization(torchvision_any_params("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")) == IMAGENET
    assert _spec(registry, "resnet8").weights_normalization(object()) is None


# --- timm -------------------------------------------------------------------------------------

def test_timm_missing_is_a_clear_error(registry, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(KdcoreError, match=r"architecture 'timm' needs timm: pip install 'kdcore\[timm\]'"):
        _build(registry, "timm", model="resnet18")


def _timm_params(model, **params):
    from kdcore_vision.params import TimmParams

    return TimmParams(model=model, **params)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_file_round_trip_and_head_replacement(registry, tmp_path, suffix):
    pytest.importorskip("timm")
    torch.manual_seed(0)
    saved, paths = _build(registry, "timm", model="test_resnet")
    path = _save(saved, tmp_path / f"test_resnet{suffix}")
    torch.manual_seed(1)
    loaded, _ = _build(registry, "timm", model="test_resnet", pretrained_file=str(path))
    inputs = torch.randn(2, 3, SIZE, SIZE)
    assert torch.equal(_logits(loaded, inputs), _logits(saved, inputs))

    other, _ = _build(registry, "timm", classes=4, model="test_resnet", pretrained_file=str(path))
    other.eval()
    with torch.no_grad():
        pooled = FeatureRecorder(other, paths, ["logits", "pooled"])(inputs)
        expected = FeatureRecorder(saved, paths, ["pooled"])(inputs)["pooled"]
    assert pooled["logits"].shape == (2, 4) and torch.equal(pooled["pooled"], expected)


# per timm test model: (input side, has stem, has stages); test_vit's tokens and test_mambaout's
# channels-last maps are not stages
TIMM_MODELS = {"test_resnet": (SIZE, True, True), "test_convnext": (SIZE, False, True),
               "test_efficientnet": (SIZE, True, True), "test_vit": (160, False, False),
               "test_mambaout": (SIZE, False, False)}


@pytest.mark.parametrize("name", sorted(TIMM_MODELS))
def test_timm_taps_come_from_feature_info(registry, name, monkeypatch):
    timm = pytest.importorskip("timm")
    assert name in timm.list_models("test_*")
    size, has_stem, has_stages = TIMM_MODELS[name]
    torch.manual_seed(0)
    model, paths = _build(registry, "timm", classes=5, size=size, model=name)
    assert ("stem" in paths, "stages" in paths) == (has_stem, has_stages)
    monkeypatch.setattr(hub, "_TAPS", {})  # the kernel asking before any build: a new model
    assert paths == taps_from_params(name)
    model.eval()
    with torch.no_grad():
        features = FeatureRecorder(model, paths, ["logits", *paths])(torch.randn(2, 3, size, size))
    shapes = feature_shapes(features)
    assert shapes["logits"] == (5,)
    if has_stages:
        info = {level["module"]: level for level in model.feature_info}
        for module, shape in zip(paths["stages"], shapes["stages"], strict=True):
            assert len(shape) == 3 and shape[0] == info[module]["num_chs"]
            assert shape[1] == -(-size // info[module]["reduction"])
    head = model.get_classifier()
    assert shapes["pooled"] == (head.in_features,)
    assert torch.allclose(head(features["pooled"]), features["logits"], atol=1e-5)


def test_timm_taps_without_a_meta_forward_trust_the_declared_format(monkeypatch):
    timm = pytest.importorskip("timm")
    from kdcore_vision.models import timm_models

    monkeypatch.setattr(hub, "probe_shapes", lambda *args: None)  # a model the meta device cannot run
    assert timm_models.taps_of(timm.create_model("test_resnet")) == {
        "stem": "act1", "stages": ("layer1", "layer2", "layer3", "layer4"), "pooled": "fc:input"}
    assert timm_models.taps_of(timm.create_model("test_mambaout")) == {"pooled": "head.fc:input"}  # NHWC
    assert timm_models.taps_of(timm.create_model("test_vit")) == {"pooled": "head:input"}  # one reduction


def taps_from_params(name):
    from kdcore_vision.models import timm_models

    return timm_models.taps(_timm_params(name))


def test_timm_kwargs_fit_a_vit_to_small_images(registry):
    pytest.importorskip("timm")
    model, paths = _build(registry, "timm", classes=3, model="test_vit", kwargs={"img_size": SIZE})
    features = FeatureRecorder(model.eval(), paths, ["logits", "pooled"])(torch.randn(2, 3, SIZE, SIZE))
    assert features["logits"].shape == (2, 3) and features["pooled"].shape == (2, 64)


def test_timm_names_and_normalisation(registry):
    pytest.importorskip("timm")
    with pytest.raises(KdcoreError, match="unknown timm model 'resnet181'.*did you mean"):
        _build(registry, "timm", model="resnet181")
    with pytest.raises(KdcoreError, match="Invalid pretrained tag"):
        _build(registry, "timm", model="test_resnet.no_such_tag")
    spec = _spec(registry, "timm")
    assert spec.weights_normalization(_timm_params("test_resnet")) == ((0.5,) * 3, (0.5,) * 3)
    assert spec.weights_normalization(_timm_params("resnet18.a1_in1k")) == IMAGENET


# --- through the trainer ----------------------------------------------------------------------

CLASSES = 4


def build_tiny_images(params, ctx) -> DatasetBundle:
    generator = torch.Generator().manual_seed(0)

    def split(count: int) -> Split:
        labels = torch.arange(count) % CLASSES
        inputs = torch.randn(count, 3, SIZE, SIZE, generator=generator) + labels[:, None, None, None] * 0.5
        return Split(inputs=inputs, labels=labels)

    return DatasetBundle(num_classes=CLASSES, input_shape=(3, SIZE, SIZE), train=split(32), test=split(16))


TINY_IMAGES = DatasetSpec(name="tiny-images", summary="test", build=build_tiny_images)


STUDENTS = {"timm": {"name": "timm", "params": {"model": "test_resnet"}},
            "torchvision": {"name": "torchvision", "params": {"model": "mobilenet_v3_small"}}}


@pytest.mark.parametrize("student", sorted(STUDENTS))
def test_feature_distillation_through_the_trainer(registry, tmp_path, student):
    if student == "timm":
        pytest.importorskip("timm")
    recipe = {
        "name": "hub-pair",
        "seed": 0,
        "data": {"name": "tiny-images"},
        "optimizer": {"lr": 0.01, "momentum": 0.9},
        "teacher": {"arch": {"name": "torchvision", "params": {"model": "resnet18"}},
                    "objective": {"name": "ce"}, "epochs": 1, "batch_size": 16},
        "student": {"arch": STUDENTS[student],
                    "distillers": [{"name": "at", "weight": 1.0}, {"name": "pkt", "weight": 1.0}],
                    "epochs": 1, "batch_size": 16},
        "runtime": {"device": "cpu", "threads": 1},
    }
    run_recipe(recipe, tmp_path / "run", registry, components=[TINY_IMAGES])
    [record] = [json.loads(line) for line in (tmp_path / "run/student/metrics.jsonl").read_text().splitlines()]
    terms = {key: value for key, value in record.items() if key.startswith(("train/at", "train/pkt"))}
    assert any(k.startswith("train/at") for k in terms) and any(k.startswith("train/pkt") for k in terms)
    assert all(torch.isfinite(torch.tensor(value)) for value in terms.values())
