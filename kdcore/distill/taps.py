"""Feature taps: named intermediate features recorded with forward hooks, so that unmodified
models (torchvision's, a third party's) expose what distillers need."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from torch import Tensor, nn

from kdcore.api import TapPath
from kdcore.errors import KdcoreError
from kdcore.nn import Features

INPUT_SUFFIX = ":input"


class FeatureRecorder:
    """Calls a model and returns its logits plus the requested taps.

    A path ending in ``:input`` records the module's first input instead of its output (e.g.
    ``fc:input`` is the pooled feature of a torchvision ResNet). When a module runs several
    times in one forward pass, its last call is recorded. ``forward`` is what is called, when
    it wraps ``model`` (DistributedDataParallel).
    """

    def __init__(self, model: nn.Module, paths: Mapping[str, TapPath], wanted: Iterable[str],
                 forward: Callable[[Tensor], Tensor] | None = None):
        self.model = model
        self.forward = model if forward is None else forward
        self._recorded: dict[str, Tensor] = {}
        self._layout: dict[str, str | list[str]] = {}
        self._handles = []
        for tap in dict.fromkeys(wanted):
            if tap == "logits":
                continue
            if tap not in paths:
                available = ", ".join(sorted(["logits", *paths])) or "logits"
                raise KdcoreError(
                    f"{type(model).__name__} has no feature tap '{tap}' (available: {available}); "
                    "add it by module path under the stage's arch.taps"
                )
            path = paths[tap]
            module_paths = [path] if isinstance(path, str) else list(path)
            keys = [f"{tap}[{i}]" for i in range(len(module_paths))]
            self._layout[tap] = keys[0] if isinstance(path, str) else keys
            for key, module_path in zip(keys, module_paths):
                self._handles.append(self._hook(key, module_path))

    def _hook(self, key: str, module_path: str):
        name, records_input = module_path.removesuffix(INPUT_SUFFIX), module_path.endswith(INPUT_SUFFIX)
        try:
            module = self.model.get_submodule(name)
        except AttributeError:
            raise KdcoreError(
                f"{type(self.model).__name__} has no module '{name}' for tap {key}"
            ) from None

        def record(_module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self._recorded[key] = inputs[0] if records_input else output

        return module.register_forward_hook(record)

    def __call__(self, inputs: Tensor) -> Features:
        self._recorded.clear()
        features: Features = {"logits": self.forward(inputs)}
        for tap, keys in self._layout.items():
            features[tap] = (
                self._recorded[keys] if isinstance(keys, str) else [self._recorded[k] for k in keys]
            )
        return features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def feature_shapes(features: Features) -> dict[str, object]:
    """Per tap, the shape of one sample's feature (a list of shapes for multi-module taps)."""
    return {
        tap: [tuple(t.shape[1:]) for t in value] if isinstance(value, list) else tuple(value.shape[1:])
        for tap, value in features.items()
    }
