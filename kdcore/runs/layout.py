"""The run directory: every name a run writes, and how each file is read and written.

    <out>/<recipe name>/<timestamp>/        a sweep (or a single run)
      recipe.yaml env.json                  the resolved recipe, the environment
      report.md report.csv ...              the report (written by :mod:`kdcore.results`)
      <variant id>/                         one run of the matrix (the sweep itself without one)
        recipe.yaml summary.json
        teacher -> <store>/<teacher key>/   a link into the store of shared teachers
        student/ prepare-<term>/            one folder per stage (:class:`StageFiles`)
    <out>/teachers/<teacher key>/           the store: a stage folder per trained teacher

Files are written to a temporary name beside the target and renamed over it, so a crash never
leaves half a file. Weights are safetensors and resume states are read with
``weights_only=True``: nothing read here can execute code. torch is imported only by the
functions that read or write tensors, so reports can use this module without it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdcore.errors import KdcoreError

if TYPE_CHECKING:
    from torch import nn

RECIPE = "recipe.yaml"
ENVIRONMENT = "env.json"
SUMMARY = "summary.json"
TEACHER_LINK = "teacher"
TEACHER_STORE = "teachers"

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"
METRICS = "metrics.jsonl"
DISTRIBUTED = "distributed.json"

MODEL_SELECTION = "val/top1"
"""The metric that picks the best epoch: validation top-1, never a test metric."""


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


def write_yaml(path: Path, data: Any) -> None:
    write_atomically(path, lambda p: p.write_text(yaml.safe_dump(data, sort_keys=False)))


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def save_weights(model: nn.Module, path: Path) -> None:
    import safetensors.torch

    write_atomically(path, lambda p: safetensors.torch.save_model(model, str(p)))


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights, insisting that every tensor fits the model."""
    import safetensors
    import safetensors.torch

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


class StageFiles:
    """The folder of one training stage: metrics, resume state and weights."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def best_weights(self) -> Path:
        return self.path / BEST_WEIGHTS

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def records(self) -> list[dict[str, Any]]:
        """The per-epoch records of ``metrics.jsonl``, in order."""
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines()]

    def append_record(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as log:
            log.write(json.dumps(record) + "\n")

    def keep_records(self, epochs_done: int) -> None:
        """Drop the records of epochs after ``epochs_done`` (a resumed stage redoes them)."""
        if self.metrics.exists():
            kept = [json.dumps(r) for r in self.records() if r["epoch"] <= epochs_done]
            self.metrics.write_text("".join(line + "\n" for line in kept))

    def forget_records(self) -> None:
        self.metrics.unlink(missing_ok=True)

    def best_validation(self) -> tuple[int, float] | None:
        """(epoch, validation top-1) of the best epoch logged so far, or ``None`` without a
        validation split. Model selection never looks at the test split."""
        scored = [(r["epoch"], r[MODEL_SELECTION]) for r in self.records() if MODEL_SELECTION in r]
        return max(scored, key=lambda item: (item[1], -item[0])) if scored else None

    def save_state(self, state: dict[str, Any]) -> None:
        """Resume state (weights, optimiser, RNG): tensors and plain Python values only."""
        import torch

        write_atomically(self.checkpoint, lambda p: torch.save(state, p))

    def load_state(self) -> dict[str, Any]:
        import torch

        return torch.load(self.checkpoint, map_location="cpu", weights_only=True)

    def write_distributed(self, world_size: int, identical: bool) -> None:
        write_json(self.path / DISTRIBUTED, {"world_size": world_size, "identical_weights": identical})


class RunDirectory:
    """The folder of one run (a variant of a sweep, or a single run)."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY

    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE

    @property
    def finished(self) -> bool:
        return self.summary_file.exists()

    def stage(self, name: str) -> StageFiles:
        return StageFiles(self.path / name)

    def variant(self, variant_id: str) -> RunDirectory:
        """The folder of a matrix variant; the sweep's own folder for a recipe without matrix."""
        return RunDirectory(self.path / variant_id) if variant_id else self

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_file, summary)

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_file.read_text())

    def link_teacher(self, stored: Path) -> None:
        """Make ``teacher`` point at a stored teacher (a relative link)."""
        link = self.path / TEACHER_LINK
        self.path.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            return
        os.symlink(os.path.relpath(stored, self.path), link, target_is_directory=True)

    @property
    def teacher(self) -> Path:
        return self.path / TEACHER_LINK


def new_run_directory(out: Path, name: str) -> Path:
    """``out/<name>/<timestamp>``, created here so that no two runs ever share a directory."""
    parent = out / name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise KdcoreError(f"{parent}: cannot create a new run directory")


def latest_run_directory(out: Path, name: str) -> Path:
    runs = sorted(p for p in (out / name).glob("*") if (p / RECIPE).exists()) if (out / name).is_dir() else []
    if not runs:
        raise KdcoreError(f"--resume: no run of '{name}' under {out}; start one without --resume")
    return runs[-1]


def teacher_store_default(out: Path, run_dir: Path | None) -> Path:
    """``OUT/teachers``, or beside an explicit ``--run-dir``."""
    return (run_dir.parent if run_dir is not None else out) / TEACHER_STORE
