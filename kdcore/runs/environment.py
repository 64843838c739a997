"""``env.json``: what a run ran on (versions, device, git revision, command line, plugins)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import kdcore
from kdcore.registry import Registry
from kdcore.runs.layout import ENVIRONMENT, write_json


def write_environment(run_directory: Path, device_name: str, seed: int, registry: Registry,
                      name: str = ENVIRONMENT) -> None:
    """``name``: ``env.json``, or a shard's own ``env.shard-I.json`` in a run directory shards share."""
    import torch

    from kdcore.engine.accelerator import resolve_device

    device = resolve_device(device_name)
    environment = {
        "kdcore": kdcore.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "seed": seed,
        "git_revision": _git_revision(),
        "command": sys.argv,
        "plugins": [
            {"name": p.name, "distribution": p.distribution, "version": p.version, "status": p.status}
            for p in registry.plugins
        ],
    }
    write_json(run_directory / name, environment)


def _git_revision() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None
