"""Files written so that a crash never leaves a half-written one: write a temporary file beside
the target, then rename it over the target (atomic on POSIX)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from kdcore.errors import KdcoreError


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    write_atomically(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def save_weights(model: nn.Module, path: Path) -> None:
    write_atomically(path, lambda p: safetensors.torch.save_model(model, str(p)))


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights, insisting that every tensor fits the model."""
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(path), strict=False)
    except (OSError, safetensors.SafetensorError) as error:
        raise KdcoreError(f"{path}: cannot read weights ({error})") from None
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1].strip()
        raise KdcoreError(f"{path}: weights do not fit {type(model).__name__}: {first_line}") from None
    if missing or unexpected:
        raise KdcoreError(
            f"{path}: weights do not fit {type(model).__name__} "
            f"(missing: {', '.join(missing[:3]) or 'none'}; unexpected: {', '.join(unexpected[:3]) or 'none'}); "
            "check the architecture in the recipe"
        )


def save_state(state: dict[str, Any], path: Path) -> None:
    """Resume state (weights, optimiser, RNG): tensors and plain Python values only."""
    write_atomically(path, lambda p: torch.save(state, p))


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
