"""Parameters of the vision components. Torch-free: imported when plugins are listed."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from kdcore.api import Params

CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


class MobileNetV2Params(Params):
    width: float = Field(default=0.5, gt=0, description="width multiplier (0.5 = mobile_half)")
    expansion: int = Field(default=6, ge=1, description="expansion ratio T of the blocks")


class MobileNetV2x01Params(MobileNetV2Params):
    width: float = Field(default=0.1, gt=0, description="width multiplier")


class CifarParams(Params):
    root: str | None = Field(
        default=None, description="data folder; default $KDCORE_DATA, else ./data"
    )
    val_size: int = Field(
        default=0, ge=0, description="training images held out as a class-balanced validation split"
    )
    split_seed: int = Field(default=0, description="seed of the validation split")


class BinaryCifarParams(CifarParams):
    """Default: the paper's Dataset 1, CIFAR-10 classes 0-4 (label 1) vs 5-9 (label 0)."""

    base: Literal["cifar10", "cifar100"] = "cifar10"
    positive: list[int] = Field(default=[0, 1, 2, 3, 4], min_length=1,
                                description="base classes relabelled 1")
    negative: list[int] = Field(default=[5, 6, 7, 8, 9], min_length=1,
                                description="base classes relabelled 0")

    @model_validator(mode="after")
    def _check_classes(self) -> BinaryCifarParams:
        classes = CIFAR_CLASSES[self.base]
        chosen = self.positive + self.negative
        out_of_range = sorted(c for c in chosen if not 0 <= c < classes)
        if out_of_range:
            raise ValueError(f"classes {out_of_range} are not in {self.base} (0..{classes - 1})")
        overlap = sorted(set(self.positive) & set(self.negative))
        if overlap:
            raise ValueError(f"classes {overlap} are both positive and negative")
        if len(set(chosen)) != len(chosen):
            raise ValueError("positive and negative must not repeat a class")
        return self


class SemiSupervisedCifarParams(CifarParams):
    """The paper's Sec. 5.4 uses 500, 1000, 2000 and 4000 labelled CIFAR-10 images."""

    labeled: int | float = Field(
        default=4000,
        description="labelled training images: a count, or a fraction of the training split in (0, 1)",
    )
    label_seed: int = Field(default=0, description="seed of the labelled subset")

    @model_validator(mode="after")
    def _check_labeled(self) -> SemiSupervisedCifarParams:
        if isinstance(self.labeled, float):
            if not 0 < self.labeled < 1:
                raise ValueError(f"a fraction of labelled images must be in (0, 1), got {self.labeled}")
        elif self.labeled < CIFAR_CLASSES["cifar10"]:
            raise ValueError(f"labeled must be at least one image per class (10), got {self.labeled}")
        return self


class ImageNetParams(Params):
    root: str | None = Field(
        default=None,
        description="folder holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG; "
        "default $KDCORE_DATA/imagenet, else ./data/imagenet",
    )
    crop_size: int = Field(default=224, ge=1, description="RandomResizedCrop / CenterCrop size")
    resize_size: int = Field(default=256, ge=1, description="evaluation Resize before CenterCrop")
    decode: Literal["auto", "pil", "batched"] = Field(
        default="auto",
        description="pil: PIL in DataLoader workers; batched: workers read bytes, "
        "torchvision.io.decode_jpeg decodes each batch on the training device (nvJPEG on a GPU); "
        "auto: batched on a GPU, else pil",
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> ImageNetParams:
        if self.resize_size < self.crop_size:
            raise ValueError(f"resize_size ({self.resize_size}) must be >= crop_size ({self.crop_size})")
        return self


class TorchvisionParams(Params):
    """Any torchvision image classifier (architecture ``torchvision``)."""

    model: str = Field(
        description="a torchvision image classifier: a name of "
        "torchvision.models.list_models(module=torchvision.models), e.g. resnet18, mobilenet_v3_small"
    )
    weights: str | None = Field(
        default=None,
        description="None: random init; a torchvision weights enum name ('ResNet18_Weights.IMAGENET1K_V1', "
        "'IMAGENET1K_V1' or 'DEFAULT', fetched by torchvision into its cache); or a local state-dict file "
        "(.safetensors, or .pth / .pt read with torch.load(weights_only=True))",
    )
    num_classes: int | None = Field(
        default=None, ge=1,
        description="classes of the head: the dataset's (the default; another number is an error); "
        "weights whose head has other classes get a newly initialised head",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="more keyword arguments of the torchvision builder (e.g. dropout, width_mult, "
        "image_size)",
    )

    @model_validator(mode="after")
    def _check_kwargs(self) -> TorchvisionParams:
        _refuse_keys(self.kwargs, ("weights", "num_classes"))
        return self


class TimmParams(Params):
    """Any timm model (architecture ``timm``; needs ``pip install 'kdcore[timm]'``)."""

    model: str = Field(description="a timm model name (timm.list_models()), a pretrained tag allowed: resnet18.a1_in1k")
    pretrained_file: str | None = Field(
        default=None,
        description="a local timm-format state dict (.safetensors, or .pth / .pt / .bin read with "
        "torch.load(weights_only=True)); None: random init. kdcore never downloads timm weights",
    )
    num_classes: int | None = Field(
        default=None, ge=1,
        description="classes of the head: the dataset's (the default; another number is an error); "
        "a file whose classifier has other classes gets a newly initialised one",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="more keyword arguments of timm.create_model (e.g. img_size for a ViT on 32×32 "
        "images, drop_path_rate, drop_rate)",
    )

    @model_validator(mode="after")
    def _check_kwargs(self) -> TimmParams:
        _refuse_keys(self.kwargs, ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                                   "checkpoint_path", "num_classes", "in_chans", "features_only"))
        return self


def _refuse_keys(kwargs: dict[str, Any], owned: tuple[str, ...]) -> None:
    taken = sorted(set(kwargs) & set(owned))
    if taken:
        raise ValueError(f"kwargs may not set {', '.join(taken)}: kdcore sets them (use the params)")
