"""The report of finished runs: ``report.md``, ``report.csv`` (mean ± std over seeds per group
of matrix values), ``comparison.csv``, ``report.json`` (everything, machine-readable), and the
plots the runs support.

``report.json`` (``"schema": "kdcore-report/1"``)::

    directory, runs, run_directories
    compare:    {field, baseline, values (baseline first), baseline_from ("matrix order",
                 "--baseline" or "order found"), compares}
    selections: ["last epoch", "best on validation"] (those the runs have)
    groups:     [{label, runs, teachers (distinct), metrics: {column: {mean, std, n}}}]
    cells:      [{row ("teacher" | "student"), method ("teacher" for a teacher row), pair,
                  condition, selection,
                  objectives: {value: {mean, std, n, seeds, values[, teachers]}},
                  difference: {value, baseline, mean, std, ci95 [low, high], t, df, p_value,
                               test ("paired t-test"), wilcoxon_p, wilcoxon_statistic,
                               wilcoxon_method ("exact" | "normal approximation" | "none"),
                               wins, ties, losses, n_pairs, seeds, differences,
                               unpaired {value: [seeds]}} or null (no baseline, or more than
                               one other value: see differences),
                  differences: [one such object per value other than the baseline],
                  shared_teachers}]
    references: [{label, student, data, selection, mean, std, n, seeds}]   runs without a teacher
    teachers:   [{id, kind ("store" | "run" | "checkpoint"), label, path, arch, objective, seed,
                  provenance, students, student_runs, student_mean_top1, metrics {split: {...}},
                  best_val}]   one entry per distinct teacher
    teacher_ranking: {split, order: [teacher ids, lowest Brier first]}
    teacher_lab: {split, teachers, correlations: [{metric, label, split, students ("all" or a
                  method), rho, p_value, n_teachers, good_sign}],
                  recipes: [{selection, value, students, mean, std, teachers,
                             teacher_mean_top1, difference (as above, or null for the baseline)}]}
    bcpd:       {runs, spearman: {mse_to_true, ce_to_true}} or null
    files:      the files written

Numbers that do not exist (a std of one value, a p-value of one pair) are null.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcore.results import comparison, plots
from kdcore.results.collect import RunResult, TeacherIndex, unfinished_runs
from kdcore.results.design import Design
from kdcore.results.statistics import spearman
from kdcore.results.tables import (
    aggregate,
    curve_field,
    markdown_table,
    rank_correlations,
    ranked_teachers,
    teacher_lab,
    teacher_lab_markdown,
    teacher_ranking,
    write_group_csv,
)
from kdcore.runs.layout import finite

SCHEMA = "kdcore-report/1"
REPORT_JSON = "report.json"


@dataclass
class Report:
    """What was written, and the parts the terminal summary shows."""

    directory: Path
    results: list[RunResult]
    design: Design
    teachers: TeacherIndex
    labels: list[str]
    rows: list[dict[str, Any]]
    table: comparison.Comparison
    data: dict[str, Any]
    written: list[Path] = field(default_factory=list)


def write_report(directory: Path, results: list[RunResult], compare: str | None = None,
                 baseline: str | None = None, curve: str | None = None) -> list[Path]:
    """Write the report files; returns their paths."""
    return build_report(directory, results, compare, baseline, curve).written


def build_report(directory: Path, results: list[RunResult], compare: str | None = None,
                 baseline: str | None = None, curve: str | None = None) -> Report:
    field = curve_field(results, curve)
    if curve is not None and field is None:
        from kdcore.errors import KdcoreError

        raise KdcoreError(f"--curve {curve}: no such recipe field in these runs")
    teachers = TeacherIndex(results)
    design = Design(results, compare, baseline, curve=field, teachers=teachers)
    labels, rows = aggregate(results, design, teachers)
    write_group_csv(directory / "report.csv", labels, rows)
    written = [directory / "report.md", directory / "report.csv"]
    compared = (f"Compared field: `{design.factor}`, baseline `{design.baseline}` ({design.baseline_source}); "
                f"values {', '.join(design.values)}.\n\n" if design.compares else "")
    missing = unfinished_runs(results)
    incomplete = (f"**Incomplete sweep: {len(missing)} run{'s' if len(missing) > 1 else ''} not finished** "
                  f"({', '.join(f'`{m.name}`' for m in missing)}); every table below covers the finished runs "
                  "only.\n\n" if missing else "")
    sections = [
        f"# Report: {len(results)} runs in {directory}\n\n{incomplete}"
        f"Mean ± std (sample) over seeds; teacher columns over the {len(teachers.teachers)} distinct teachers "
        f"(a teacher shared by several students counts once). {compared}",
        markdown_table(labels, rows),
    ]
    table = comparison.compare(results, design, teachers)
    lab: dict[str, Any] = {"split": None, "teachers": 0, "correlations": [], "recipes": []}
    if table.has_students:
        sections.append(comparison.markdown(table))
        comparison.write_csv(table, directory / "comparison.csv")
        written.append(directory / "comparison.csv")
        lab = teacher_lab(teachers, design, table)
    sections.append(teacher_ranking(results, teachers))
    if table.has_students:
        sections.append(teacher_lab_markdown(lab, design))
        written += plots.objective_differences(directory / "objective_difference.png", table)
        written += plots.learning_curves(directory / "learning_curves.png", results, design, teachers)
        if field is not None:
            written += plots.accuracy_curve(directory / "accuracy_curve.png", results, field, design)
    bcpd = [r for r in results if r.estimate_distance("mse_to_true") is not None and r.metric("student", "test", "top1") is not None]
    bcpd_data = None
    if bcpd:
        written.append(plots.bcpd_scatter(directory / "bcpd_scatter.png", bcpd))
        sections.append(rank_correlations(bcpd))
        accuracy = [r.metric("student", "test", "top1") for r in bcpd]
        bcpd_data = {"runs": len(bcpd), "spearman": {
            name: spearman([r.estimate_distance(name) for r in bcpd], accuracy) for name in ("mse_to_true", "ce_to_true")}}
    (directory / "report.md").write_text("\n".join(s for s in sections if s))
    written.append(directory / REPORT_JSON)
    split, ranked = ranked_teachers(teachers)
    data = {
        "schema": SCHEMA,
        "directory": str(directory),
        "runs": len(results),
        "run_directories": [str(r.directory) for r in results],
        "compare": design.describe(),
        "selections": table.selections(),
        "groups": [{"label": row["group"], "runs": row["runs"], "teachers": row["teachers"],
                    "metrics": {label: {"mean": row[label][0], "std": row[label][1], "n": row[label][2]}
                                for label in labels if label in row}} for row in rows],
        "cells": [cell.as_dict() for cell in table.cells],
        "references": [reference.as_dict() for reference in table.references],
        "teachers": [t.as_dict() for t in teachers.teachers],
        "teacher_ranking": {"split": split, "order": [t.identity for t in ranked]},
        "teacher_lab": {**lab, "recipes": [
            {**{k: v for k, v in r.items() if k != "difference"},
             "difference": r["difference"].as_dict() if r.get("difference") is not None else None}
            for r in lab["recipes"]]},
        "bcpd": bcpd_data,
        "files": [str(p) for p in written],
    }
    (directory / REPORT_JSON).write_text(json.dumps(finite(data), indent=1, default=str) + "\n")
    return Report(directory, results, design, teachers, labels, rows, table, data, written)
