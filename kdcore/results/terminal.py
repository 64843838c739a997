"""The report's summary in a terminal: the groups and the paired comparison, in the console's
width (80 columns and up) without a line wrapping inside a cell. Long labels become G1, C1...
with a legend beneath; columns that do not fit are left out and named (``--wide`` shows them
all, report.md has everything)."""

from __future__ import annotations

import re
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from kdcore.results.comparison import Cell, ci_text, wtl_text
from kdcore.results.design import LONG_LABEL, shorten_labels
from kdcore.results.report import Report
from kdcore.results.statistics import format_p
from kdcore.results.tables import format_cell

SHORT_SELECTION = {"last epoch": "last", "best on validation": "best-val"}


def _table(title: str | None = None) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                 collapse_padding=True, padding=(0, 1))


def _fit(console: Console, columns: list[tuple[str, str, bool]], rows: list[list[str]], width: int | None,
         title: str | None = None) -> tuple[Table, list[str], bool]:
    """The table with as many columns as fit ``width`` (all with ``None``): columns are
    (header, justify, required); optional ones are dropped from the end. Returns the table, the
    headers left out, and whether it fits."""
    keep = list(range(len(columns)))
    left_out: list[str] = []
    while True:
        table = _table(title)
        for index in keep:
            header, justify, _ = columns[index]
            table.add_column(header, justify=justify, no_wrap=True)
        for row in rows:
            table.add_row(*(escape(row[i]) for i in keep))
        if width is None:
            return table, left_out, True
        needed = Measurement.get(console, console.options.update(width=10_000), table).maximum
        optional = [i for i in keep if not columns[i][2]]
        if needed <= width or not optional:
            return table, left_out, needed <= width
        keep.remove(optional[-1])
        left_out.insert(0, columns[optional[-1]][0])


def _print(console: Console, renderable: Any, wide: bool) -> None:
    """In the console's width; with ``wide`` in the renderable's own (the terminal wraps it)."""
    if not wide:
        console.print(renderable)
        return
    needed = Measurement.get(console, console.options.update(width=10_000), renderable).maximum
    Console(file=console.file, width=max(needed, console.width), highlight=False, color_system=console.color_system,
            force_terminal=console.is_terminal).print(renderable, crop=False)


def _legend(console: Console, legend: list[tuple[str, str]], wide: bool) -> None:
    """``G1 = objective=ce, kd+pkt, labeled=500``: spaces after the commas, so that a long
    label wraps between its parts."""
    for short, long in legend:
        _print(console, escape(f"  {short} = {re.sub(r',(?! )', ', ', long)}"), wide)


def print_summary(console: Console, report: Report, wide: bool = False) -> None:
    """The groups table and the paired comparison, fitted to the console's width."""
    width = None if wide else max(40, console.width)
    _groups(console, report, width, wide)
    if report.table.has_students:
        _comparison(console, report, width, wide)
    teachers = report.teachers.teachers
    shared = sum(1 for t in teachers if len(t.runs) > 1)
    line = f"{len(report.results)} runs, {len(teachers)} distinct teacher{'s' if len(teachers) != 1 else ''}"
    if shared:
        line += f" ({shared} with several students)"
    console.print(escape(line), soft_wrap=True)


def _groups(console: Console, report: Report, width: int | None, wide: bool) -> None:
    labels = [row["group"] for row in report.rows]

    def attempt(names: list[str], essential: int) -> tuple[Table, list[str], bool]:
        columns = [("group", "left", True), ("runs", "right", True), ("teachers", "right", False)]
        columns += [(label.replace(" (%)", ""), "right", i < essential) for i, label in enumerate(report.labels)]
        rows = [[name, str(row["runs"]), str(row["teachers"]), *[format_cell(row.get(label)) for label in report.labels]]
                for name, row in zip(names, report.rows)]
        return _fit(console, columns, rows, width, "mean ± std over seeds (teachers: distinct)")

    legend: list[tuple[str, str]] = []
    table, left_out, fits = attempt(labels, 2)  # full labels, if the two top-1 columns still fit
    if not fits:
        short, legend = shorten_labels(labels)
        table, left_out, _ = attempt(short, 0)
    _print(console, table, wide)
    _legend(console, legend, wide)
    if left_out:
        console.print(escape(f"  {len(left_out)} more column{'s' if len(left_out) > 1 else ''}: --wide, or report.md"))


def _cell_name(report: Report, cell: Cell) -> str:
    cells = report.table.cells
    parts = [cell.method] if cell.method != "·" else []
    if len({c.key.pair for c in cells}) > 1:
        parts.append(cell.key.pair)
    if len({c.key.condition for c in cells}) > 1 and cell.key.condition:
        parts.append(cell.key.condition)
    return " ".join(parts) or "all"


def _comparison(console: Console, report: Report, width: int | None, wide: bool) -> None:
    design, table = report.design, report.table
    selections = table.selections()
    if not design.compares:
        columns = [("cell", "left", True), ("sel.", "left", True), ("top-1 (%)", "right", True), ("n", "right", True)]
        rows = [[_cell_name(report, c), SHORT_SELECTION[c.selection], format_cell(c.stats(v)), str(c.stats(v)[2])]
                for s in selections for c in table.of(s) for v in c.by_value]
        names = sorted({r[0] for r in rows}, key=[r[0] for r in rows].index)
        _print_cells(console, columns, rows, names, width, wide, ["student top-1 (%) by cell (no compared field varies)"])
        _references(console, report, wide)
        return
    several = len(design.others) > 1
    entries: list[tuple[Cell, Any]] = []
    for selection in selections:
        for cell in table.of(selection):
            if cell.shared_teachers:
                continue
            for value in design.others:
                d = cell.difference(value)
                if d is not None or value in cell.by_value:
                    entries.append((cell, d))
    if not entries:
        return
    base = design.baseline
    other = design.others[0]
    delta = "diff" if several else f"{other}−{base}"
    columns = [("cell", "left", True), ("sel.", "left", True)]
    if several:
        columns.append(("value", "left", True))
    columns += [(base, "right", False), ("value" if several else other, "right", False), (delta, "right", True),
                ("95% CI", "right", True), ("p(t)", "right", True), ("W/T/L", "right", True), ("n", "right", True),
                ("p(W)", "right", False)]
    rows = []
    for cell, d in entries:
        value = d.value if d is not None else design.others[0]
        base_stats, value_stats = cell.stats(base), cell.stats(value)
        row = [_cell_name(report, cell), SHORT_SELECTION[cell.selection]]
        if several:
            row.append(value)
        row += [f"{base_stats[0]:.2f}" if base_stats else "–", f"{value_stats[0]:.2f}" if value_stats else "–",
                "–" if d is None or d.mean is None else f"{d.mean:+.2f}", ci_text(d),
                format_p(d.p_value if d else None), wtl_text(d), str(d.n_pairs if d else 0),
                format_p(d.wilcoxon.p_value if d and d.n_pairs else None)]
        rows.append(row)
    names = list(dict.fromkeys(r[0] for r in rows))
    title = [f"{' / '.join(design.others)} − {base} ({design.factor}): top-1 points, paired by seed",
             "  p(t): paired t-test, p(W): Wilcoxon signed-rank; W/T/L: wins/ties/losses"]
    _print_cells(console, columns, rows, names, width, wide, title)
    unpaired = [(c, d) for c, d in entries if d is not None and any(d.unpaired.values())]
    for cell, d in unpaired:
        seeds = "; ".join(f"{v}: {', '.join(map(str, s))}" for v, s in d.unpaired.items() if s)
        console.print(escape(f"  unpaired ({_cell_name(report, cell)}, {cell.selection}): {seeds}"))
    _references(console, report, wide)


def _print_cells(console: Console, columns, rows, names, width, wide, title: list[str], prefix: str = "C") -> None:
    """The cell table: full cell names where they cost no column, else C1, C2... with a legend."""
    for line in title:
        console.print(escape(line), soft_wrap=wide)
    legend: list[tuple[str, str]] = []
    table, left_out, fits = _fit(console, columns, rows, width)
    if not wide:
        for limit in (LONG_LABEL, 8):
            short, shorter_legend = shorten_labels(names, limit=limit, prefix=prefix)
            if not shorter_legend:
                continue
            renamed = dict(zip(names, short))
            trial = _fit(console, columns, [[renamed[r[0]], *r[1:]] for r in rows], width)
            if trial[2] and (not fits or len(trial[1]) < len(left_out)):
                (table, left_out, fits), legend = trial, shorter_legend
            if fits and not left_out:
                break
    _print(console, table, wide)
    _legend(console, legend, wide)
    if left_out:
        console.print(escape(f"  {len(left_out)} more column{'s' if len(left_out) > 1 else ''}: --wide, or report.md"))


def _references(console: Console, report: Report, wide: bool) -> None:
    """Runs that take no value of the compared field (no teacher; a loaded checkpoint), as a
    reference beside the comparison."""
    references = report.table.references
    if not references:
        return
    columns = [("reference", "left", True), ("student", "left", False), ("sel.", "left", True),
               ("top-1 (%)", "right", True), ("n", "right", True)]
    rows = []
    for reference in references:
        mean, std, n = reference.stats()
        rows.append([reference.label, reference.student, SHORT_SELECTION[reference.selection], format_cell((mean, std)),
                     str(n)])
    names = list(dict.fromkeys(r[0] for r in rows))
    width = None if wide else max(40, console.width)
    _print_cells(console, columns, rows, names, width, wide, ["references (no value of the compared field)"],
                 prefix="R")


def one_line(report: Report) -> str:
    """``--quiet``'s result: the first comparison cell's paired difference, and where the report is."""
    design, table = report.design, report.table
    text = f"{len(report.results)} runs"
    cells = [c for c in table.of("last epoch") if c.row == "student" and c.differences]
    if design.compares and cells:
        d = cells[0].differences[0]
        if d.mean is not None:
            text += (f"; {cells[0].method} {d.value}−{d.baseline} {d.mean:+.2f} {ci_text(d)} "
                     f"p={format_p(d.p_value)} W/T/L {wtl_text(d)} n={d.n_pairs}")
    return f"{text}; report: {report.directory / 'report.md'}"

