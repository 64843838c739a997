"""Tables of finished runs: mean ± std over seeds per group of matrix values (teacher columns
over the group's distinct teachers), the distinct teachers ranked by held-out Brier score, rank
correlations with the distance to p*, and the teacher lab: which teacher metric predicts its
students, and the teacher recipes ranked by their students."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from kdcore.results.collect import RunResult, Teacher, TeacherIndex, recipe_fields
from kdcore.results.comparison import ci_text, run_seed, wilcoxon_text, wtl_text
from kdcore.results.design import Design
from kdcore.results.statistics import format_p, mean_std, paired_difference, spearman, spearman_p_value

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
"""(stage, split, metric, label) of the group table; teacher columns are over distinct teachers."""


def aggregate(results: list[RunResult], design: Design | None = None,
              teachers: TeacherIndex | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Column labels and one row per group: label, runs, distinct teachers, then (mean, std,
    n) per column present."""
    design = design or Design(results)
    teachers = teachers or TeacherIndex(results)
    columns = [c for c in COLUMNS if any(r.metric(*c[:3]) is not None for r in results)]
    groups: dict[tuple, list[RunResult]] = defaultdict(list)
    for result in results:
        groups[design.group_key(result)].append(result)
    rows = []
    for members in groups.values():
        distinct = list({t.identity: t for r in members if (t := teachers.of(r)) is not None}.values())
        row: dict[str, Any] = {"group": design.group_label(members[0]), "runs": len(members), "teachers": len(distinct)}
        for stage, split, name, label in columns:
            if stage == "teacher":
                values = [v for t in distinct if (v := t.metric(split, name)) is not None]
            else:
                values = [v for r in members if (v := r.metric(stage, split, name)) is not None]
            if values:
                row[label] = mean_std(values)
        rows.append(row)
    return [c[3] for c in columns], rows


def markdown_table(labels: list[str], rows: list[dict[str, Any]]) -> str:
    header = "| group | runs | teachers | " + " | ".join(labels) + " |"
    rule = "|" + "---|" * (len(labels) + 3)
    lines = [header, rule]
    for row in rows:
        cells = [format_cell(row.get(label)) for label in labels]
        lines.append(f"| {row['group']} | {row['runs']} | {row['teachers']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_cell(cell: tuple | None) -> str:
    if cell is None:
        return "–"
    mean, std = cell[0], cell[1]
    digits = 2 if abs(mean) >= 1 else 4
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def write_group_csv(path: Path, labels: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "runs", "teachers",
                         *[f"{label} {part}" for label in labels for part in ("mean", "std", "n")]])
        for row in rows:
            writer.writerow([row["group"], row["runs"], row["teachers"],
                             *[x for label in labels for x in row.get(label, ("", "", ""))]])


def held_out_split(teachers: list[Teacher]) -> str:
    """``val`` when every teacher was evaluated on a validation split, else ``test``."""
    return "val" if teachers and all(t.metric("val", "brier") is not None for t in teachers) else "test"


def ranked_teachers(teachers: TeacherIndex) -> tuple[str, list[Teacher]]:
    scored = [t for t in teachers.teachers if t.metric("test", "brier") is not None]
    split = held_out_split(scored)
    return split, sorted(scored, key=lambda t: t.metric(split, "brier"))


def teacher_ranking(results: list[RunResult], teachers: TeacherIndex | None = None) -> str:
    """Each distinct teacher once (a shared teacher serves many runs), ranked by its held-out
    Brier score, which orders teachers as their MSE to p* does even where p* is unknown."""
    teachers = teachers or TeacherIndex(results)
    split, rows = ranked_teachers(teachers)
    if not rows:
        return ""
    lines = [f"\n## Teachers ranked by Brier score ({split} split; lower is closer to p*)\n",
             f"{len(rows)} distinct teacher{'s' if len(rows) != 1 else ''}, each once however many students it taught.\n",
             "| teacher | arch | objective | seed | students | top-1 (%) | Brier | NLL | ECE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in rows:
        numbers = [t.metric(split, name) for name in ("top1", "brier", "nll", "ece")]
        shown = ["–" if v is None else (f"{v:.2f}" if i == 0 else f"{v:.4f}") for i, v in enumerate(numbers)]
        seed = "?" if t.seed is None else t.seed
        lines.append(f"| {t.label} | {t.arch} | {t.objective or '?'} | {seed} | {len(t.runs)} | " + " | ".join(shown) + " |")
    checkpoints = [t for t in rows if t.kind == "checkpoint"]
    loaded = [t for t in rows if t.loaded_from]
    if checkpoints or loaded:
        lines.append("")
        lines += [f"- {t.label}: loaded from {t.path}; objective and seed from {t.provenance}" for t in checkpoints]
        lines += [f"- {t.label}: also loaded as a checkpoint ({', '.join(t.loaded_from)}: the same weights, by SHA-256) "
                  f"by {sum(1 for r in t.runs if r.loads_checkpoint)} runs" for t in loaded]
    return "\n".join(lines) + "\n"


def curve_field(results: list[RunResult], named: str | None = None) -> str | None:
    """The field an accuracy curve runs over: the one the user names, else the one numeric
    field of the data (e.g. the label budget ``data.params.labeled``) that varies between the
    runs. Never a runtime setting, never a seed."""
    flat = [recipe_fields(r.recipe) | r.fields for r in results]
    if named is not None:
        return named if any(named in f for f in flat) else None
    keys = set().union(*flat)

    def numeric(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    varying = [k for k in keys if k.startswith("data.") and k.split(".")[-1] != "seed"
               and len({repr(f.get(k)) for f in flat}) > 1 and all(numeric(f.get(k)) for f in flat)]
    return varying[0] if len(varying) == 1 else None


varying_numeric_field = curve_field


def rank_correlations(results: list[RunResult]) -> str:
    """Spearman's rank correlation of student accuracy with each distance of its targets to p*."""
    accuracy = [r.metric("student", "test", "top1") for r in results]
    lines = ["\n## Student accuracy against the distance of its targets to p*\n",
             f"Spearman rank correlation over {len(results)} runs (−1: farther from p* always means a worse student).\n"]
    for name, label in (("mse_to_true", "squared error (MSE)"), ("ce_to_true", "cross-entropy (CE)")):
        distance = [r.estimate_distance(name) for r in results]
        rho = spearman(distance, accuracy)
        lines.append(f"- {label}: {rho:+.3f} (p = {format_p(spearman_p_value(rho, len(results)))})")
    return "\n".join(lines) + "\n"


# --- the teacher lab -----------------------------------------------------------------------------

LAB_METRICS = [("top1", "top-1", +1), ("brier", "Brier", -1), ("nll", "NLL", -1), ("ece", "ECE", -1),
               ("mse_to_true", "MSE to p* (train)", -1), ("ce_to_true", "CE to p* (train)", -1)]
"""(metric, label, the sign of a good predictor's correlation with its students' accuracy)."""


def teacher_lab(teachers: TeacherIndex, design: Design, comparison) -> dict[str, Any]:
    """Over the distinct teachers that have students: Spearman's ρ between each teacher metric
    and the mean top-1 of its students (all its students, and per method), and the values of
    the compared factor ranked by their students with the paired difference to the baseline."""
    taught = [t for t in teachers.teachers if t.students()]
    split = held_out_split(taught)
    methods = list(dict.fromkeys(design.method(r) for t in taught for r in t.runs))
    correlations = []
    for metric, label, sign in LAB_METRICS:
        metric_split = "train" if metric.endswith("_to_true") else split
        for method in [None, *methods] if len(methods) > 1 else [None]:
            xs, ys = [], []
            for t in taught:
                value = t.metric(metric_split, metric)
                students = [v for r in t.runs if method is None or design.method(r) == method
                            if (v := r.selected_metric("student", "last epoch")) is not None]
                if value is not None and students:
                    xs.append(value)
                    ys.append(statistics.fmean(students))
            if len(xs) >= 3:
                rho = spearman(xs, ys)
                correlations.append({"metric": metric, "label": label, "split": metric_split,
                                     "students": method or "all", "rho": rho,
                                     "p_value": spearman_p_value(rho, len(xs)), "n_teachers": len(xs),
                                     "good_sign": sign})
    recipes = recipe_ranking(design, teachers, comparison)
    return {"split": split, "teachers": len(taught), "correlations": correlations, "recipes": recipes}


def recipe_ranking(design: Design, teachers: TeacherIndex, comparison) -> list[dict[str, Any]]:
    """Each value of the compared factor: its students' mean top-1 and the paired difference to
    the baseline value, per selection. Pairs are (pair, condition, seed) with the students of
    one teacher averaged first, so that each teacher counts once."""
    rows = []
    for selection in comparison.selections():
        per_value: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
        students: dict[str, list[float]] = defaultdict(list)
        teacher_top1: dict[str, dict[str, float]] = defaultdict(dict)
        for result in design.results:
            top1 = result.selected_metric("student", selection)
            if top1 is None or design.is_reference(result):
                continue
            value = design.factor_value(result)
            block = design.block(result)
            per_value[value][(block.pair, block.condition, run_seed(result))].append(top1)
            students[value].append(top1)
            teacher = teachers.of(result)
            if teacher is not None and (t1 := teacher.selected_metric(selection)) is not None:
                teacher_top1[value][teacher.identity] = t1

        def by_seed(units: dict) -> dict[Any, float]:
            return {key: statistics.fmean(values) for key, values in units.items()}

        base = by_seed(per_value.get(design.baseline, {})) if design.compares else {}
        for value in design.values:
            if value not in students:
                continue
            mean, std, n = mean_std(students[value])
            entry: dict[str, Any] = {"selection": selection, "value": value, "students": n, "mean": mean, "std": std,
                                     "teachers": len(teacher_top1[value]),
                                     "teacher_mean_top1": statistics.fmean(teacher_top1[value].values())
                                     if teacher_top1[value] else None}
            if design.compares and value != design.baseline:
                difference = paired_difference(base, by_seed(per_value[value]), value, design.baseline)
                entry["difference"] = difference
            rows.append(entry)
        order = sorted((r for r in rows if r["selection"] == selection), key=lambda r: -r["mean"])
        rows = [r for r in rows if r["selection"] != selection] + order
    return rows


def teacher_lab_markdown(lab: dict[str, Any], design: Design) -> str:
    if not lab["correlations"] and not lab["recipes"]:
        return ""
    lines = ["\n## Teacher lab: which teacher metric predicts its students?\n",
             f"Spearman's ρ over the {lab['teachers']} distinct teachers that have students, between a teacher "
             f"metric ({lab['split']} split; distances to p* on the training set) and the mean last-epoch test "
             "top-1 of its students. A good predictor has ρ near +1 for top-1 and near −1 for the others "
             "(lower is better).\n"]
    if lab["correlations"]:
        columns = list(dict.fromkeys(c["students"] for c in lab["correlations"]))
        lines += ["| teacher metric | " + " | ".join(f"ρ ({c} students)" if c == "all" else f"ρ ({c})" for c in columns)
                  + " | teachers |", "|" + "---|" * (len(columns) + 2)]
        for metric in dict.fromkeys(c["label"] for c in lab["correlations"]):
            found = {c["students"]: c for c in lab["correlations"] if c["label"] == metric}
            cells = [f"{found[c]['rho']:+.3f} (p = {format_p(found[c]['p_value'])})" if c in found else "–" for c in columns]
            n = max(c["n_teachers"] for c in found.values())
            lines.append(f"| {metric} | " + " | ".join(cells) + f" | {n} |")
    if lab["recipes"]:
        lines += ["", f"Teacher recipes (values of {design.factor}) ranked by their students' mean top-1; the "
                  f"difference to {design.baseline} is paired by pair, condition and seed, the students of "
                  "one teacher averaged first.", "",
                  "| selection | value | students | student top-1 (%) | teachers | teacher top-1 (%) | "
                  f"− {design.baseline} | 95% CI | t-test p | Wilcoxon p | W/T/L | pairs |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in lab["recipes"]:
            d = r.get("difference")
            teacher = "–" if r["teacher_mean_top1"] is None else f"{r['teacher_mean_top1']:.2f}"
            diff = "baseline" if d is None else ("–" if d.mean is None else f"{d.mean:+.2f}")
            lines.append(f"| {r['selection']} | {r['value']} | {r['students']} | {format_cell((r['mean'], r['std']))} | "
                         f"{r['teachers']} | {teacher} | {diff} | {ci_text(d)} | {format_p(d.p_value if d else None)} | "
                         f"{wilcoxon_text(d)} | {wtl_text(d)} | {d.n_pairs if d else '–'} |")
    return "\n".join(lines) + "\n"
