"""Architecture ``torchvision``: any torchvision image classifier by name, randomly initialised or
with torchvision's weights (an enum name, fetched by torchvision) or a local weights file.

Params: ``model`` (a name from ``torchvision.models.list_models(module=torchvision.models)``),
``weights`` (``None``; ``"DEFAULT"``, ``"IMAGENET1K_V1"`` or ``"ResNet18_Weights.IMAGENET1K_V1"``,
fetched by torchvision into the torch hub cache and read there with ``weights_only=True`` first;
or a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` state dict), ``num_classes``
(default the dataset's), ``kwargs`` (more arguments of the builder: ``dropout``,
``width_mult``...). The classification head is replaced by a newly initialised one when the
weights' classes differ.

Taps per family (module paths; ``logits`` is always there; at 224×224 the stages are the stage
outputs at strides 4, 8, 16, 32 unless said otherwise):

=====================================  =======================  ==============================================  ===================
family (models)                        stem                     stages                                          pooled (head input)
=====================================  =======================  ==============================================  ===================
resnet*, resnext*, wide_resnet*        ``relu`` (s2)            ``layer1`` .. ``layer4``                        ``fc:input``
regnet_x_*, regnet_y_*                 ``stem``                 ``trunk_output.block1`` .. ``block4``           ``fc:input``
mobilenet_v2                           ``features.0``           ``features.3/.6/.13/.17``                       ``classifier:input``
mobilenet_v3_large                     ``features.0``           ``features.3/.6/.12/.15``                       ``classifier.2:input``
mobilenet_v3_small                     ``features.0``           ``features.1/.3/.8/.11``                        ``classifier.2:input``
efficientnet_b0..b7                    ``features.0``           ``features.2/.3/.5/.7``                         ``classifier:input``
efficientnet_v2_s                      ``features.0``           ``features.2/.3/.5/.6``                         ``classifier:input``
efficientnet_v2_m, efficientnet_v2_l   ``features.0``           ``features.2/.3/.5/.7``                         ``classifier:input``
mnasnet*                               ``layers.7``             ``layers.8/.9/.11/.13``                         ``classifier:input``
convnext_*                             ``features.0`` (s4)      ``features.1/.3/.5/.7``                         ``classifier.2:input``
densenet*                              ``features.relu0``       ``features.denseblock1..3``, ``features.norm5`` ``classifier:input``
vgg* (and _bn)                         block 1's last ReLU      blocks 2..5's last ReLU (strides 2..16)        ``classifier.5:input``
shufflenet_v2_*                        ``conv1``                ``stage2``, ``stage3``, ``stage4`` (s8..32)     ``fc:input``
squeezenet1_0, squeezenet1_1           ``features.1``           the Fire module before each max-pool and last   none (conv head)
googlenet                              ``conv1``                ``conv3``, ``inception3b/4e/5b``                ``dropout:input``
inception_v3                           ``Conv2d_2b_3x3``        ``Conv2d_4a_3x3``, ``Mixed_5d/6e/7c``           ``dropout:input``
maxvit_t                               ``stem``                 ``blocks.0`` .. ``blocks.3``                    ``classifier.5:input``
alexnet                                                                                                         ``classifier.6:input``
swin_*, swin_v2_* (channels-last)                                                                               ``head:input``
vit_* (tokens)                         ``conv_proj``                                                            ``heads:input``
=====================================  =======================  ==============================================  ===================

``preact_stages`` (the stage outputs before their last ReLU): ResNets (the input of the last
block's ReLU), VGGs (the module before each block's last ReLU), and the stages themselves for
the linear-bottleneck families (MobileNets, EfficientNets, MNASNet, ConvNeXt). A "pooled" tap is
taken before the dropout that precedes the head. Swin's stages are channels-last and ViT's
tokens, which the stage distillers do not read: they have no ``stages``; add taps by module path
under the stage's ``arch.taps``. A model of a family not listed here (a newer torchvision) gets
``pooled`` from its last ``nn.Linear``.

In-place activations are switched to out-of-place (the outputs are unchanged), so that a
recorded tap is not overwritten by the next module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision import models

from kdcore.api import ArchitectureContext
from kdcore.errors import KdcoreError
from kdcore_vision.models import hub

ARCHITECTURE = "torchvision"

_RESNET_BLOCKS = {
    "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3),
    "resnext50_32x4d": (3, 4, 6, 3), "resnext101_32x8d": (3, 4, 23, 3),
    "resnext101_64x4d": (3, 4, 23, 3), "wide_resnet50_2": (3, 4, 6, 3),
    "wide_resnet101_2": (3, 4, 23, 3),
}
_VGG_CONFIGS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}


def _resnet(name: str) -> dict[str, Any]:
    blocks = _RESNET_BLOCKS.get(name)
    taps: dict[str, Any] = {"stem": "relu", "stages": ("layer1", "layer2", "layer3", "layer4"),
                            "pooled": "fc:input"}
    if blocks is not None:  # the last call of a block's ReLU is on the residual sum
        taps["preact_stages"] = tuple(f"layer{i + 1}.{n - 1}.relu:input" for i, n in enumerate(blocks))
    return taps


def _vgg(name: str) -> dict[str, Any]:
    """Stem: block 1's last ReLU; stages: blocks 2..5's (as the CIFAR VGGs); preact: the module
    before each of those ReLUs (the conv, or the BatchNorm of ``_bn`` models)."""
    config = models.vgg.cfgs[_VGG_CONFIGS[name.removesuffix("_bn")]]
    per_conv = 3 if name.endswith("_bn") else 2
    index, block_ends = 0, []
    for item in config:
        if item == "M":
            block_ends.append(index - 1)  # the ReLU before the max-pool
            index += 1
        else:
            index += per_conv
    relus = [f"features.{i}" for i in block_ends]
    return {"stem": relus[0], "stages": tuple(relus[1:]),
            "preact_stages": tuple(f"features.{i - 1}" for i in block_ends[1:]),
            "pooled": "classifier.5:input"}


def _linear_bottlenecks(stem: str, stages: tuple[str, ...], pooled: str) -> dict[str, Any]:
    """Families whose blocks end without an activation: the pre-ReLU stages are the stages."""
    return {"stem": stem, "stages": stages, "preact_stages": stages, "pooled": pooled}


def _features(*indices: int) -> tuple[str, ...]:
    return tuple(f"features.{i}" for i in indices)


def _squeezenet(name: str) -> dict[str, Any]:
    ends = (5, 10, 12) if name == "squeezenet1_0" else (4, 7, 12)
    return {"stem": "features.1", "stages": _features(*ends)}


_FAMILIES: list[tuple[str, str, Callable[[str], dict[str, Any]]]] = [
    # (name pattern, head module path, taps of a model name)
    (r"resnet\d+|resnext\d+_\w+|wide_resnet\d+_2", "fc", _resnet),
    (r"regnet_[xy]_\w+", "fc", lambda _: {
        "stem": "stem", "stages": tuple(f"trunk_output.block{i}" for i in range(1, 5)), "pooled": "fc:input"}),
    (r"mobilenet_v2", "classifier.1", lambda _: _linear_bottlenecks(
        "features.0", _features(3, 6, 13, 17), "classifier:input")),
    (r"mobilenet_v3_large", "classifier.3", lambda _: _linear_bottlenecks(
        "features.0", _features(3, 6, 12, 15), "classifier.2:input")),
    (r"mobilenet_v3_small", "classifier.3", lambda _: _linear_bottlenecks(
        "features.0", _features(1, 3, 8, 11), "classifier.2:input")),
    (r"efficientnet_b\d", "classifier.1", lambda _: _linear_bottlenecks(
        "features.0", _features(2, 3, 5, 7), "classifier:input")),
    (r"efficientnet_v2_s", "classifier.1", lambda _: _linear_bottlenecks(
        "features.0", _features(2, 3, 5, 6), "classifier:input")),
    (r"efficientnet_v2_[ml]", "classifier.1", lambda _: _linear_bottlenecks(
        "features.0", _features(2, 3, 5, 7), "classifier:input")),
    (r"mnasnet\d_\d+", "classifier.1", lambda _: _linear_bottlenecks(
        "layers.7", tuple(f"layers.{i}" for i in (8, 9, 11, 13)), "classifier:input")),
    (r"convnext_\w+", "classifier.2", lambda _: _linear_bottlenecks(
        "features.0", _features(1, 3, 5, 7), "classifier.2:input")),
    (r"densenet\d+", "classifier", lambda _: {
        "stem": "features.relu0",
        "stages": ("features.denseblock1", "features.denseblock2", "features.denseblock3", "features.norm5"),
        "pooled": "classifier:input"}),
    (r"vgg\d+(_bn)?", "classifier.6", _vgg),
    (r"shufflenet_v2_x\d_\d", "fc", lambda _: {
        "stem": "conv1", "stages": ("stage2", "stage3", "stage4"), "pooled": "fc:input"}),
    (r"squeezenet1_[01]", "classifier.1", _squeezenet),
    (r"googlenet", "fc", lambda _: {
        "stem": "conv1", "stages": ("conv3", "inception3b", "inception4e", "inception5b"),
        "pooled": "dropout:input"}),
    (r"inception_v3", "fc", lambda _: {
        "stem": "Conv2d_2b_3x3", "stages": ("Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"),
        "pooled": "dropout:input"}),
    (r"maxvit_\w+", "classifier.5", lambda _: {
        "stem": "stem", "stages": tuple(f"blocks.{i}" for i in range(4)), "pooled": "classifier.5:input"}),
    (r"alexnet", "classifier.6", lambda _: {"pooled": "classifier.6:input"}),
    (r"swin_(v2_)?[tsb]", "head", lambda _: {"pooled": "head:input"}),
    (r"vit_[bhl]_\d+", "heads.head", lambda _: {"stem": "conv_proj", "pooled": "heads:input"}),
]

_AUXILIARY = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}
"""Auxiliary heads that kdcore never builds (the trainer reads one output); their tensors in a
weights file are dropped."""


def _family(name: str) -> tuple[str, Callable[[str], dict[str, Any]]] | None:
    for pattern, head, taps in _FAMILIES:
        if re.fullmatch(pattern, name):
            return head, taps
    return None


def classifier_names() -> list[str]:
    """torchvision's image classifiers (not its detection, segmentation, video, optical-flow or
    quantized models)."""
    return models.list_models(module=models)


def check_model(name: str) -> None:
    known = classifier_names()
    if name in known:
        return
    if name in models.list_models():
        raise KdcoreError(
            f"torchvision model {name!r} is not an image classifier; architecture 'torchvision' "
            "builds the classifiers of torchvision.models.list_models(module=torchvision.models)"
        )
    raise hub.unknown_name("torchvision model", name, known,
                           f" (torchvision {torchvision.__version__} image classifiers)")


def resolve_weights(name: str, value: str | None) -> Any:
    """``None``, a weights enum member of model ``name``, or a local path."""
    if value is None:
        return None
    if hub.looks_like_file(value):
        return value
    enum = models.get_model_weights(name)
    members = [m for m in enum.__members__ if m != "DEFAULT"]
    if value == "DEFAULT":
        return enum.DEFAULT
    member = value.removeprefix(f"{enum.__name__}.")
    if member in members:
        return enum[member]
    if "." in value:
        try:
            other = models.get_weight(value)
        except (ValueError, AttributeError, KeyError):
            other = None
        if other is not None:
            raise KdcoreError(f"weights {value!r} are {type(other).__name__}, not {name}'s {enum.__name__}")
    choices = [f"{enum.__name__}.{m}" for m in members]
    raise hub.unknown_name(f"{name} weights", value, [*choices, *members, "DEFAULT"],
                           f" ({name} has {', '.join(choices)} and DEFAULT, or give a .safetensors / .pth file)")


def _construct(name: str, weights: Any, classes: int | None, extra: dict[str, Any]) -> nn.Module:
    kwargs: dict[str, Any] = {}
    if weights is None and name in _AUXILIARY:
        kwargs.update(aux_logits=False, init_weights=True)
    kwargs.update(extra)
    if classes is not None:
        kwargs["num_classes"] = classes
    try:
        return models.get_model(name, weights=weights, **kwargs)
    except (TypeError, ValueError) as error:  # an unknown or conflicting keyword argument
        raise KdcoreError(f"torchvision {name}: {error}") from None


def _download(weights: Any) -> None:
    """Fetch torchvision's weights into the torch hub cache, reading them once with
    ``weights_only=True``: a file that would execute code is refused before torchvision loads
    it (from the same, hash-checked cache file)."""
    try:
        torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True, weights_only=True)
    except Exception as error:  # no network, a bad hash, a refused pickle
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise KdcoreError(f"cannot load torchvision weights {weights} from {weights.url}: {first_line}") from None


def head_path(name: str, model: nn.Module | None = None) -> str | None:
    """The classification head: the family's known module, else the last ``nn.Linear``."""
    family = _family(name)
    if family is not None:
        return family[0]
    return hub.last_linear(model) if model is not None else None


def build(params: Any, ctx: ArchitectureContext) -> nn.Module:
    name = params.model
    check_model(name)
    if ctx.input_shape[0] != 3:
        raise KdcoreError(
            f"torchvision {name} expects 3-channel images, the dataset gives input shape {tuple(ctx.input_shape)}"
        )
    classes = ctx.num_classes if params.num_classes is None else params.num_classes
    if classes != ctx.num_classes:
        raise KdcoreError(
            f"torchvision {name}: num_classes {classes} differs from the dataset's {ctx.num_classes} classes"
        )
    weights = resolve_weights(name, params.weights)
    if weights is None:
        model = _construct(name, None, classes, params.kwargs)
    elif isinstance(weights, str):
        state = hub.read_state_dict(weights)
        model = _construct(name, None, classes, params.kwargs)
        head = head_path(name, model)
        hub.fit_state_dict(model, state, [head] if head else [], weights, ignore=_AUXILIARY.get(name, ()))
    else:
        _download(weights)
        model = _construct(name, weights, None, params.kwargs)
        head = head_path(name, model)
        if head is None:
            raise KdcoreError(f"torchvision {name}: no nn.Linear head found to fit {classes} classes")
        if hub.head_classes(model, head) != classes:
            hub.replace_head(model, head, classes)
    hub.disable_inplace(model)
    if _family(name) is None:
        hub.remember_taps(ARCHITECTURE, params, _generic_taps(model))
    return model


def _generic_taps(model: nn.Module) -> dict[str, Any]:
    head = hub.last_linear(model)
    return {} if head is None else {"pooled": f"{head}:input"}


def taps(params: Any) -> dict[str, Any]:
    """The taps of ``params.model`` (see the table of this module)."""
    name = params.model
    family = _family(name)
    if family is not None:
        return family[1](name)
    remembered = hub.remembered_taps(ARCHITECTURE, params)
    if remembered is None:
        check_model(name)
        model = _construct(name, None, None, params.kwargs)
        remembered = hub.remember_taps(ARCHITECTURE, params, _generic_taps(model))
    return remembered


def normalization(params: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` of the weights' ``transforms()``; without enum weights, those of the
    model's ``DEFAULT`` weights (what torchvision trained it with); ``None`` if it has none."""
    name = params.model
    check_model(name)
    weights = resolve_weights(name, params.weights)
    if weights is None or isinstance(weights, str):
        try:
            weights = models.get_model_weights(name).DEFAULT
        except (ValueError, AttributeError, KeyError):
            return None
    transform = weights.transforms()
    mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
    if mean is None or std is None:
        return None
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
