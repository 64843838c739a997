"""What a weights file says about its network, so that it loads without the recipe
(:func:`kdcore.load`, ``kdcore export``): the architecture by name and params, the classes, the
input shape and normalisation, the stage and the run. Stored as JSON in the safetensors header
(:data:`kdcore.runs.layout.WEIGHTS_METADATA`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import kdcore
from kdcore.config.schema import ArchitectureRef
from kdcore.nn import DatasetBundle

FORMAT = 1
"""The version of the metadata's layout; a reader refuses a later one."""


def weights_metadata(ref: ArchitectureRef, data: DatasetBundle, stage: str, recipe: str, run: str) -> dict[str, Any]:
    """The metadata of the weights of the network ``ref`` builds for ``data``, trained in
    ``stage`` (``teacher`` or ``student``) of the run labelled ``run`` of recipe ``recipe``."""
    params = ref.params.model_dump(mode="json") if isinstance(ref.params, BaseModel) else dict(ref.params or {})
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "kdcore": kdcore.__version__,
        "architecture": {"name": ref.name, "params": params},
        "num_classes": data.num_classes,
        "input_shape": list(data.input_shape),
        "normalization": None if data.normalization is None else {
            "mean": [float(v) for v in data.normalization[0]],
            "std": [float(v) for v in data.normalization[1]],
        },
        "stage": stage,
        "recipe": recipe,
        "run": run,
    }
    if ref.taps:
        metadata["taps"] = {tap: path if isinstance(path, str) else list(path) for tap, path in ref.taps.items()}
    return metadata
