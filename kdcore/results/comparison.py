"""The comparison of the factor's values (by default the teacher objective), cell by cell: for
every method × teacher–student pair × condition and every selection rule (the last epoch's
weights; with a validation split, the best validation epoch's, never the best test epoch's),
the students' top-1 per value (mean ± std over seeds) and the paired difference of each value
to the baseline by seed: mean, 95% confidence interval, paired t-test, Wilcoxon signed-rank,
wins/ties/losses. The teacher row of each pair counts every distinct teacher once; runs without
a teacher are reference rows."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcore.results.collect import SELECTIONS, RunResult, TeacherIndex
from kdcore.results.design import BlockKey, CellKey, Design
from kdcore.results.statistics import PAIRED_T_TEST, WILCOXON, PairedDifference, format_p, mean_std, paired_difference


def run_seed(result: RunResult) -> Any:
    """The seed that pairs runs; a run without one pairs with nothing."""
    return result.seed if result.seed is not None else f"run:{result.directory.name}"


@dataclass
class Cell:
    """One row of the comparison for one selection rule: ``student`` (a method) or
    ``teacher`` (the distinct teachers of a pair)."""

    row: str
    key: CellKey
    selection: str
    by_value: dict[str, dict[Any, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    teachers: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    differences: list[PairedDifference] = field(default_factory=list)
    shared_teachers: bool = False
    """The factor does not change the teacher: the same teachers stand under every value."""

    @property
    def method(self) -> str:
        return "teacher" if self.row == "teacher" else self.key.method

    def values(self, value: str) -> list[float]:
        return [v for runs in self.by_value.get(value, {}).values() for v in runs]

    def stats(self, value: str) -> tuple[float, float, int] | None:
        values = self.values(value)
        return mean_std(values) if values else None

    def per_seed(self, value: str) -> dict[Any, float]:
        """One number per seed (the mean where a seed ran twice)."""
        return {seed: sum(v) / len(v) for seed, v in self.by_value.get(value, {}).items()}

    def difference(self, value: str) -> PairedDifference | None:
        return next((d for d in self.differences if d.value == value), None)

    def as_dict(self) -> dict[str, Any]:
        objectives = {}
        for value, seeds in self.by_value.items():
            stats = self.stats(value)
            objectives[value] = {
                "mean": stats[0], "std": stats[1], "n": stats[2],
                "seeds": list(seeds), "values": [v for runs in seeds.values() for v in runs],
            }
            if self.row == "teacher":
                objectives[value]["teachers"] = list(self.teachers.get(value, []))
        differences = [d.as_dict() for d in self.differences]
        return {
            "row": self.row, "method": self.method, "pair": self.key.pair, "condition": self.key.condition,
            "selection": self.selection, "objectives": objectives,
            "difference": differences[0] if len(differences) == 1 else None,
            "differences": differences, "shared_teachers": self.shared_teachers,
        }


@dataclass
class Reference:
    """Runs that cannot take a value of the factor (no teacher; or a loaded checkpoint when
    the factor is the teacher objective), shown beside the cells of the same student."""

    label: str
    student: str
    data: str
    selection: str
    student_key: str = ""
    by_seed: dict[Any, list[float]] = field(default_factory=lambda: defaultdict(list))

    def stats(self) -> tuple[float, float, int]:
        return mean_std([v for runs in self.by_seed.values() for v in runs])

    def as_dict(self) -> dict[str, Any]:
        mean, std, n = self.stats()
        return {"label": self.label, "student": self.student, "data": self.data, "selection": self.selection,
                "mean": mean, "std": std, "n": n, "seeds": list(self.by_seed)}


@dataclass
class Comparison:
    design: Design
    cells: list[Cell] = field(default_factory=list)
    references: list[Reference] = field(default_factory=list)

    @property
    def has_students(self) -> bool:
        return any(c.row == "student" for c in self.cells) or bool(self.references)

    def selections(self) -> list[str]:
        return [s for s in SELECTIONS if any(c.selection == s for c in self.cells)]

    def of(self, selection: str) -> list[Cell]:
        return [c for c in self.cells if c.selection == selection]

    def find(self, selection: str, method: str, pair: str | None = None, condition: str | None = None) -> Cell:
        for cell in self.of(selection):
            if cell.method == method and pair in (None, cell.key.pair) and condition in (None, cell.key.condition):
                return cell
        raise KeyError((selection, method, pair, condition))


def compare(results: list[RunResult], design: Design | None = None, teachers: TeacherIndex | None = None) -> Comparison:
    design = design or Design(results)
    teachers = teachers or TeacherIndex(results)
    table = Comparison(design)
    students = [r for r in results if r.recipe.get("student") is not None or "student" in r.summary]
    students = [r for r in students if "student" in r.summary]
    for selection in SELECTIONS:
        blocks: dict[BlockKey, dict[CellKey, Cell]] = {}
        teacher_rows: dict[BlockKey, Cell] = {}
        seen_teachers: dict[BlockKey, set[tuple[str, str]]] = defaultdict(set)
        references: dict[tuple[str, str, str], Reference] = {}
        for result in students:
            top1 = result.selected_metric("student", selection)
            if top1 is None:
                continue
            if design.is_reference(result):
                label = design.reference_label(result)
                student, data = design.student_side(result)
                reference = references.setdefault((label, student, data),
                                                  Reference(label, design.student_label(result), data, selection, student))
                reference.by_seed[run_seed(result)].append(top1)
                continue
            value = design.factor_value(result)
            block = design.block(result)
            cells = blocks.setdefault(block, {})
            key = design.cell(result)
            cell = cells.setdefault(key, Cell("student", key, selection))
            cell.by_value[value][run_seed(result)].append(top1)
            teacher = teachers.of(result)
            if teacher is None:
                continue
            row = teacher_rows.setdefault(block, Cell("teacher", CellKey(block.pair, "teacher", block.condition), selection,
                                                      shared_teachers=not design.teacher_factor))
            if (value, teacher.identity) in seen_teachers[block]:
                continue  # a teacher of several students counts once
            seen_teachers[block].add((value, teacher.identity))
            metric = teacher.selected_metric(selection)
            if metric is not None:
                seed = teacher.seed if teacher.seed is not None else f"teacher:{teacher.identity}"
                row.by_value[value][seed].append(metric)
                row.teachers[value].append(teacher.identity)
        for block, cells in blocks.items():
            ordered = ([teacher_rows[block]] if block in teacher_rows and teacher_rows[block].by_value else []) + list(cells.values())
            for cell in ordered:
                cell.by_value = _ordered(cell.by_value, design.values)
                if design.compares and not cell.shared_teachers and design.baseline in cell.by_value:
                    base = cell.per_seed(design.baseline)
                    cell.differences = [paired_difference(base, cell.per_seed(v), v, design.baseline)
                                        for v in design.others if v in cell.by_value]
                table.cells.append(cell)
        table.references += references.values()
    return table


def _ordered(by_value: dict, values: list[str]) -> dict:
    ordered = {v: by_value[v] for v in values if v in by_value}
    ordered.update({v: s for v, s in by_value.items() if v not in ordered})
    return ordered


# --- text ---------------------------------------------------------------------------------------

def cell_text(stats: tuple[float, float, int] | None) -> str:
    if stats is None:
        return "–"
    spread = f" ± {stats[1]:.2f}" if stats[1] is not None else ""
    return f"{stats[0]:.2f}{spread} (n={stats[2]})"


def difference_text(d: PairedDifference | None, bold: bool = True) -> str:
    if d is None or d.mean is None:
        return "–"
    text = f"{d.mean:+.2f}"
    ci = d.ci95
    return f"**{text}**" if bold and ci is not None and (ci[0] > 0 or ci[1] < 0) else text


def ci_text(d: PairedDifference | None) -> str:
    ci = d.ci95 if d is not None else None
    return "–" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def wtl_text(d: PairedDifference | None) -> str:
    return "–" if d is None or not d.n_pairs else f"{d.wins}/{d.ties}/{d.losses}"


def wilcoxon_text(d: PairedDifference | None) -> str:
    if d is None or not d.n_pairs:
        return "–"
    test = d.wilcoxon
    if test.p_value is None:
        return "– (all ties)"
    return f"{format_p(test.p_value)}{'' if test.method == 'exact' else ' (normal)'}"


def unpaired_text(d: PairedDifference | None) -> str:
    if d is None:
        return ""
    parts = [f"{value}: {', '.join(map(str, seeds))}" for value, seeds in d.unpaired.items() if seeds]
    return "; ".join(parts)


def markdown(table: Comparison) -> str:
    """One table per selection rule: a row per cell and compared value, with the paired
    difference to the baseline (bold where its 95% confidence interval excludes 0)."""
    design = table.design
    sections = []
    with_condition = any(c.key.condition for c in table.cells)
    for selection in table.selections():
        cells = table.of(selection)
        if design.compares:
            title = (f"\n## Paired comparison of {design.factor}: student top-1 (%), "
                     f"value − {design.baseline} by seed ({selection})\n")
        else:
            title = f"\n## Student top-1 (%) by method ({selection})\n"
        lines = [title]
        if design.compares:
            lines.append(
                f"Each value's runs are paired with the {design.baseline} runs of the same cell by seed; "
                f"difference: mean over pairs, 95% CI from the t distribution, p-values of the {PAIRED_T_TEST} "
                f"and the {WILCOXON} test (exact up to 25 pairs), wins/ties/losses of the value. Bold: the "
                "95% CI excludes 0. Teacher rows count each distinct teacher once (paired by the teacher's seed)"
                + ("; students learn from the teacher's selected weights whatever the selection rule here"
                   if selection != "last epoch" else "") + ".\n")
            header = ["row", "pair", *(["condition"] if with_condition else []), f"{design.baseline}", "value", "mean",
                      f"− {design.baseline}", "95% CI", "t-test p", "Wilcoxon p", "W/T/L", "pairs", "unpaired seeds"]
        else:
            header = ["row", "pair", *(["condition"] if with_condition else []), "value", "mean"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for cell in cells:
            stem = [cell.method, cell.key.pair, *([cell.key.condition or "–"] if with_condition else [])]
            if design.compares and not cell.shared_teachers:
                base = cell_text(cell.stats(design.baseline))
                for value in design.others:
                    if value not in cell.by_value and design.baseline not in cell.by_value:
                        continue
                    d = cell.difference(value)
                    lines.append("| " + " | ".join([
                        *stem, base, value, cell_text(cell.stats(value)), difference_text(d), ci_text(d),
                        format_p(d.p_value if d else None), wilcoxon_text(d), wtl_text(d),
                        str(d.n_pairs if d else 0), unpaired_text(d) or "–"]) + " |")
            else:
                for value in cell.by_value:
                    text = cell_text(cell.stats(value))
                    if design.compares:
                        lines.append("| " + " | ".join([*stem, "–", value, text, "–", "–", "–", "–", "–", "–",
                                                        "same teachers for every value"]) + " |")
                    else:
                        lines.append("| " + " | ".join([*stem, value, text]) + " |")
        references = [r for r in table.references if r.selection == selection]
        if references:
            lines += ["", "Reference runs (they take no value of the compared field):", "",
                      "| reference | student | data | top-1 (%) |", "|---|---|---|---|"]
            for reference in references:
                lines.append(f"| {reference.label} | {reference.student} | {reference.data or '–'} | "
                             f"{cell_text(reference.stats())} |")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def write_csv(table: Comparison, path: Path) -> None:
    design = table.design
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["selection", "row", "method", "pair", "condition", "value", "mean", "std", "n", "baseline",
                         "difference", "ci95_low", "ci95_high", "p_t_test", "p_wilcoxon", "wins", "ties", "losses",
                         "n_pairs"])
        for cell in table.cells:
            for value in cell.by_value:
                mean, std, n = cell.stats(value)
                d = cell.difference(value)
                ci = d.ci95 if d else None
                numbers = ["" if x is None else x for x in (
                    d.mean if d else None, ci[0] if ci else None, ci[1] if ci else None,
                    d.p_value if d else None, d.wilcoxon.p_value if d else None,
                    d.wins if d else None, d.ties if d else None, d.losses if d else None, d.n_pairs if d else None)]
                writer.writerow([cell.selection, cell.row, cell.method, cell.key.pair, cell.key.condition, value,
                                 mean, std, n, design.baseline if value != design.baseline else "", *numbers])
        for reference in table.references:
            mean, std, n = reference.stats()
            writer.writerow([reference.selection, "reference", reference.label, reference.student, reference.data, "",
                             mean, std, n, *[""] * 10])
