"""The paper's table shape: rows are distillation methods, columns are teacher–student pairs ×
teacher objective, cells are student top-1 (mean ± std over seeds), with a teacher row and the
difference of each objective to cross-entropy. Reported for the last epoch's weights and, where
a validation split chose them, for the best-on-validation weights (never best-on-test)."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from kdcore.results.collect import RunResult

BASELINE_OBJECTIVE = "ce"
SELECTIONS = {"last epoch": ("test",), "best on validation": ("best_val", "test")}


@dataclass
class Comparison:
    pairs: list[str] = field(default_factory=list)
    objectives: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    # (selection, method or "teacher", pair, objective) -> values over seeds
    cells: dict[tuple[str, str, str, str], list[float]] = field(default_factory=lambda: defaultdict(list))

    @property
    def has_students(self) -> bool:
        return bool(self.methods)

    def stats(self, selection: str, row: str, pair: str, objective: str) -> tuple[float, float, int] | None:
        values = self.cells.get((selection, row, pair, objective))
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)

    def difference(self, selection: str, row: str, pair: str, objective: str) -> float | None:
        mine, baseline = (self.stats(selection, row, pair, o) for o in (objective, BASELINE_OBJECTIVE))
        return None if mine is None or baseline is None else mine[0] - baseline[0]

    def selections(self) -> list[str]:
        return [s for s in SELECTIONS if any(key[0] == s for key in self.cells)]


def compare(results: list[RunResult]) -> Comparison:
    table = Comparison()
    for result in results:
        if not result.recipe.get("student") or "student" not in result.summary:
            continue
        pair, objective, method = result.pair, result.objective, result.method
        for collection, value in ((table.pairs, pair), (table.objectives, objective), (table.methods, method)):
            if value not in collection:
                collection.append(value)
        for selection, path in SELECTIONS.items():
            for row, stage in (("teacher", "teacher"), (method, "student")):
                metrics = result.summary.get(stage, {})
                for key in path:
                    metrics = metrics.get(key, {}) if isinstance(metrics, dict) else {}
                if "top1" in metrics:
                    table.cells[(selection, row, pair, objective)].append(metrics["top1"])
    table.objectives.sort(key=lambda o: (o != BASELINE_OBJECTIVE, o))
    return table


def markdown(table: Comparison) -> str:
    """One table per selection rule; the difference to the CE teacher's student in bold where
    positive."""
    sections = []
    others = [o for o in table.objectives if o != BASELINE_OBJECTIVE]
    for selection in table.selections():
        header = ["method"]
        for pair in table.pairs:
            header += [f"{pair} {o}" for o in table.objectives]
            if BASELINE_OBJECTIVE in table.objectives:
                header += [f"{pair} {o}−{BASELINE_OBJECTIVE}" for o in others]
        lines = [
            f"\n## Student top-1 (%) by method and teacher objective ({selection})\n",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for row in ["teacher", *table.methods]:
            cells = [row]
            for pair in table.pairs:
                for objective in table.objectives:
                    stats = table.stats(selection, row, pair, objective)
                    cells.append("–" if stats is None else f"{stats[0]:.2f} ± {stats[1]:.2f} (n={stats[2]})")
                if BASELINE_OBJECTIVE in table.objectives:
                    for objective in others:
                        delta = table.difference(selection, row, pair, objective)
                        cells.append("–" if delta is None else (f"**{delta:+.2f}**" if delta > 0 else f"{delta:+.2f}"))
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def write_csv(table: Comparison, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["selection", "row", "pair", "objective", "mean", "std", "n", f"minus_{BASELINE_OBJECTIVE}"])
        for selection in table.selections():
            for row in ["teacher", *table.methods]:
                for pair in table.pairs:
                    for objective in table.objectives:
                        stats = table.stats(selection, row, pair, objective)
                        if stats is not None:
                            delta = table.difference(selection, row, pair, objective)
                            writer.writerow([selection, row, pair, objective, *stats, "" if delta is None else delta])
