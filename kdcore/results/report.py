"""The report of finished runs: ``report.md`` and ``report.csv`` (mean ± std over seeds per
group of matrix values), the teacher ranking, the teacher-objective comparison and the plots
the runs support."""

from __future__ import annotations

from pathlib import Path

from kdcore.results import comparison, plots
from kdcore.results.collect import RunResult
from kdcore.results.tables import (
    aggregate,
    markdown_table,
    rank_correlations,
    teacher_ranking,
    varying_numeric_field,
    write_group_csv,
)


def write_report(directory: Path, results: list[RunResult]) -> list[Path]:
    """Write report.md and report.csv (per group of matrix values), the teacher ranking, the
    teacher-objective comparison (comparison.csv) and the plots that the runs support. Returns
    the paths."""
    labels, rows = aggregate(results)
    write_group_csv(directory / "report.csv", labels, rows)
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


