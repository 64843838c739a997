"""PNG plots of finished runs (matplotlib, headless). Every number drawn is one the report's
tables give: differences with their 95% confidence intervals and the per-seed differences as
points, learning curves with a band over seeds and the split they were measured on, curves
over a field only where the user names it or it is a field of the data (a label budget)."""

from __future__ import annotations

import json
import statistics
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from kdcore.results.collect import RunResult, TeacherIndex, recipe_fields
from kdcore.results.comparison import Comparison
from kdcore.results.design import Design
from kdcore.results.statistics import format_p, spearman
from kdcore.runs.layout import METRICS

SPLIT_NAMES = {"val": "validation", "test": "test"}
MAX_PANELS = 12


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(plt, count: int) -> list[str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(count)]


def _save(plt, figure, path: Path) -> list[Path]:
    with warnings.catch_warnings():  # crowded figures: bbox_inches="tight" still keeps every label
        warnings.simplefilter("ignore")
        figure.tight_layout()
        figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return [path]


def _wrap(text: str, width: int = 22) -> str:
    """Break a long label at its separators for a tick label."""
    lines, line = [], ""
    for part in text.replace("→", "→\u200b").replace("+", "+\u200b").replace(" ", " \u200b").split("\u200b"):
        if line and len(line) + len(part) > width:
            lines.append(line.rstrip())
            line = ""
        line += part
    lines.append(line.rstrip())
    return "\n".join(lines)


# --- BCPD ----------------------------------------------------------------------------------------

def bcpd_scatter(path: Path, results: list[RunResult]) -> Path:
    """Student test accuracy against the MSE and CE to p* of what it learnt from (a teacher, or
    a teacher-free distiller's targets) on the training set: the paper's Fig. 1, with
    Spearman's ρ in the legend (over all points of the panel, and per source). Teacher-free runs
    are grey, teachers coloured by objective."""
    plt = _pyplot()
    sources = sorted({r.source for r in results}, key=lambda s: (s.endswith("teacher"), s))
    colours = dict(zip(sources, _colours(plt, len(sources))))
    colours.update({s: "0.6" for s in sources if not s.endswith("teacher")})
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axis, (name, label) in zip(axes, [("mse_to_true", "MSE(estimate, p*)"), ("ce_to_true", "CE(p*, estimate)")]):
        everything = [(r.estimate_distance(name), r.metric("student", "test", "top1")) for r in results]
        everything = [p for p in everything if p[0] is not None and p[1] is not None]
        for source in sources:
            points = [(r.estimate_distance(name), r.metric("student", "test", "top1")) for r in results if r.source == source]
            points = [p for p in points if p[0] is not None and p[1] is not None]
            rho = spearman([p[0] for p in points], [p[1] for p in points])
            text = f"{source} (n={len(points)}" + (f", ρ={rho:+.2f})" if len(points) > 2 and rho == rho else ")")
            axis.scatter([p[0] for p in points], [p[1] for p in points], label=text, color=colours[source], s=20)
        rho = spearman([p[0] for p in everything], [p[1] for p in everything])
        axis.plot([], [], " ", label=f"Spearman ρ, all {len(everything)} students: {rho:+.3f}")
        axis.set_xlabel(f"{label} on the training set")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=9, loc="best")
    axes[0].set_ylabel("student test top-1 (%)")
    figure.suptitle("Student accuracy against the distance of what it learnt from to the Bayes probabilities p*")
    _save(plt, figure, path)
    return path


# --- paired differences --------------------------------------------------------------------------

def objective_differences(path: Path, table: Comparison) -> list[Path]:
    """Per selection rule, a bar per cell and value: the mean paired difference to the
    baseline, its 95% confidence interval as error bar, each seed's difference as a point, and
    the paired t-test's p above. Nothing is drawn without a baseline and another value."""
    design = table.design
    if not design.compares:
        return []
    selections = [s for s in table.selections() if any(c.differences for c in table.of(s))]
    if not selections:
        return []
    plt = _pyplot()
    bars_per_panel = max(sum(1 for c in table.of(s) for d in c.differences if d.n_pairs) for s in selections)
    figure, axes = plt.subplots(1, len(selections), figsize=(max(6, 1.3 * bars_per_panel + 2) * len(selections), 5),
                                squeeze=False, sharey=True)
    colours = dict(zip(design.others, _colours(plt, len(design.others))))
    pairs = {c.key.pair for c in table.cells}
    conditions = {c.key.condition for c in table.cells}
    extremes: list[float] = [0.0]
    for axis, selection in zip(axes[0], selections):
        labels, x = [], 0
        for cell in table.of(selection):
            for d in cell.differences:
                if not d.n_pairs:
                    continue
                colour = "0.55" if cell.row == "teacher" else colours[d.value]
                ci = d.ci95
                error = [[d.mean - ci[0]], [ci[1] - d.mean]] if ci else None
                axis.bar(x, d.mean, 0.6, color=colour, alpha=0.75, yerr=error, capsize=6,
                         error_kw={"elinewidth": 1.2, "ecolor": "black"})
                offsets = [(i - (d.n_pairs - 1) / 2) * min(0.4 / max(d.n_pairs - 1, 1), 0.08) for i in range(d.n_pairs)]
                axis.scatter([x + o for o in offsets], d.differences, color="black", s=12, zorder=3)
                top = max([*d.differences, ci[1] if ci else d.mean])
                extremes += [top, min([*d.differences, ci[0] if ci else d.mean])]
                axis.annotate(f"t-test p={format_p(d.p_value)}\nW/T/L {d.wins}/{d.ties}/{d.losses}", (x, top), xytext=(0, 4),
                              textcoords="offset points", ha="center", va="bottom", fontsize=8)
                parts = ["teacher" if cell.row == "teacher" else cell.key.method]
                if len(pairs) > 1:
                    parts.append(cell.key.pair)
                if len(conditions) > 1 and cell.key.condition:
                    parts.append(cell.key.condition)
                if len(design.others) > 1:
                    parts.append(f"({d.value})")
                labels.append(_wrap(" ".join(parts)))
                x += 1
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_xticks(range(len(labels)), labels, fontsize=9)
        axis.set_title(f"{selection} (n pairs = seeds)", fontsize=11)
        axis.grid(axis="y", alpha=0.3)
    span = max(extremes) - min(extremes) or 1.0
    axes[0][0].set_ylim(min(extremes) - 0.05 * span, max(extremes) + 0.22 * span)  # room for the p-values
    others = " / ".join(design.others)
    axes[0][0].set_ylabel(f"top-1 difference, {others} − {design.baseline} (points)")
    figure.suptitle(f"Paired difference by seed: {design.factor} = {others} against {design.baseline}; "
                    "bars: mean, error bars: 95% CI, dots: seeds; grey: the teachers", fontsize=10)
    return _save(plt, figure, path)


# --- learning curves -----------------------------------------------------------------------------

def _records(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    return records


def _held_out(records: list[dict]) -> str | None:
    """The split the curve is measured on: validation where the run has one, else test."""
    for split in ("val", "test"):
        if any(f"{split}/top1" in r for r in records):
            return split
    return None


def learning_curves(path: Path, results: list[RunResult], design: Design | None = None,
                    teachers: TeacherIndex | None = None) -> list[Path]:
    """Held-out top-1 per epoch: a panel per cell (the students of each value of the compared
    field, mean with a band of ± 1 std over seeds; runs without a teacher dashed grey) and a
    panel per teacher–student pair with its distinct teachers' curves. The y-axis fits the
    second half of the epochs (and the best epoch), where the curves are compared; the first
    epochs may run below it (said in the title)."""
    design = design or Design(results)
    teachers = teachers or TeacherIndex(results)
    panels: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    splits: set[str] = set()
    student_of_panel: dict[str, str] = {}
    for result in results:
        records = _records(result.directory / "student" / METRICS)
        split = _held_out(records)
        if split is None:
            continue
        splits.add(split)
        if design.is_reference(result):
            continue
        key = design.cell(result)
        title = key.label
        student_of_panel[title] = design.student_side(result)[0]
        for record in records:
            if f"{split}/top1" in record:
                panels[title][design.factor_value(result)][record["epoch"]].append(record[f"{split}/top1"])
    references: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for result in results:
        if not design.is_reference(result):
            continue
        records = _records(result.directory / "student" / METRICS)
        split = _held_out(records)
        if split is None:
            continue
        label = design.reference_label(result)
        for record in records:
            if f"{split}/top1" in record:
                references[design.student_side(result)[0]][label][record["epoch"]].append(record[f"{split}/top1"])
    teacher_panels: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for teacher in teachers.teachers:
        records = _records(teacher.metrics_file)
        split = _held_out(records)
        if split is None:
            continue
        splits.add(split)
        block = design.block(teacher.first)
        title = f"teachers {block.pair}" + (f" {block.condition}" if block.condition else "")
        value = design.factor_value(teacher.first) if design.teacher_factor else (teacher.objective or "teacher")
        for record in records:
            if f"{split}/top1" in record:
                teacher_panels[title][value][record["epoch"]].append(record[f"{split}/top1"])
    if not panels and not teacher_panels:
        return []
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    titles = (list(panels) + list(teacher_panels))[:MAX_PANELS]
    columns = min(3, len(titles))
    rows = (len(titles) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    values = list(dict.fromkeys([*design.values, *(v for p in teacher_panels.values() for v in p)]))
    colours = dict(zip(values, _colours(plt, len(values))))
    split_name = " / ".join(SPLIT_NAMES[s] for s in ("val", "test") if s in splits)
    styles = ["--", ":", "-.", (0, (5, 1, 1, 1))]
    reference_style: dict[str, Any] = {}
    legend: dict[str, Any] = {}
    any_clipped = False
    for axis, title in zip(axes.flat, titles):
        curves = panels.get(title) or teacher_panels[title]
        shown: list[float] = []
        peaks: list[float] = []
        counts = []
        for value, by_epoch in curves.items():
            epochs = sorted(by_epoch)
            means = [statistics.fmean(by_epoch[e]) for e in epochs]
            spreads = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
            counts.append(f"{value} {max(len(by_epoch[e]) for e in epochs)}")
            line, = axis.plot(epochs, means, color=colours.get(value), linewidth=1.6)
            legend.setdefault(str(value), line)
            axis.fill_between(epochs, [m - s for m, s in zip(means, spreads)], [m + s for m, s in zip(means, spreads)],
                              color=colours.get(value), alpha=0.2, linewidth=0)
            start = epochs[0] + (epochs[-1] - epochs[0]) / 2
            shown += [m - s for e, m, s in zip(epochs, means, spreads) if e >= start]
            shown += [m + s for e, m, s in zip(epochs, means, spreads) if e >= start]
            peaks.append(max(m + s for m, s in zip(means, spreads)))
        for label, by_epoch in references.get(student_of_panel.get(title, ""), {}).items() if title in panels else []:
            epochs = sorted(by_epoch)
            means = [statistics.fmean(by_epoch[e]) for e in epochs]
            style = reference_style.setdefault(label, styles[len(reference_style) % len(styles)])
            line, = axis.plot(epochs, means, color="0.35", linestyle=style, linewidth=1.3)
            legend.setdefault(f"{label} (n={max(len(by_epoch[e]) for e in epochs)}, mean)", line)
            start = epochs[0] + (epochs[-1] - epochs[0]) / 2
            shown += [m for e, m in zip(epochs, means) if e >= start]
            peaks.append(max(means))
        if shown:
            low, high = min(shown), max([*shown, *peaks])  # the best epochs stay in view
            margin = max(0.1, 0.08 * (high - low))
            every = [m for line in axis.get_lines() for m in line.get_ydata()]
            any_clipped |= bool(every) and min(every) < low - margin
            axis.set_ylim(low - margin, min(100.0, high + margin) if high <= 100 else high + margin)
        axis.set_title(_wrap(title, 48) + f"\n(seeds: {', '.join(counts)})", fontsize=10)
        axis.set_xlabel("epoch of its stage")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(f"top-1 on the {split_name} split (%)")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(titles):]:
        axis.set_visible(False)
    figure.legend(list(legend.values()), list(legend), loc="upper center", ncol=min(4, len(legend)), fontsize=10,
                  bbox_to_anchor=(0.5, 0.0), frameon=False)
    note = ("; y-axis fitted to the second half of the epochs and the best one (earlier ones run below)"
            if any_clipped else "")
    figure.suptitle(f"Held-out top-1 per epoch ({split_name} split): mean over seeds, band ± 1 std{note}", fontsize=11)
    return _save(plt, figure, path)


# --- accuracy over a field -----------------------------------------------------------------------

def accuracy_curve(path: Path, results: list[RunResult], field: str, design: Design | None = None) -> list[Path]:
    """Student test top-1 (mean ± std over seeds) against a numeric recipe field, one line per
    value of the compared field and method (the paper's Fig. 2 when the field is the number of
    labelled images); runs without a teacher as a dashed reference line."""
    design = design or Design(results, curve=field)
    lines: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    reference_lines: set[str] = set()
    for result in results:
        top1 = result.metric("student", "test", "top1")
        x = (recipe_fields(result.recipe) | result.fields).get(field)
        if top1 is None or not isinstance(x, (int, float)):
            continue
        label = design.line_label(result, field)
        if design.is_reference(result):
            reference_lines.add(label)
        lines[label][x].append(top1)
    if not lines:
        return []
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    compared = sorted(label for label in lines if label not in reference_lines)
    for label, colour in zip(compared, _colours(plt, len(compared))):
        by_x = lines[label]
        xs = sorted(by_x)
        means = [statistics.fmean(by_x[x]) for x in xs]
        spreads = [statistics.stdev(by_x[x]) if len(by_x[x]) > 1 else 0.0 for x in xs]
        n = max(len(v) for v in by_x.values())
        axis.errorbar(xs, means, yerr=spreads, label=f"{label} (n={n})", color=colour, marker="o", capsize=3)
    for label in sorted(reference_lines):
        by_x = lines[label]
        xs = sorted(by_x)
        axis.plot(xs, [statistics.fmean(by_x[x]) for x in xs], color="0.4", linestyle="--", marker="s",
                  label=f"{label} (reference)")
    xs = sorted({x for by_x in lines.values() for x in by_x})
    if xs[0] > 0 and xs[-1] / xs[0] >= 10:
        from matplotlib.ticker import NullLocator

        axis.set_xscale("log")
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xticks(xs, [f"{x:g}" for x in xs])
    axis.set_xlabel(field)
    axis.set_ylabel("student test top-1 (%), mean ± std over seeds")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=9)
    return _save(plt, figure, path)

