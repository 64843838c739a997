"""What the ``torchvision`` and ``timm`` architectures share: reading a local weights file without
executing code, fitting its tensors to a network whose classification head may differ, finding
and replacing that head, and probing which taps are feature maps.

Nothing here executes code from a weights file: ``.safetensors`` files are read with safetensors,
torch pickles (``.pth``, ``.pt``, ``.bin``, ``.ckpt``, ``.pth.tar``) with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdcore.errors import KdcoreError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar")
WEIGHTS_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
"""Where training checkpoints keep the network's state dict (timm, Lightning, torchvision's
reference scripts), tried in this order when the file is not a plain state dict."""

_SAFE_GLOBALS = [argparse.Namespace]
"""Besides tensors and containers, what a weights-only load accepts: the training arguments that
timm's (and torchvision's reference scripts') checkpoints keep beside the state dict."""

_PREFIXES = ("module.", "_orig_mod.")
"""Prefixes of every key written by DistributedDataParallel and torch.compile wrappers."""


def unknown_name(what: str, name: str, known: Iterable[str], hint: str = "") -> KdcoreError:
    """An error for a name that is not one of ``known``, with the closest names."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    suggestion = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return KdcoreError(f"unknown {what} {name!r}{suggestion}{hint}")


def looks_like_file(value: str) -> bool:
    """Whether a ``weights`` value names a file rather than a weights enum member."""
    return value.lower().endswith(WEIGHTS_SUFFIXES) or "/" in value or "\\" in value or value.startswith("~")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file: a ``.safetensors`` file, or a torch pickle read with
    ``weights_only=True``, holding a state dict or a checkpoint dict with one under
    ``state_dict`` / ``model_state_dict`` / ``model``. ``module.`` and ``_orig_mod.`` prefixes
    are removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise KdcoreError(f"weights file {str(path)!r} does not exist")
    name = path.name.lower()
    if name.endswith(SAFETENSORS_SUFFIXES):
        import safetensors
        import safetensors.torch

        try:
            loaded: Any = safetensors.torch.load_file(str(path), device="cpu")
        except (OSError, safetensors.SafetensorError) as error:
            raise KdcoreError(f"{path}: cannot read safetensors weights ({error})") from None
    elif name.endswith(PICKLE_SUFFIXES):
        try:
            with torch.serialization.safe_globals(_SAFE_GLOBALS):
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            first_line = str(error).strip().splitlines()[0]
            raise KdcoreError(
                f"{path}: holds objects other than tensors, which kdcore does not load "
                f"(torch.load(weights_only=True): {first_line}); save the state dict alone, "
                "or as .safetensors"
            ) from None
        except (OSError, RuntimeError, EOFError) as error:
            raise KdcoreError(f"{path}: cannot read torch weights ({error})") from None
    else:
        raise KdcoreError(
            f"{path}: unknown weights format {path.suffix or '(no suffix)'!r}; expected one of "
            f"{', '.join(WEIGHTS_SUFFIXES)}"
        )
    state = _state_dict_of(loaded, path)
    for prefix in _PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key.removeprefix(prefix): value for key, value in state.items()}
    return state


def _state_dict_of(loaded: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(loaded, Mapping) and loaded and all(isinstance(v, Tensor) for v in loaded.values()):
        return dict(loaded)
    if isinstance(loaded, Mapping):
        for key in _NESTED_KEYS:
            nested = loaded.get(key)
            if isinstance(nested, Mapping) and nested and all(isinstance(v, Tensor) for v in nested.values()):
                return dict(nested)
    raise KdcoreError(
        f"{path}: holds no state dict (a mapping of names to tensors, at the top or under "
        f"{' / '.join(_NESTED_KEYS)})"
    )


def fit_state_dict(model: nn.Module, state: Mapping[str, Tensor], heads: Iterable[str], source: str,
                   ignore: Iterable[str] = ()) -> bool:
    """Load ``state`` into ``model``. The tensors of the head modules ``heads`` are skipped when
    their shapes differ from the model's (weights for other classes: the model keeps its newly
    initialised head). Keys starting with a prefix in ``ignore`` are dropped (auxiliary heads the
    model does not build). Anything else missing, unexpected or misshapen is an error. Returns
    whether the head was kept from the file."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore))}
    head_keys = {k for k in own for head in heads if k.startswith(f"{head}.")}
    head_fits = all(k in state and tuple(state[k].shape) == tuple(own[k].shape) for k in head_keys)
    if not head_fits:
        state = {k: v for k, v in state.items() if k not in head_keys}
    misshapen = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})"
                 for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing: list[str] = []
    unexpected: list[str] = []
    if not misshapen:  # BatchNorm fills in the num_batches_tracked that old checkpoints lack
        result = model.load_state_dict(state, strict=False)
        missing = sorted(set(result.missing_keys) - (set() if head_fits else head_keys))
        unexpected = sorted(result.unexpected_keys)
    problems = []
    for label, names in (("misshapen", misshapen), ("missing", missing), ("unexpected", unexpected)):
        if names:
            shown = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise KdcoreError(f"{source}: weights do not fit {type(model).__name__}; " + "; ".join(problems))
    return head_fits


def module_path(model: nn.Module, module: nn.Module) -> str | None:
    """The path of ``module`` inside ``model`` (``None`` when it is not a submodule)."""
    return next((path for path, m in model.named_modules() if m is module), None)


def last_linear(model: nn.Module) -> str | None:
    """The path of the last ``nn.Linear`` in module order: the head of most classifiers."""
    paths = [path for path, m in model.named_modules() if isinstance(m, nn.Linear)]
    return paths[-1] if paths else None


def head_classes(model: nn.Module, head: str) -> int:
    module = model.get_submodule(head)
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def replace_head(model: nn.Module, head: str, classes: int) -> None:
    """Put a newly initialised head with ``classes`` outputs in place of the ``nn.Linear`` (or
    1×1 ``nn.Conv2d``, SqueezeNet's) at path ``head``."""
    old = model.get_submodule(head)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, classes, bias=old.bias is not None)
    elif isinstance(old, nn.Conv2d):
        new = nn.Conv2d(old.in_channels, classes, old.kernel_size, old.stride, old.padding,
                        bias=old.bias is not None)
    else:
        raise KdcoreError(f"cannot replace the head {head!r} of {type(model).__name__}: a {type(old).__name__}")
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent, _, name = head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def disable_inplace(model: nn.Module) -> None:
    """Switch in-place activations (and other in-place modules) to out-of-place: an in-place op
    after a tapped module would overwrite the recorded tensor. The outputs are unchanged."""
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False


def probe_shapes(model: nn.Module, paths: Iterable[str], input_size: tuple[int, ...]) -> dict[str, tuple[int, ...]] | None:
    """Per module path, the shape of one sample's output, computed on the meta device (no
    arithmetic, the weights untouched); ``None`` when the model cannot run there."""
    recorded: dict[str, tuple[int, ...]] = {}
    handles = [
        model.get_submodule(path).register_forward_hook(
            lambda _m, _i, output, path=path: recorded.__setitem__(
                path, tuple(output.shape[1:]) if isinstance(output, Tensor) else ()))
        for path in paths
    ]
    meta = {name: torch.empty_like(t, device="meta")
            for name, t in [*model.named_parameters(), *model.named_buffers()]}
    training = model.training
    try:
        model.eval()
        torch.func.functional_call(model, meta, (torch.empty(2, *input_size, device="meta"),), strict=False)
    except Exception:  # models that compute on plain tensor attributes or read values
        return None
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return recorded


_TAPS: dict[tuple[str, str], dict[str, Any]] = {}
"""Taps worked out from a built network, per (architecture, model and builder arguments):
``build`` fills it, so that the ``taps`` callable the kernel calls next does not build the
network again."""


def _taps_key(architecture: str, params: Any) -> tuple[str, str]:
    return architecture, json.dumps([params.model, params.kwargs], sort_keys=True, default=str)


def remember_taps(architecture: str, params: Any, taps: dict[str, Any]) -> dict[str, Any]:
    _TAPS[_taps_key(architecture, params)] = taps
    return taps


def remembered_taps(architecture: str, params: Any) -> dict[str, Any] | None:
    return _TAPS.get(_taps_key(architecture, params))

