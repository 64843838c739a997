"""Finished runs read back from their directories: the resolved recipe (with the matrix
``overrides`` that made it) and the summary, what a report asks of them, and the distinct
teachers behind them.

A teacher is identified by where it lives, not by the run that used it: a trained teacher by
its folder in the store of shared teachers (the run's ``teacher`` link, resolved), or for runs
without a store the run's own ``teacher/``; a loaded checkpoint by the SHA-256 of the file's
content (its path where the file is not on this machine). Five students of one stored teacher
are one teacher."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from kdcore.errors import KdcoreError
from kdcore.runs.layout import METRICS, RECIPE, SUMMARY, TEACHER_LINK, WEIGHTS, RunDirectory, read_yaml

TEACHER_RECORD = "teacher.json"
"""The record the teacher stage writes into a stored teacher's folder (objective, seed...)."""
_STORE_NAME = re.compile(r"^(?P<arch>.+)-(?P<objective>[^-]+)-(?P<hash>[0-9a-f]{12})$")


RECIPE_SECTIONS = ("name", "seed", "data", "optimizer", "schedule", "teacher", "student", "runtime", "loggers",
                   "matrix", "extends")


def is_field_path(key: str) -> bool:
    """A recipe field path (``teacher.objective.name``), not a zip axis's name (``method``)."""
    return key.split(".")[0] in RECIPE_SECTIONS


def recipe_fields(recipe: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A resolved recipe as ``{"data.params.labeled": 500, ...}`` (matrix overrides left out;
    list items by index: ``student.distillers.0.name``)."""
    if isinstance(recipe, list) and prefix:
        if not recipe:
            return {prefix.rstrip("."): []}
        return {f: v for i, child in enumerate(recipe) for f, v in recipe_fields(child, f"{prefix}{i}.").items()}
    if not isinstance(recipe, dict):
        return {prefix.rstrip("."): recipe}
    if not recipe and prefix:
        return {prefix.rstrip("."): {}}
    return {field: value for key, child in recipe.items() if key != "overrides"
            for field, value in recipe_fields(child, f"{prefix}{key}.").items()}


def field_value(data: Any, dotted: str) -> Any:
    """The value at a dotted path (list items by index), or ``None`` where there is none."""
    for part in dotted.split("."):
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def value_label(value: Any) -> str:
    """A short text for a recipe value: a component by its name, a list joined by ``-``."""
    if isinstance(value, dict):
        return str(value["name"]) if "name" in value else "-".join(value_label(v) for v in value.values())
    if isinstance(value, list):
        return "-".join(value_label(v) for v in value) or "[]"
    if value is None:
        return "none"
    return str(value)


@dataclass(frozen=True)
class RunResult:
    """A finished run."""

    directory: Path
    recipe: dict[str, Any]
    summary: dict[str, Any]

    @property
    def overrides(self) -> dict[str, Any]:
        return self.recipe.get("overrides", {}) or {}

    @cached_property
    def fields(self) -> dict[str, Any]:
        """Every recipe field, flattened (the overrides' fields for recipes that lack them)."""
        overrides: dict[str, Any] = {}
        for key, value in self.overrides.items():
            if not is_field_path(key):
                continue  # a zip axis's label: the fields it sets follow it
            overrides.update(recipe_fields(value, f"{key}.") if isinstance(value, (dict, list)) else {key: value})
        return {**overrides, **recipe_fields(self.recipe)}

    def value(self, dotted: str) -> Any:
        """A recipe field's value (also a whole section: ``student.distillers``)."""
        if dotted in self.overrides:
            return self.overrides[dotted]
        found = field_value(self.recipe, dotted)
        return found if found is not None else self.fields.get(dotted)

    @property
    def seed(self) -> Any:
        return self.recipe.get("seed", self.overrides.get("seed"))

    @property
    def has_teacher(self) -> bool:
        return bool(self.recipe.get("teacher")) or "teacher" in self.summary

    @property
    def loads_checkpoint(self) -> bool:
        return bool((self.recipe.get("teacher") or {}).get("checkpoint"))

    @property
    def method(self) -> str:
        distillers = (self.recipe.get("student") or {}).get("distillers") or []
        return "+".join(d.get("label") or d["name"] for d in distillers) or "(labels only)"

    @property
    def objective(self) -> str:
        """The teacher's objective: ``none`` without a teacher, ``checkpoint`` for a loaded one."""
        if not self.has_teacher:
            return "none"
        objective = (self.recipe.get("teacher") or {}).get("objective")
        if objective:
            return objective["name"]
        return "checkpoint" if self.loads_checkpoint else str(self.value("teacher.objective.name") or "?")

    @property
    def source(self) -> str:
        """What taught the student, for plot legends: the teacher's objective, else the method."""
        if "teacher" in self.summary:
            return f"{self.objective} teacher"
        return self.method

    def metric(self, stage: str, split: str, name: str) -> float | None:
        found = self.summary.get(stage, {}).get(split, {})
        return found.get(name) if isinstance(found, dict) else None

    def selected_metric(self, stage: str, selection: str, name: str = "top1") -> float | None:
        """A test metric of the weights a selection rule picks: ``last epoch`` or ``best on
        validation`` (the test metrics of the best validation epoch's weights)."""
        metrics = self.summary.get(stage, {})
        for key in SELECTIONS[selection]:
            metrics = metrics.get(key, {}) if isinstance(metrics, dict) else {}
        return metrics.get(name) if isinstance(metrics, dict) else None

    def estimate_distance(self, name: str) -> float | None:
        """Distance (``mse_to_true`` or ``ce_to_true``) to p* of what the student learnt from:
        the teacher on the training set, or, without a teacher, a distiller's own targets."""
        if "teacher" in self.summary:
            return self.metric("teacher", "train", name)
        return next((numbers[name] for numbers in self.summary.get("distillers", {}).values() if name in numbers), None)

    @property
    def teacher_folder(self) -> Path:
        """Where the teacher this run trained or reused lives: the store folder its ``teacher``
        link points at, else its own ``teacher/``."""
        return Path(os.path.realpath(self.directory / TEACHER_LINK))


SELECTIONS = {"last epoch": ("test",), "best on validation": ("best_val", "test")}
"""Which weights a number is of: the last epoch's, or the best validation epoch's (never the
best test epoch's), and where the summary keeps their test metrics."""


def _natural(name: str) -> list:
    """``labeled=250`` before ``labeled=1000``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def _in_matrix_order(directory: Path, candidates: list[Path]) -> list[Path]:
    """A sweep's runs in the order of its matrix (each axis in its recipe's order), else in
    natural order of their names."""
    try:
        matrix = (read_yaml(directory / RECIPE) or {}).get("matrix") if (directory / RECIPE).exists() else None
    except Exception:
        matrix = None
    if not isinstance(matrix, dict):
        return sorted(candidates, key=lambda p: _natural(p.name))

    def position(candidate: Path) -> tuple:
        try:
            overrides = (read_yaml(candidate / RECIPE) or {}).get("overrides") or {}
        except Exception:
            overrides = {}
        indices = []
        for axis, values in matrix.items():
            value = overrides.get(axis)
            indices.append(values.index(value) if isinstance(values, list) and value in values else len(values or []))
        return tuple(indices)

    return sorted(candidates, key=lambda p: (position(p), _natural(p.name)))


def collect(directories: list[Path]) -> list[RunResult]:
    """Finished runs in the given run directories (a single run, or a matrix's runs, in the
    order of the matrix)."""
    results = []
    seen: set[str] = set()
    for directory in directories:
        if not directory.is_dir():
            raise KdcoreError(f"{directory}: no such run directory")
        if (directory / SUMMARY).exists():
            candidates = [directory]
        else:
            candidates = _in_matrix_order(directory, [p for p in directory.iterdir() if (p / SUMMARY).exists()])
        for candidate in candidates:
            run = RunDirectory(candidate)
            if not candidate.is_dir() or not run.finished or os.path.realpath(candidate) in seen:
                continue
            seen.add(os.path.realpath(candidate))
            recipe = read_yaml(run.recipe_file) if run.recipe_file.exists() else {}
            try:
                summary = run.read_summary()
            except ValueError as error:
                raise KdcoreError(f"{run.summary_file}: not readable JSON ({error})") from None
            results.append(RunResult(candidate, recipe or {}, summary))
    if not results:
        raise KdcoreError(f"no finished runs (with {SUMMARY}) in {', '.join(map(str, directories))}")
    return results


def unfinished_runs(results: list[RunResult]) -> list[Path]:
    """The runs of the results' sweeps that have not finished: folders beside a finished run
    that hold the resolved recipe every run of a sweep gets when it starts, but no summary."""
    sweeps = {r.directory.parent for r in results if (r.directory.parent / RECIPE).exists()}
    return sorted(folder for sweep in sweeps for folder in sweep.iterdir()
                  if folder.is_dir() and (folder / RECIPE).exists() and not (folder / SUMMARY).exists())


# --- the sweeps' matrices ------------------------------------------------------------------------

def matrix_order(results: list[RunResult], dotted: str) -> list[str]:
    """The values of a field in the order its matrix axis lists them, in the recipe.yaml of the
    sweeps the runs belong to (first sweep first): ``[ce, mse]`` → ce is the baseline. A field
    inside an axis (``student.distillers.0.name`` of ``student.distillers``) is read from each
    value of that axis."""
    order: list[str] = []
    for sweep in dict.fromkeys(r.directory.parent for r in results):
        path = sweep / RECIPE
        try:
            matrix = (read_yaml(path) or {}).get("matrix") if path.exists() else None
        except Exception:  # a damaged sweep file only loses the order
            matrix = None
        if not isinstance(matrix, dict):
            continue
        for axis, values in matrix.items():
            if not isinstance(values, list):
                continue
            if axis == dotted and not is_field_path(axis):  # a zip axis: its entries' labels
                labels = [str(v["label"]) if isinstance(v, dict) and "label" in v else
                          value_label(next((x for k, x in v.items() if k != "label"), None)) if isinstance(v, dict)
                          else value_label(v) for v in values]
            elif axis == dotted:
                labels = [value_label(v) for v in values]
            elif dotted.startswith(axis + "."):
                labels = [value_label(field_value(v, dotted[len(axis) + 1:])) for v in values]
            else:
                continue
            order += [label for label in labels if label not in order]
    return order


def zip_axis_fields(results: list[RunResult], axis: str) -> list[str]:
    """The field paths a zip axis sets: those listed after its name in the runs' overrides
    (none for a field path)."""
    if is_field_path(axis):
        return []
    found: list[str] = []
    for result in results:
        inside = False
        for key in result.overrides:
            if key == axis:
                inside = True
            elif not is_field_path(key):
                inside = False
            elif inside and key not in found:
                found.append(key)
    return found


# --- distinct teachers ---------------------------------------------------------------------------

def checkpoint_label(path: Path) -> str:
    """A loaded checkpoint by its file name, with its folder where the name says nothing
    (``mlp-mse-315195a73eab/model.safetensors``)."""
    generic = path.name in (WEIGHTS, "best.safetensors", "best_brier.safetensors")
    return f"{path.parent.name}/{path.name}" if generic and path.parent.name else path.name


@dataclass
class Teacher:
    """A distinct teacher and the runs whose students it taught."""

    identity: str
    kind: str
    """``store`` (a shared trained teacher), ``run`` (trained in the run's own folder) or
    ``checkpoint`` (loaded from a file)."""
    label: str
    path: str
    arch: str
    objective: str | None
    seed: Any
    runs: list[RunResult] = field(default_factory=list)
    provenance: str = ""
    """For a checkpoint: where its objective and seed were read from (or why they are unknown)."""
    loaded_from: list[str] = field(default_factory=list)
    """Checkpoint files with this trained teacher's weights that other runs loaded."""

    @property
    def first(self) -> RunResult:
        return self.runs[0]

    def metric(self, split: str, name: str) -> float | None:
        return self.first.metric("teacher", split, name)

    def selected_metric(self, selection: str, name: str = "top1") -> float | None:
        return self.first.selected_metric("teacher", selection, name)

    def students(self, selection: str = "last epoch") -> list[float]:
        return [v for r in self.runs if (v := r.selected_metric("student", selection)) is not None]

    @property
    def metrics_file(self) -> Path | None:
        if self.kind == "checkpoint":
            return None
        path = Path(self.path) / METRICS
        return path if path.exists() else None

    def as_dict(self) -> dict[str, Any]:
        splits = {split: self.first.summary["teacher"][split]
                  for split in ("test", "val", "train") if isinstance(self.first.summary.get("teacher", {}).get(split), dict)}
        best = self.first.summary.get("teacher", {}).get("best_val")
        students = self.students()
        return {
            "id": self.identity, "kind": self.kind, "label": self.label, "path": self.path, "arch": self.arch,
            "objective": self.objective, "seed": self.seed, "provenance": self.provenance or None,
            "loaded_from": list(self.loaded_from),
            "students": len(self.runs), "student_runs": [str(r.directory) for r in self.runs],
            "student_mean_top1": sum(students) / len(students) if students else None,
            "metrics": splits, "best_val": best,
        }


class TeacherIndex:
    """The distinct teachers of a set of runs, each once, in the order they are first met."""

    def __init__(self, results: list[RunResult]):
        self.teachers: list[Teacher] = []
        self._by_identity: dict[str, Teacher] = {}
        self._of_run: dict[Path, Teacher] = {}
        self._hashes: dict[str, str] = {}
        self._trained_folders: dict[str, RunResult] = {}
        for result in results:
            if result.has_teacher and not result.loads_checkpoint:
                self._trained_folders.setdefault(str(result.teacher_folder), result)
        # trained teachers first, so that a checkpoint holding a trained teacher's weights is
        # counted as that teacher
        ordered = sorted((r for r in results if r.has_teacher and "teacher" in r.summary), key=lambda r: r.loads_checkpoint)
        for result in ordered:
            identity = self._identity(result)
            teacher = self._by_identity.get(identity)
            if teacher is None:
                teacher = self._describe(identity, result)
                self._by_identity[identity] = teacher
                self.teachers.append(teacher)
            if result.loads_checkpoint and teacher.kind != "checkpoint":
                path = str(result.recipe["teacher"]["checkpoint"])
                if path not in teacher.loaded_from:
                    teacher.loaded_from.append(path)
            teacher.runs.append(result)
            self._of_run[result.directory] = teacher
        order = {r.directory: i for i, r in enumerate(results)}
        for teacher in self.teachers:
            teacher.runs.sort(key=lambda r: order[r.directory])
        self.teachers.sort(key=lambda t: order[t.runs[0].directory])

    def of(self, result: RunResult) -> Teacher | None:
        return self._of_run.get(result.directory)

    def _identity(self, result: RunResult) -> str:
        if result.loads_checkpoint:
            path = Path(result.recipe["teacher"]["checkpoint"])
            digest = self._hash(path)
            if digest is None:
                return f"checkpoint:{path}"
            trained = self._trained_with(path, digest)
            return f"folder:{trained.teacher_folder}" if trained is not None else f"sha256:{digest}"
        return f"folder:{result.teacher_folder}"

    def _trained_with(self, path: Path, digest: str) -> RunResult | None:
        """The collected run whose trained teacher the students saw with exactly these weights
        (the file its teacher record names, else model.safetensors)."""
        size = path.stat().st_size
        for folder, candidate in self._trained_folders.items():
            weights = Path(folder) / WEIGHTS
            record = Path(folder) / TEACHER_RECORD
            if record.exists():
                try:
                    weights = Path(folder) / (json.loads(record.read_text()).get("weights") or WEIGHTS)
                except (OSError, ValueError, AttributeError):
                    pass
            if weights.exists() and weights.stat().st_size == size and self._hash(weights) == digest:
                return candidate
        return None

    def _hash(self, path: Path) -> str | None:
        key = os.path.realpath(path)
        if key not in self._hashes:
            try:
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                self._hashes[key] = digest.hexdigest()
            except OSError:
                self._hashes[key] = ""
        return self._hashes[key] or None

    def _describe(self, identity: str, result: RunResult) -> Teacher:
        arch = str(result.value("teacher.arch.name") or "?")
        if result.loads_checkpoint:
            path = Path(result.recipe["teacher"]["checkpoint"])
            objective, seed, provenance = self._provenance(path, identity)
            return Teacher(identity, "checkpoint", checkpoint_label(path), str(path), arch, objective, seed,
                           provenance=provenance)
        folder = result.teacher_folder
        linked = (result.directory / TEACHER_LINK).is_symlink()
        kind = "store" if linked else "run"
        label = folder.name if linked else f"{result.directory.name}/{TEACHER_LINK}"
        return Teacher(identity, kind, label, str(folder), arch, result.objective, result.seed)

    def _provenance(self, path: Path, identity: str) -> tuple[str | None, Any, str]:
        """The objective and seed of the run that trained a checkpoint, where it is known: the
        teacher record beside the file, the recipe of the run folder it lies in, a collected
        run that trained that folder or the same weights, or the store folder's name."""
        folder = path.parent
        record = folder / TEACHER_RECORD
        if record.exists():
            try:
                data = json.loads(record.read_text())
                objective = data.get("objective")
                name = objective.get("name") if isinstance(objective, dict) else objective
                return name, data.get("seed"), f"{record}"
            except (OSError, ValueError, AttributeError):
                pass
        run_recipe = folder.parent / RECIPE
        if run_recipe.exists() and folder.name in (TEACHER_LINK, "student"):
            try:
                recipe = read_yaml(run_recipe) or {}
            except Exception:
                recipe = {}
            if folder.name == TEACHER_LINK:
                objective = field_value(recipe, "teacher.objective.name")
                if objective:
                    return str(objective), recipe.get("seed"), f"{run_recipe}"
            else:
                teacher = field_value(recipe, "teacher.objective.name")
                made = f"student of a {teacher} teacher" if teacher else "student trained without a teacher"
                return None, recipe.get("seed"), f"{made} ({run_recipe})"
        trained = self._trained_folders.get(os.path.realpath(folder))
        if trained is None and identity.startswith("sha256:"):
            size = path.stat().st_size if path.exists() else -1
            for candidate_folder, candidate in self._trained_folders.items():
                weights = Path(candidate_folder) / WEIGHTS
                if weights.exists() and weights.stat().st_size == size and self._hash(weights) == identity[7:]:
                    trained = candidate
                    break
        if trained is not None:
            return trained.objective, trained.seed, f"the teacher of {trained.directory}"
        match = _STORE_NAME.match(folder.name)
        if match:
            return match["objective"], None, f"the store folder's name {folder.name} (seed unknown)"
        where = "" if path.exists() else " (the file is not on this machine)"
        return None, None, f"unknown{where}"
