"""What varies between the runs of a report, and how runs line up for a comparison.

- The **compared factor** is one recipe field or zip axis: unless the user names one, the zip
  axis that sets the teacher's objective (a teacher lab's ``teacher_recipe``: its labels name the
  teacher recipes), else ``teacher.objective.name``. Its **baseline** value is the first value of
  that axis in the sweep's recipe.yaml (``[ce, mse]`` → ce), unless ``--baseline`` says otherwise.
- A **cell** is what is held fixed while the factor changes: the teacher–student pair, the
  method (the student's distillers) and every other field that varies between the runs (the
  *condition*, e.g. ``labeled=500``). Seeds are not part of a cell: runs of a cell that share a
  seed are the pairs of the paired comparison.
- Runs without a teacher (and, when the factor is a teacher objective, runs whose teacher is a
  loaded checkpoint) cannot take a value of a teacher factor: they are **references**, shown as
  a reference row or line beside the cells of the same student.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcore.config.loader import variant_id
from kdcore.errors import KdcoreError
from kdcore.results.collect import (
    RunResult,
    TeacherIndex,
    checkpoint_label,
    is_field_path,
    matrix_order,
    value_label,
    zip_axis_fields,
)

DEFAULT_FACTOR = "teacher.objective.name"
NOT_DESIGN = ("runtime.", "loggers")
"""Fields that say how a run was executed, not what it is: never part of a cell or a group."""
NOT_DESIGN_NAMES = ("seed", "eval_batch_size", "root", "num_workers")
LONG_LABEL = 24
"""Labels longer than this are replaced by G1, G2... (with a legend) in the terminal."""


def is_design_field(field: str) -> bool:
    return field != "name" and not field.startswith(NOT_DESIGN) and field.split(".")[-1] not in NOT_DESIGN_NAMES


def short_key(field: str) -> str:
    parts = [p for p in field.split(".") if p not in ("name", "params") and not p.isdigit()]
    return parts[-1] if parts else field


def short_keys(fields: list[str]) -> dict[str, str]:
    """``data.params.labeled`` → ``labeled``, the full path where two would read the same."""
    labels = {f: short_key(f) for f in fields}
    counts = defaultdict(int)
    for label in labels.values():
        counts[label] += 1
    return {f: (label if counts[label] == 1 else f) for f, label in labels.items()}


@dataclass(frozen=True)
class CellKey:
    pair: str
    method: str
    condition: str

    @property
    def label(self) -> str:
        return " ".join(part for part in (self.method, self.pair, self.condition) if part and part != "·")


@dataclass(frozen=True)
class BlockKey:
    """The teacher side of a cell: the pair and the condition's fields that concern the
    teacher (the teacher row of the comparison is per block)."""

    pair: str
    condition: str


class Design:
    """The factor, its values (baseline first), and each run's value, cell and group."""

    def __init__(self, results: list[RunResult], factor: str | None = None, baseline: str | None = None,
                 curve: str | None = None, teachers: TeacherIndex | None = None):
        self.results = results
        self.teachers = teachers
        self.explicit = factor is not None
        self.factor = factor or default_factor(results)
        self.curve = curve
        fields = set().union(*(r.fields for r in results))
        self.varying_all = _varying(results, fields)
        """Fields that differ between any two runs: what tells the groups apart."""
        self.varying = self.varying_all
        self._check_factor(fields)
        self._masked = self._factor_subtree()
        self._references_apply = True
        compared = [r for r in results if not self.is_reference(r)]
        named = {self.factor_value(r): value_label(r.value(self.factor)) for r in compared}
        present = list(named)
        order = matrix_order(results, self.factor)
        self.baseline_source = "matrix order" if any(named[v] in order for v in present) else "order found"
        # in the order of the matrix axis (a value with params by its component's name), then as found
        values = sorted(present, key=lambda v: (order.index(named[v]) if named[v] in order else len(order),
                                                present.index(v)))
        if baseline is not None:
            if baseline not in values:
                raise KdcoreError(f"--baseline {baseline}: not a value of {self.factor} in these runs "
                                  f"(values: {', '.join(values) or 'none'})")
            values = [baseline] + [v for v in values if v != baseline]
            self.baseline_source = "--baseline"
        self.values = values
        self.baseline = values[0] if values else None
        if self.explicit and len(values) < 2:
            raise KdcoreError(f"--compare {self.factor}: takes {len(values)} value{'s' if len(values) != 1 else ''} "
                              f"({', '.join(values) or 'none'}) in these runs; fields that vary: "
                              f"{', '.join(self._factor_candidates()) or 'none'}")
        self._references_apply = len(values) >= 2  # without a comparison, every run is a cell of its own
        self.__dict__.pop("_within", None)  # computed while references applied
        kinds: dict[str, list[RunResult]] = defaultdict(list)
        for result in results:
            kinds[self.kind(result)].append(result)
        self._varying_of_kind = {kind: _varying(runs, fields) for kind, runs in kinds.items()}
        self.varying = self._varying_of_kind.get("compared", [])
        """Fields that differ between the compared runs: what tells their cells apart."""
        self._zips = {key: zip_axis_fields(results, key) for r in results for key in r.overrides
                      if not is_field_path(key) and key != self.factor}
        """Zip axes other than the factor, with the field paths each sets."""
        self._labels = short_keys(list(dict.fromkeys(
            f for varying in self._varying_of_kind.values() for f in self._condition_fields(varying))))

    # -- the factor ----------------------------------------------------------------------------

    def _check_factor(self, fields: set[str]) -> None:
        if not self.explicit:
            return
        known = (any(f == self.factor or f.startswith(self.factor + ".") for f in fields)
                 or any(self.factor in r.overrides for r in self.results))
        if not known:
            raise KdcoreError(f"--compare {self.factor}: no such recipe field in these runs; fields that vary: "
                              f"{', '.join(self._factor_candidates()) or 'none'}")

    def _factor_candidates(self) -> list[str]:
        return [f for f in self.varying_all if not f.startswith("teacher.objective.params")]

    def kind(self, result: RunResult) -> str:
        """``compared``, or for a reference ``no teacher`` or ``checkpoint``."""
        if not self.is_reference(result):
            return "compared"
        return "checkpoint" if result.has_teacher else "no teacher"

    def _kind(self, result: RunResult) -> list[str]:
        """The varying fields among the runs of this run's kind."""
        return self._varying_of_kind.get(self.kind(result), [])

    @property
    def compares(self) -> bool:
        """Whether there is a comparison: the factor takes two or more values."""
        return len(self.values) >= 2

    @property
    def teacher_factor(self) -> bool:
        """Whether the factor changes the teacher (then teachers are compared too)."""
        return any(m.startswith("teacher.") for m in self._masked)

    @property
    def others(self) -> list[str]:
        return self.values[1:]

    def _factor_subtree(self) -> tuple[str, ...]:
        """The fields that change with the factor: the field, what lies under it and, for a
        component's ``name``, the component's params."""
        parent = self.factor.rsplit(".", 1)[0] if self.factor.endswith(".name") else self.factor
        return (self.factor, parent, *zip_axis_fields(self.results, self.factor))

    def masked(self, field: str) -> bool:
        return any(field == m or field.startswith(m + ".") for m in self._masked)

    def is_reference(self, result: RunResult) -> bool:
        """A run that cannot take a value of the factor: no teacher for a teacher factor, a
        loaded checkpoint for a teacher-objective factor."""
        if not getattr(self, "_references_apply", True):
            return False
        if self.teacher_factor and not result.has_teacher:
            return True
        return self.factor.startswith("teacher.objective") and result.loads_checkpoint

    def factor_value(self, result: RunResult) -> str:
        """The run's value of the compared field; for a component's name, with the params that
        tell runs of that component apart (``ce(label_smoothing=0.1)``)."""
        value = value_label(result.value(self.factor))
        if self.factor.endswith(".name") and is_field_path(self.factor):
            parent = self.factor[: -len(".name")]
            params = result.value(parent + ".params")
            name = result.value(self.factor)
            shown = [f"{key}={value_label(v)}" for key, v in (params.items() if isinstance(params, dict) else [])
                     if self._varies_within(result, f"{parent}.params.{key}", self.factor, name)]
            if shown:
                value += f"({','.join(shown)})"
        return value

    # -- labels --------------------------------------------------------------------------------

    def _arch_label(self, result: RunResult, role: str) -> str:
        """``name(param=value,...)``: the params that tell runs of this architecture apart, or
        that differ between teacher and student of the same architecture."""
        prefix = f"{role}.arch"
        if self.masked(prefix + ".name"):
            return "·"
        name = result.value(prefix + ".name")
        if name is None:
            return "(no teacher)" if role == "teacher" else "?"
        other = "student" if role == "teacher" else "teacher"
        same_name = result.value(f"{other}.arch.name") == name
        params = result.value(prefix + ".params") or {}
        other_params = (result.value(f"{other}.arch.params") or {}) if same_name else {}
        shown = []
        for key, value in params.items() if isinstance(params, dict) else []:
            field = f"{prefix}.params.{key}"
            if self.masked(field):
                continue
            if (same_name and other_params.get(key) != value) or self._varies_within(result, field, prefix + ".name", name):
                shown.append(f"{key}={value_label(value)}")
        return f"{name}({','.join(shown)})" if shown else str(name)

    def pair(self, result: RunResult) -> str:
        student = self._arch_label(result, "student")
        if not result.has_teacher:
            return f"{student} alone"
        return f"{self._arch_label(result, 'teacher')}→{student}"

    def method(self, result: RunResult) -> str:
        """The student's distillers joined by ``+``, each with the settings that tell runs of
        that distiller apart (``kd(temperature=4.0)``); ``·`` for the compared part."""
        distillers = (result.recipe.get("student") or {}).get("distillers")
        if distillers is None:
            distillers = result.value("student.distillers") or []
        if self.masked("student.distillers"):
            return "·"
        parts = []
        for index, distiller in enumerate(distillers):
            prefix = f"student.distillers.{index}"
            if self.masked(prefix + ".name") or self.masked(prefix):
                parts.append("·")
                continue
            name = distiller.get("label") or distiller.get("name", "?")
            settings = {"weight": distiller.get("weight"),
                        **{f"params.{k}": v for k, v in (distiller.get("params") or {}).items()}}
            shown = [f"{key.removeprefix('params.')}={value_label(value)}" for key, value in settings.items()
                     if self._varies_within(result, f"{prefix}.{key}", prefix + ".name", distiller.get("name"))]
            parts.append(f"{name}({','.join(shown)})" if shown else str(name))
        compared = self.factor.split(".")
        if (self.factor.startswith("student.distillers.") and compared[2].isdigit()
                and int(compared[2]) >= len(distillers)):
            parts.append("·")  # the compared distiller is absent here: its value is "none"
        return "+".join(parts) or "(labels only)"

    def _varies_within(self, result: RunResult, key: str, name_field: str, name: Any) -> bool:
        """Whether ``key`` takes several values among the runs of this run's kind whose
        component at ``name_field`` is ``name``."""
        reference = self.kind(result)
        cache = self.__dict__.setdefault("_within", {})
        if (key, name_field, name, reference) not in cache:
            values = {repr(r.value(key)) for r in self.results
                      if self.kind(r) == reference and r.value(name_field) == name}
            cache[(key, name_field, name, reference)] = len(values) > 1
        return cache[(key, name_field, name, reference)]

    def _condition_fields(self, varying: list[str]) -> list[str]:
        covered = ("teacher.arch", "student.arch", "student.distillers")
        return [f for f in varying if not self.masked(f) and not f.startswith(covered)]

    def _condition(self, result: RunResult, teacher_side: bool = False, without: str | None = None) -> str:
        parts = []
        for field in self._condition_fields(self._kind(result)):
            if field == without:
                continue
            if not result.has_teacher and field.startswith("teacher"):
                continue
            if self.is_reference(result) and field.startswith(("teacher.objective", "teacher.checkpoint")):
                continue
            if teacher_side and field.startswith("student"):
                continue
            if self._follows_its_component(result, field):
                continue
            zipped = next((key for key, paths in self._zips.items()
                           if any(field == p or field.startswith(p + ".") for p in paths)), None)
            if zipped is not None:  # set by a zip axis: named by its label
                part = f"{zipped}={value_label(result.overrides.get(zipped))}"
                if part not in parts:
                    parts.append(part)
                continue
            parts.append(f"{self._labels[field]}={value_label(result.fields.get(field))}")
        return ",".join(parts)

    def _follows_its_component(self, result: RunResult, field: str) -> bool:
        """Whether ``field`` is a param of a component (``teacher.objective.params.reduction``)
        that changes only with the component's name, which the label already shows."""
        parts = field.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            name_field = ".".join(parts[:cut]) + ".name"
            if name_field != field and name_field in result.fields:
                return not self._varies_within(result, field, name_field, result.fields.get(name_field))
        return False

    def cell(self, result: RunResult) -> CellKey:
        return CellKey(self.pair(result), self.method(result), self._condition(result))

    def block(self, result: RunResult) -> BlockKey:
        return BlockKey(self.pair(result), self._condition(result, teacher_side=True))

    def student_side(self, result: RunResult) -> tuple[str, str]:
        """What a reference run shares with the cells it stands beside: the student's
        architecture (name and every param) and the data."""
        data = ",".join(f"{f}={value_label(result.fields.get(f))}" for f in self.varying_all if f.startswith("data."))
        arch = f"{result.value('student.arch.name')}{json.dumps(result.value('student.arch.params'), sort_keys=True, default=str)}"
        return arch, data

    def student_label(self, result: RunResult) -> str:
        return self._arch_label(result, "student")

    def checkpoint_text(self, result: RunResult) -> str:
        """``checkpoint mlp-mse-315195a73eab/model.safetensors (mse, seed 2)``: the file, and the
        objective and seed of the run that made it where they are known."""
        path = Path(str(result.value("teacher.checkpoint")))
        teacher = self.teachers.of(result) if self.teachers is not None else None
        known = []
        if teacher is not None and teacher.objective:
            known.append(teacher.objective)
        if teacher is not None and teacher.seed is not None:
            known.append(f"seed {teacher.seed}")
        return f"checkpoint {checkpoint_label(path)}" + (f" ({', '.join(known)})" if known else "")

    def reference_label(self, result: RunResult, without: str | None = None) -> str:
        who = "no teacher" if not result.has_teacher else self.checkpoint_text(result)
        condition = self._condition(result, without=without)
        return " ".join(part for part in (who, self.method(result), condition) if part)

    def line_label(self, result: RunResult, without: str) -> str:
        """A curve's label over the field ``without``: the value, the method, the pair where
        pairs differ, and the rest of the condition."""
        if self.is_reference(result):
            return self.reference_label(result, without)
        parts = [self.factor_value(result), self.method(result)]
        if any(f.startswith(("teacher.arch", "student.arch")) for f in self.varying):
            parts.append(self.pair(result))
        condition = self._condition(result, without=without)
        return ", ".join(p for p in [*parts, condition] if p)

    # -- groups of the summary table -----------------------------------------------------------

    def group_key(self, result: RunResult) -> tuple:
        return tuple(repr(result.fields.get(f)) for f in self.varying_all)

    def group_label(self, result: RunResult) -> str:
        """The matrix values other than the seed (``objective=mse``, the folder names' style),
        or, where sweeps are merged, what tells the groups apart; ``all runs`` for one group."""
        kept = {k: v for k, v in result.overrides.items() if k.split(".")[-1] != "seed"}
        if self._overrides_cover_all():
            return variant_id(kept) or "all runs"
        parts = []
        if not result.has_teacher:
            parts.append("no teacher")
        elif result.loads_checkpoint:
            parts.append(self.checkpoint_text(result))
        if not self.is_reference(result) and self.compares:
            parts.append(f"{short_key(self.factor)}={self.factor_value(result)}")
        varying = self._kind(result)
        if any(f.startswith(("teacher.arch", "student.arch")) for f in varying):
            parts.append(self.pair(result) if result.has_teacher else self._arch_label(result, "student"))
        if any(f.startswith("student.distillers") for f in self.varying_all):
            parts.append(self.method(result))
        condition = self._condition(result)
        if condition:
            parts.append(condition)
        return ",".join(parts) or "all runs"

    def _overrides_cover_all(self) -> bool:
        if not hasattr(self, "_cover"):
            keys = {k for r in self.results for k in r.overrides if k.split(".")[-1] != "seed"}
            every_run = all(r.overrides for r in self.results)
            roots = keys | {k.removesuffix(".name") for k in keys if k.endswith(".name")}
            covered = all(any(f == k or f.startswith(k + ".") for k in roots) for f in self.varying_all)
            same_keys = len({tuple(k for k in r.overrides if k.split(".")[-1] != "seed") for r in self.results}) == 1
            self._cover = every_run and covered and same_keys
        return self._cover

    def describe(self) -> dict[str, Any]:
        return {"field": self.factor, "baseline": self.baseline, "values": self.values,
                "baseline_from": self.baseline_source, "compares": self.compares}


def default_factor(results: list[RunResult]) -> str:
    """The zip axis that sets ``teacher.objective`` (or a field under it), else
    ``teacher.objective.name``: a zip axis's label is what tells its teacher recipes apart,
    while the objective's name alone would split one recipe's runs over several cells."""
    axes = dict.fromkeys(key for r in results for key in r.overrides if not is_field_path(key))
    for axis in axes:
        if any(f == "teacher.objective" or f.startswith("teacher.objective.") for f in zip_axis_fields(results, axis)):
            return axis
    return DEFAULT_FACTOR


def _varying(runs: list[RunResult], fields: set[str]) -> list[str]:
    return sorted(f for f in fields if is_design_field(f) and len({repr(r.fields.get(f)) for r in runs}) > 1)


def shorten_labels(labels: list[str], limit: int = LONG_LABEL, prefix: str = "G") -> tuple[list[str], list[tuple[str, str]]]:
    """Labels for a narrow terminal: the labels themselves when all are short, else ``G1``,
    ``G2``... for the long ones, with the legend ``[(short, long)]``."""
    if all(len(label) <= limit for label in labels):
        return labels, []
    short, legend = [], []
    for label in labels:
        if len(label) <= limit:
            short.append(label)
        else:
            name = f"{prefix}{len(legend) + 1}"
            legend.append((name, label))
            short.append(name)
    return short, legend
