"""Vision plugin: the CIFAR model zoo of the KD literature (RepDistiller's), torchvision's ImageNet
networks, any torchvision or timm classifier by name (architectures ``torchvision`` and ``timm``),
and the CIFAR / ImageNet datasets with the paper's binary and semi-supervised variants.

Registration only: the networks and loaders live in submodules imported when a component is
built, so listing plugins does not import torch.

Taps follow RepDistiller's ``is_feat`` features (``shared/reference/methods.md`` §3): ``stem``
is feat[0], ``stages`` feat[1:-1], ``preact_stages`` the same with ``preact=True``, ``pooled``
feat[-1].
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from kdcore.api import ArchitectureSpec, DatasetSpec, hookimpl

from .params import (
    BinaryCifarParams,
    CifarParams,
    ImageNetParams,
    MobileNetV2Params,
    MobileNetV2x01Params,
    SemiSupervisedCifarParams,
    TimmParams,
    TorchvisionParams,
)


@dataclass(frozen=True)
class _Deferred:
    """``build(params, ctx)`` that imports ``target`` ("module:function") on first use and calls
    it with fixed keyword arguments: one family builder serves several registered variants."""

    target: str
    config: dict[str, Any] = field(default_factory=dict)

    def __call__(self, params: Any, ctx: Any) -> Any:
        module_name, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attribute)(params, ctx, **self.config)

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.config.items())
        return f"{self.target}({arguments})"


@dataclass(frozen=True)
class _DeferredTaps:
    """``taps(params)`` that imports ``target`` ("module:function") on first use."""

    target: str

    def __call__(self, params: Any) -> Any:
        module_name, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attribute)(params)


def _residual_taps(stages: int, blocks: list[int], pooled: str) -> dict[str, Any]:
    """Taps of a network with stem ``relu``, stages ``layer1..`` and a ``preact`` module in each
    block; ``blocks`` counts the modules of each stage, whose last one gives the pre-ReLU tap."""
    return {
        "stem": "relu",
        "stages": tuple(f"layer{i + 1}" for i in range(stages)),
        "preact_stages": tuple(f"layer{i + 1}.{blocks[i] - 1}.preact" for i in range(stages)),
        "pooled": pooled,
    }


def _cifar_resnets():
    variants = {f"resnet{d}": (d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)}
    variants.update({"resnet8x4": (8, (32, 64, 128, 256)), "resnet32x4": (32, (32, 64, 128, 256))})
    for name, (depth, widths) in variants.items():
        n = (depth - 2) // 6
        yield ArchitectureSpec(
            name=name,
            summary=f"CIFAR ResNet-{depth} (6n+2, basic blocks), widths {'/'.join(map(str, widths))}",
            build=_Deferred("kdcore_vision.models.resnet:build_cifar_resnet",
                            {"depth": depth, "widths": widths}),
            taps=_residual_taps(3, [n] * 3, "fc:input"),
        )
    for depth, block, num_blocks in ((18, "basic", (2, 2, 2, 2)),
                                     (50, "bottleneck", (3, 4, 6, 3))):
        yield ArchitectureSpec(
            name=f"resnet{depth}",
            summary=f"ResNet-{depth} for 32×32 inputs (3×3 stem, no max-pool; RepDistiller resnetv2)",
            build=_Deferred("kdcore_vision.models.resnetv2:build_resnetv2",
                            {"block": block, "num_blocks": num_blocks}),
            taps=_residual_taps(4, list(num_blocks), "linear:input"),
        )


def _wide_resnets():
    for depth, k in ((16, 1), (16, 2), (40, 1), (40, 2)):
        yield ArchitectureSpec(
            name=f"wrn-{depth}-{k}",
            summary=f"Wide ResNet-{depth}-{k} for CIFAR (pre-activation blocks)",
            build=_Deferred("kdcore_vision.models.wrn:build_wrn",
                            {"depth": depth, "widen_factor": k}),
            # WRN blocks end in a raw residual sum: RepDistiller's "post-ReLU" stage features
            # are those sums, and its pre-ReLU ones the next BatchNorm applied to them.
            taps={
                "stem": "conv1",
                "stages": ("block1", "block2", "block3"),
                "preact_stages": ("block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"),
                "pooled": "fc:input",
            },
        )


def _vggs():
    for depth in (8, 11, 13, 16, 19):
        yield ArchitectureSpec(
            name=f"vgg{depth}",
            summary=f"VGG-{depth} with BatchNorm for CIFAR (RepDistiller vgg{depth}_bn)",
            build=_Deferred("kdcore_vision.models.vgg:build_vgg", {"config": f"vgg{depth}"}),
            taps={
                "stem": "relu0",
                "stages": ("relu1", "relu2", "relu3", "relu4"),
                "preact_stages": ("block1", "block2", "block3", "block4"),
                "pooled": "classifier:input",
            },
        )


_MOBILENETV2_STAGES = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")


def _mobile_and_shuffle():
    mobile_taps = {
        "stem": "conv1",
        "stages": _MOBILENETV2_STAGES,
        "preact_stages": _MOBILENETV2_STAGES,  # linear bottlenecks: no ReLU to undo
        "pooled": "classifier:input",
    }
    yield ArchitectureSpec(
        name="mobilenetv2",
        summary="MobileNetV2 for CIFAR, width 0.5 by default (RepDistiller mobile_half)",
        params=MobileNetV2Params,
        build="kdcore_vision.models.mobilenetv2:build_mobilenetv2",
        taps=mobile_taps,
    )
    yield ArchitectureSpec(
        name="mobilenetv2-x0.1",
        summary="MobileNetV2 for CIFAR at width 0.1 (RepDistiller mobilenetv2_T_w(6, 0.1))",
        params=MobileNetV2x01Params,
        build="kdcore_vision.models.mobilenetv2:build_mobilenetv2",
        taps=mobile_taps,
    )
    yield ArchitectureSpec(
        name="shufflenetv1",
        summary="ShuffleNet V1 (groups 3) for CIFAR (RepDistiller ShuffleV1)",
        build="kdcore_vision.models.shufflenet:build_shufflenetv1",
        taps=_residual_taps(3, [4, 8, 4], "linear:input"),
    )
    yield ArchitectureSpec(
        name="shufflenetv2",
        summary="ShuffleNet V2 ×1 for CIFAR (RepDistiller ShuffleV2)",
        build="kdcore_vision.models.shufflenet:build_shufflenetv2",
        # each stage is a down-sampling block followed by 3, 7, 3 basic blocks
        taps=_residual_taps(3, [1 + 3, 1 + 7, 1 + 3], "linear:input"),
    )


def _torchvision():
    for name, blocks in (("resnet18", [2, 2, 2, 2]), ("resnet34", [3, 4, 6, 3]),
                         ("resnet50", [3, 4, 6, 3])):
        last = [f"layer{i + 1}.{b - 1}" for i, b in enumerate(blocks)]
        yield ArchitectureSpec(
            name=f"tv-{name}",
            summary=f"torchvision {name} for ImageNet-size inputs (random init)",
            build=_Deferred("kdcore_vision.models.torchvision_models:build_torchvision",
                            {"name": name}),
            taps={
                "stem": "relu",  # before the max-pool; blocks have their own ReLU modules
                "stages": ("layer1", "layer2", "layer3", "layer4"),
                # the last call of a block's ReLU is on the residual sum
                "preact_stages": tuple(f"{block}.relu:input" for block in last),
                "pooled": "fc:input",
            },
        )
    mobile_stages = ("features.3", "features.6", "features.13", "features.17")
    yield ArchitectureSpec(
        name="tv-mobilenet_v2",
        summary="torchvision mobilenet_v2 for ImageNet-size inputs (random init)",
        build=_Deferred("kdcore_vision.models.torchvision_models:build_torchvision",
                        {"name": "mobilenet_v2"}),
        # stages: the last block at 24, 32, 96 and 320 channels, as for the CIFAR MobileNetV2
        taps={
            "stem": "features.0",
            "stages": mobile_stages,
            "preact_stages": mobile_stages,
            "pooled": "classifier:input",
        },
    )


def _model_hubs():
    yield ArchitectureSpec(
        name="torchvision",
        summary="Any torchvision image classifier by name (model:), with optional weights (enum name or local file)",
        params=TorchvisionParams,
        build="kdcore_vision.models.torchvision_any:build",
        taps=_DeferredTaps("kdcore_vision.models.torchvision_any:taps"),
        normalization="kdcore_vision.models.torchvision_any:normalization",
    )
    yield ArchitectureSpec(
        name="timm",
        summary="Any timm model by name (model:), with an optional local weights file; needs the timm extra",
        params=TimmParams,
        build="kdcore_vision.models.timm_models:build",
        taps=_DeferredTaps("kdcore_vision.models.timm_models:taps"),
        normalization="kdcore_vision.models.timm_models:normalization",
    )


@hookimpl
def kdcore_architectures():
    yield from _cifar_resnets()
    yield from _wide_resnets()
    yield from _vggs()
    yield from _mobile_and_shuffle()
    yield from _torchvision()
    yield from _model_hubs()


@hookimpl
def kdcore_datasets():
    yield DatasetSpec(
        name="cifar100",
        summary="CIFAR-100 from the official python pickles (crop 32 pad 4 + flip)",
        params=CifarParams,
        build="kdcore_vision.datasets.cifar:build_cifar100",
        normalizes=True,
    )
    yield DatasetSpec(
        name="cifar10",
        summary="CIFAR-10 from the official python pickles (crop 32 pad 4 + flip)",
        params=CifarParams,
        build="kdcore_vision.datasets.cifar:build_cifar10",
        normalizes=True,
    )
    yield DatasetSpec(
        name="binary-cifar",
        summary="Two groups of CIFAR classes relabelled 1 / 0 (paper Sec. 5.5)",
        params=BinaryCifarParams,
        build="kdcore_vision.datasets.cifar:build_binary_cifar",
        normalizes=True,
    )
    yield DatasetSpec(
        name="semisup-cifar10",
        summary="CIFAR-10 with a class-balanced labelled subset (paper Sec. 5.4)",
        params=SemiSupervisedCifarParams,
        build="kdcore_vision.datasets.cifar:build_semisup_cifar10",
        normalizes=True,
    )
    yield DatasetSpec(
        name="imagenet",
        summary="ImageNet from train/<wnid>/ and val/<wnid>/ JPEG folders (read from disk)",
        params=ImageNetParams,
        build="kdcore_vision.datasets.imagenet:build_imagenet",
        normalizes=True,
    )
