"""PNG plots of finished runs (matplotlib, headless)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from kdcore.results import comparison
from kdcore.results.collect import RunResult, recipe_fields
from kdcore.runs.layout import METRICS, MODEL_SELECTION


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, figure, axis, path: Path, xlabel: str, ylabel: str) -> list[Path]:
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [path]


def _colours(plt, count: int) -> list[str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(count)]


def bcpd_scatter(path: Path, results: list[RunResult]) -> Path:
    """Student test accuracy against the MSE and CE to p* of what it learnt from (a teacher, or
    a teacher-free distiller's targets) on the training set: the paper's Fig. 1. Teacher-free
    runs are grey, teachers coloured by objective."""
    plt = _pyplot()
    sources = sorted({r.source for r in results}, key=lambda s: (s.endswith("teacher"), s))
    colours = dict(zip(sources, _colours(plt, len(sources))))
    colours.update({s: "0.6" for s in sources if not s.endswith("teacher")})
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, (name, label) in zip(axes, [("mse_to_true", "MSE(estimate, p*)"), ("ce_to_true", "CE(p*, estimate)")]):
        for source in sources:
            points = [(r.estimate_distance(name), r.metric("student", "test", "top1")) for r in results if r.source == source]
            axis.scatter([p[0] for p in points], [p[1] for p in points], label=source, color=colours[source], s=20)
        axis.set_xlabel(f"{label} on the training set")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("student test top-1 (%)")
    axes[0].legend()
    figure.suptitle("Student accuracy against the distance of what it learnt from to the Bayes probabilities")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def objective_differences(path: Path, table: comparison.Comparison) -> list[Path]:
    """Bars of (student top-1 with this teacher objective) − (with a CE teacher), per method and
    pair, last-epoch weights. Nothing is drawn without a CE baseline and another objective."""
    baseline = comparison.BASELINE_OBJECTIVE
    others = [o for o in table.objectives if o != baseline]
    if baseline not in table.objectives or not others:
        return []
    plt = _pyplot()
    columns = [(pair, objective) for pair in table.pairs for objective in others]
    width = 0.8 / len(columns)
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(table.methods) * len(columns)), 4))
    for position, ((pair, objective), colour) in enumerate(zip(columns, _colours(plt, len(columns)))):
        deltas = [table.difference("last epoch", m, pair, objective) for m in table.methods]
        xs = [i + position * width for i in range(len(table.methods))]
        axis.bar(xs, [d or 0.0 for d in deltas], width, label=f"{pair} ({objective})", color=colour)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks([i + width * (len(columns) - 1) / 2 for i in range(len(table.methods))], table.methods)
    return _finish(plt, figure, axis, path, "method", f"student top-1 difference to {baseline} teacher (points)")


def learning_curves(path: Path, results: list[RunResult]) -> list[Path]:
    """Student held-out top-1 per epoch, mean over the seeds of each group."""
    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        log = result.directory / "student" / METRICS
        if not log.exists():
            continue
        for line in log.read_text().splitlines():
            record = json.loads(line)
            key = MODEL_SELECTION if MODEL_SELECTION in record else "test/top1"
            if key in record:
                curves[result.group][record["epoch"]].append(record[key])
    if not curves:
        return []
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for (group, by_epoch), colour in zip(sorted(curves.items()), _colours(plt, len(curves))):
        epochs = sorted(by_epoch)
        axis.plot(epochs, [statistics.fmean(by_epoch[e]) for e in epochs], label=group, color=colour)
    return _finish(plt, figure, axis, path, "epoch", "student held-out top-1 (%)")


def accuracy_curve(path: Path, results: list[RunResult], field: str) -> list[Path]:
    """Student test top-1 (mean ± std over seeds) against a numeric recipe field that varies
    between runs, one line per teacher objective and method: the paper's Fig. 2 when the
    field is the number of labelled images."""
    lines: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        top1 = result.metric("student", "test", "top1")
        if top1 is not None:
            label = f"{result.objective} teacher, {result.method}"
            lines[label][recipe_fields(result.recipe)[field]].append(top1)
    if not lines:
        return []
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for (label, by_x), colour in zip(sorted(lines.items()), _colours(plt, len(lines))):
        xs = sorted(by_x)
        means = [statistics.fmean(by_x[x]) for x in xs]
        spreads = [statistics.stdev(by_x[x]) if len(by_x[x]) > 1 else 0.0 for x in xs]
        axis.errorbar(xs, means, yerr=spreads, label=label, color=colour, marker="o", capsize=3)
    return _finish(plt, figure, axis, path, field, "student test top-1 (%)")
