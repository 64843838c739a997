"""Tables of finished runs: mean ± std over seeds per group of matrix values, the distinct
teachers ranked by held-out Brier score, and rank correlations with the distance to p*."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from kdcore.results.collect import RunResult, recipe_fields
from kdcore.results.statistics import spearman

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


def write_group_csv(path: Path, labels: list[str], rows: list[dict[str, Any]]) -> None:
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
        lines.append(f"| {arch} | {r.objective} | {r.recipe.get('seed', '')} | {m['top1']:.2f} | "
                     f"{m['brier']:.4f} | {m['nll']:.4f} | {m['ece']:.4f} |")
    return "\n".join(lines) + "\n"


def varying_numeric_field(results: list[RunResult]) -> str | None:
    """The one numeric recipe field, other than the seed, whose value differs between runs
    (e.g. the number of labels in a semi-supervised study), or ``None``."""
    flat = [recipe_fields(r.recipe) for r in results]
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


