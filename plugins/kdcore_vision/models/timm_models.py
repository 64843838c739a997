"""Architecture ``timm``: any timm model by name (``timm.list_models()``, a pretrained tag such as
``resnet18.a1_in1k`` allowed), randomly initialised or with a local weights file. Needs the
optional dependency timm (``pip install 'kdcore[timm]'``).

Params: ``model``, ``kwargs`` (more arguments of ``timm.create_model``: ``img_size`` for a ViT
on small images, ``drop_path_rate``...), ``pretrained_file`` (a timm-format state dict: ``.safetensors``, or a torch
pickle read with ``weights_only=True``; kdcore never downloads timm weights, fetch them yourself,
e.g. a hub repository's ``model.safetensors``), ``num_classes`` (default the dataset's). The
model is created for the dataset's classes and input channels; a file's classifier is used only
when its classes match, else the newly initialised one stays.

Taps, from the model's ``feature_info`` (timm's list of ``{module, num_chs, reduction}`` per
feature level), checked with a meta-device forward pass (no arithmetic):

- ``stem``: the last level at reduction <= 2, when it is a (C, H, W) map;
- ``stages``: the levels at reduction >= 4, when every one is a (C, H, W) map (channels-first,
  ``num_chs`` channels). Channels-last models (Swin, MambaOut: ``output_fmt`` NHWC) and
  token models (ViT, DeiT, LeViT) have none; add taps by module path under ``arch.taps``;
- ``pooled``: the input of the classifier, ``model.get_classifier()`` (the first one of a
  distilled model's two heads; none when that module is not called, as CrossViT's heads).

In-place activations are switched to out-of-place (the outputs are unchanged).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from kdcore.api import ArchitectureContext
from kdcore.errors import KdcoreError
from kdcore_vision.models import hub

ARCHITECTURE = "timm"


def import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise KdcoreError("architecture 'timm' needs timm: pip install 'kdcore[timm]'") from None
    return timm


def check_model(timm: Any, name: str) -> None:
    if not timm.is_model(name):
        raise hub.unknown_name("timm model", name, timm.list_models(),
                               f" (timm {timm.__version__}: timm.list_models())")


def _create(timm: Any, name: str, **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, ValueError, TypeError, AssertionError) as error:
        raise KdcoreError(f"timm cannot create {name!r}: {error}") from None


def heads(model: nn.Module) -> list[str]:
    """The classifier modules: the pretrained config's ``classifier`` names where they are
    modules of the model, else the paths of ``get_classifier()``."""
    names = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    names = [names] if isinstance(names, str) else list(names or ())
    found = [n for n in names if _has_module(model, n)]
    if found:
        return found
    return [p for p in (hub.module_path(model, m) for m in _classifiers(model)) if p]


def _classifiers(model: nn.Module) -> list[nn.Module]:
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    items = list(classifier) if isinstance(classifier, tuple) else [classifier]
    return [m for m in items if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]


def _has_module(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def build(params: Any, ctx: ArchitectureContext) -> nn.Module:
    timm = import_timm()
    name = params.model
    check_model(timm, name)
    classes = ctx.num_classes if params.num_classes is None else params.num_classes
    if classes != ctx.num_classes:
        raise KdcoreError(f"timm {name}: num_classes {classes} differs from the dataset's {ctx.num_classes} classes")
    channels = ctx.input_shape[0]
    model = _create(timm, name, **params.kwargs, num_classes=classes, in_chans=channels)
    if params.pretrained_file is not None:
        hub.fit_state_dict(model, hub.read_state_dict(params.pretrained_file), heads(model), params.pretrained_file)
    hub.disable_inplace(model)
    hub.remember_taps(ARCHITECTURE, params, taps_of(model, tuple(ctx.input_shape)))
    return model


def taps_of(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The taps of a built timm model (see the module's docstring), probed with inputs of
    ``input_shape`` (default: the pretrained config's input size)."""
    levels = [dict(level) for level in (getattr(model, "feature_info", None) or [])
              if isinstance(level, dict) and "reduction" in level and _has_module(model, level.get("module", ""))]
    classifiers = [p for p in (hub.module_path(model, m) for m in _classifiers(model)) if p]
    if input_shape is None:
        input_shape = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    probed = dict.fromkeys([level["module"] for level in levels] + classifiers[:1])
    shapes = hub.probe_shapes(model, probed, input_shape)

    def is_map(level: dict[str, Any]) -> bool:
        if shapes is None:  # the model cannot run on the meta device: trust its declared format
            return getattr(model, "output_fmt", "NCHW") == "NCHW"
        shape = shapes.get(level["module"], ())
        return len(shape) == 3 and shape[0] == level.get("num_chs")

    taps: dict[str, Any] = {}
    stems = [level for level in levels if level["reduction"] <= 2]
    stages = [level for level in levels if level["reduction"] >= 4]
    if stems and is_map(stems[-1]):
        taps["stem"] = stems[-1]["module"]
    if len({level["reduction"] for level in stages}) > 1 and all(is_map(level) for level in stages):
        taps["stages"] = tuple(level["module"] for level in stages)
    if classifiers and (shapes is None or classifiers[0] in shapes):  # a head in a ModuleList is never called
        taps["pooled"] = f"{classifiers[0]}:input"
    return taps


def taps(params: Any) -> dict[str, Any]:
    remembered = hub.remembered_taps(ARCHITECTURE, params)
    if remembered is not None:
        return remembered
    timm = import_timm()
    check_model(timm, params.model)
    model = _create(timm, params.model, **params.kwargs)
    return hub.remember_taps(ARCHITECTURE, params, taps_of(model))


def normalization(params: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` of the model's pretrained config (its tag's, or the default tag's)."""
    timm = import_timm()
    check_model(timm, params.model)
    config = timm.get_pretrained_cfg(params.model)
    mean, std = getattr(config, "mean", None), getattr(config, "std", None)
    if mean is None or std is None:
        return None
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
