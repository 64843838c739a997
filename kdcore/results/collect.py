"""Finished runs read back from their directories: the resolved recipe (with the matrix
``overrides`` that made it) and the summary, and what a report asks of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcore.config.loader import variant_id
from kdcore.errors import KdcoreError
from kdcore.runs.layout import SUMMARY, RunDirectory, read_yaml


def recipe_fields(recipe: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A resolved recipe as ``{"data.params.labeled": 500, ...}`` (matrix overrides left out)."""
    if not isinstance(recipe, dict):
        return {prefix.rstrip("."): recipe}
    return {field: value for key, child in recipe.items() if key != "overrides"
            for field, value in recipe_fields(child, f"{prefix}{key}.").items()}


@dataclass(frozen=True)
class RunResult:
    """A finished run."""

    directory: Path
    recipe: dict[str, Any]
    summary: dict[str, Any]

    @property
    def overrides(self) -> dict[str, Any]:
        return self.recipe.get("overrides", {})

    @property
    def group(self) -> str:
        """The run's matrix values other than the seed: runs differing only in seed pool."""
        kept = {k: v for k, v in self.overrides.items() if k.split(".")[-1] != "seed"}
        return variant_id(kept) or "all runs"

    @property
    def method(self) -> str:
        distillers = (self.recipe.get("student") or {}).get("distillers") or []
        return "+".join(d.get("label") or d["name"] for d in distillers) or "(labels only)"

    @property
    def pair(self) -> str:
        teacher = self.recipe.get("teacher") or {"arch": {"name": "(no teacher)"}}
        return f"{teacher['arch']['name']}→{self.recipe['student']['arch']['name']}"

    @property
    def objective(self) -> str:
        """The teacher's objective: ``none`` without a teacher, ``checkpoint`` for a loaded one."""
        if not self.recipe.get("teacher"):
            return "none"
        objective = self.recipe["teacher"].get("objective")
        return objective["name"] if objective else "checkpoint"

    @property
    def source(self) -> str:
        """What taught the student, for plot legends: the teacher's objective, else the method."""
        if "teacher" in self.summary:
            return f"{self.objective} teacher"
        return self.method

    def metric(self, stage: str, split: str, name: str) -> float | None:
        return self.summary.get(stage, {}).get(split, {}).get(name)

    def estimate_distance(self, name: str) -> float | None:
        """Distance (``mse_to_true`` or ``ce_to_true``) to p* of what the student learnt from:
        the teacher on the training set, or, without a teacher, a distiller's own targets."""
        if "teacher" in self.summary:
            return self.metric("teacher", "train", name)
        return next((numbers[name] for numbers in self.summary.get("distillers", {}).values() if name in numbers), None)


def collect(directories: list[Path]) -> list[RunResult]:
    """Finished runs in the given run directories (a single run, or a matrix's runs)."""
    results = []
    for directory in directories:
        if not directory.is_dir():
            raise KdcoreError(f"{directory}: no such run directory")
        candidates = [directory] if (directory / SUMMARY).exists() else sorted(directory.iterdir())
        for candidate in candidates:
            run = RunDirectory(candidate)
            if run.finished:
                recipe = read_yaml(run.recipe_file) if run.recipe_file.exists() else {}
                results.append(RunResult(candidate, recipe or {}, run.read_summary()))
    if not results:
        raise KdcoreError(f"no finished runs (with {SUMMARY}) in {', '.join(map(str, directories))}")
    return results


