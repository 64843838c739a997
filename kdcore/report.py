"""Aggregates finished runs: mean ± std over seeds per group of matrix values, as Markdown and
CSV, with the teacher-objective comparison and plots (:mod:`kdcore.comparison`,
:mod:`kdcore.plots`)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdcore import comparison, plots
from kdcore.errors import KdcoreError
from kdcore.recipe_loader import variant_id
from kdcore.runner import SUMMARY

COLUMNS = [
    ("teacher", "test", "top1", "teacher top-1 (%)"),
    ("student", "test", "top1", "student top-1 (%)"),
    ("teacher", "train", "mse_to_true", "teacher MSE to p* (train)"),
    ("teacher", "train", "ce_to_true", "teacher CE to p* (train)"),
    ("teacher", "test", "mse_to_true", "teacher MSE to p* (test)"),
    ("teacher", "test", "ce_to_true", "teacher CE to p* (test)"),
    ("student", "test", "mse_to_true", "student MSE to p* (test)"),
    ("teacher", "test", "brier", "teacher Brier (test)"),
    ("teacher", "test", "nll", "teacher NLL (test)"),
    ("teacher", "test", "ece", "teacher ECE (test)"),
]


@dataclass(frozen=True)
class RunResult:
    """A finished run: its directory, resolved recipe (with the matrix ``overrides`` that made
    it) and summary."""

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

    def metric(self, stage: str, split: str, name: str) -> float | None:
        return self.summary.get(stage, {}).get(split, {}).get(name)

    def estimate_distance(self, name: str) -> float | None:
        """Distance (``mse_to_true`` or ``ce_to_true``) to p* of what the student learnt from:
        the teacher on the training set, or, without a teacher, a distiller's own targets."""
        if "teacher" in self.summary:
            return self.metric("teacher", "train", name)
        return next((numbers[name] for numbers in self.summary.get("distillers", {}).values() if name in numbers), None)

    @property
    def source(self) -> str:
        """What taught the student, for plot legends: the teacher's objective, else the method."""
        if "teacher" in self.summary:
            return f"{comparison.objective_of(self.recipe)} teacher"
        return comparison.method_of(self.recipe)


def collect(directories: list[Path]) -> list[RunResult]:
    """Finished runs in the given run directories (a single run, or a matrix's runs)."""
    results = []
    for directory in directories:
        if not directory.is_dir():
            raise KdcoreError(f"{directory}: no such run directory")
        candidates = [directory] if (directory / SUMMARY).exists() else sorted(directory.iterdir())
        for candidate in candidates:
            if (candidate / SUMMARY).exists():
                recipe_file = candidate / "recipe.yaml"
                recipe = yaml.safe_load(recipe_file.read_text()) if recipe_file.exists() else {}
                summary = json.loads((candidate / SUMMARY).read_text())
                results.append(RunResult(candidate, recipe or {}, summary))
    if not results:
        raise KdcoreError(f"no finished runs (with {SUMMARY}) in {', '.join(map(str, directories))}")
    return results


def aggregate(results: list[RunResult]) -> tuple[list[str], list[dict[str, Any]]]:
    """Column labels and one row per group: runs, then (mean, std) per column present."""
    columns = [c for c in COLUMNS if any(r.metric(*c[:3]) is not None for r in results)]
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for result in results:
        groups[result.group].append(result)
    rows = []
    for group, members in groups.items():
        row: dict[str, Any] = {"group": group, "runs": len(members)}
        for stage, split, name, label in columns:
            values = [v for r in members if (v := r.metric(stage, split, name)) is not None]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                row[label] = (statistics.fmean(values), std)
        rows.append(row)
    return [c[3] for c in columns], rows


def markdown_table(labels: list[str], rows: list[dict[str, Any]]) -> str:
    header = "| group | runs | " + " | ".join(labels) + " |"
    rule = "|" + "---|" * (len(labels) + 2)
    lines = [header, rule]
    for row in rows:
        cells = [format_cell(row.get(label)) for label in labels]
        lines.append(f"| {row['group']} | {row['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_cell(cell: tuple[float, float] | None) -> str:
    if cell is None:
        return "–"
    mean, std = cell
    digits = 2 if abs(mean) >= 1 else 4
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_report(directory: Path, results: list[RunResult]) -> list[Path]:
    """Write report.md and report.csv (per group of matrix values), the teacher ranking, the
    teacher-objective comparison (comparison.csv) and the plots that the runs support. Returns
    the paths."""
    labels, rows = aggregate(results)
    _write_group_csv(directory / "report.csv", labels, rows)
    written = [directory / "report.md", directory / "report.csv"]
    sections = [
        f"# Report: {len(results)} runs in {directory}\n\nMean ± std (sample) over seeds.\n\n",
        markdown_table(labels, rows),
        teacher_ranking(results),
    ]
    table = comparison.compare(results)
    if table.has_students:
        sections.append(comparison.markdown(table))
        comparison.write_csv(table, directory / "comparison.csv")
        written.append(directory / "comparison.csv")
        written += plots.objective_differences(directory / "objective_difference.png", table)
        written += plots.learning_curves(directory / "learning_curves.png", results)
        field = varying_numeric_field(results)
        if field is not None:
            written += plots.accuracy_curve(directory / "accuracy_curve.png", results, field)
    bcpd = [r for r in results if r.estimate_distance("mse_to_true") is not None and r.metric("student", "test", "top1") is not None]
    if bcpd:
        written.append(plots.bcpd_scatter(directory / "bcpd_scatter.png", bcpd))
        sections.append(rank_correlations(bcpd))
    (directory / "report.md").write_text("\n".join(sections))
    return written


def _write_group_csv(path: Path, labels: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "runs", *[f"{label} {part}" for label in labels for part in ("mean", "std")]])
        for row in rows:
            writer.writerow([row["group"], row["runs"], *[x for label in labels for x in row.get(label, ("", ""))]])


def teacher_ranking(results: list[RunResult]) -> str:
    """Each distinct teacher once (a shared teacher serves many runs), ranked by its held-out
    Brier score, which orders teachers as their MSE to p* does even where p* is unknown."""
    seen: dict[Path, RunResult] = {}
    for result in results:
        if result.metric("teacher", "test", "brier") is not None:
            seen.setdefault((result.directory / "teacher").resolve(), result)
    if not seen:
        return ""
    split = "val" if all(r.metric("teacher", "val", "brier") is not None for r in seen.values()) else "test"
    rows = sorted(seen.values(), key=lambda r: r.metric("teacher", split, "brier"))
    lines = [f"\n## Teachers ranked by Brier score ({split} split; lower is closer to p*)\n",
             "| teacher | objective | seed | top-1 (%) | Brier | NLL | ECE |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r.summary["teacher"][split]
        arch = r.recipe["teacher"]["arch"]["name"]
        lines.append(f"| {arch} | {comparison.objective_of(r.recipe)} | {r.recipe.get('seed', '')} | {m['top1']:.2f} | "
                     f"{m['brier']:.4f} | {m['nll']:.4f} | {m['ece']:.4f} |")
    return "\n".join(lines) + "\n"


def varying_numeric_field(results: list[RunResult]) -> str | None:
    """The one numeric recipe field, other than the seed, whose value differs between runs
    (e.g. the number of labels in a semi-supervised study), or ``None``."""
    flat = [comparison.recipe_fields(r.recipe) for r in results]
    keys = set().union(*flat)
    varying = [k for k in keys if k.split(".")[-1] != "seed" and len({repr(f.get(k)) for f in flat}) > 1]
    numeric = [k for k in varying if all(isinstance(f.get(k), (int, float)) and not isinstance(f.get(k), bool) for f in flat)]
    return numeric[0] if len(numeric) == 1 else None


def rank_correlations(results: list[RunResult]) -> str:
    """Spearman's rank correlation of student accuracy with each distance of its targets to p*."""
    accuracy = [r.metric("student", "test", "top1") for r in results]
    lines = ["\n## Student accuracy against the distance of its targets to p*\n",
             f"Spearman rank correlation over {len(results)} runs (−1: farther from p* always means a worse student).\n"]
    for name, label in (("mse_to_true", "squared error (MSE)"), ("ce_to_true", "cross-entropy (CE)")):
        distance = [r.estimate_distance(name) for r in results]
        lines.append(f"- {label}: {spearman(distance, accuracy):+.3f}")
    return "\n".join(lines) + "\n"


def spearman(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation of the ranks (ties get their average rank)."""
    if len(xs) < 2:
        return float("nan")
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    covariance = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    spread = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return covariance / spread if spread else float("nan")


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks
