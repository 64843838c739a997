"""``kdcore teachers``: the trained teachers of a store, read from the ``teacher.json`` that the
teacher stage writes into every stored teacher's folder (identity, architecture, objective and
stage options, seed, data, epochs, held-out metrics). Nothing here imports torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdcore.errors import KdcoreError
from kdcore.runs.layout import TEACHER_RECORD, WEIGHTS

UNRECORDED = (f"no {TEACHER_RECORD} (stored before teachers were recorded; the next run that uses it "
              "writes it)")


def stored_teachers(store: Path) -> list[dict[str, Any]]:
    """One entry per stored teacher (a folder with weights or a record), sorted by key: its
    ``teacher.json`` plus ``path`` and ``size_bytes`` (all its files); folders without a record
    get ``key``, ``path``, ``size_bytes`` and ``problem``."""
    if not store.is_dir():
        raise KdcoreError(f"{store}: no teacher store there; give the store's folder, e.g. runs/teachers")
    entries = []
    for folder in sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        record_file = folder / TEACHER_RECORD
        if not record_file.exists() and not (folder / WEIGHTS).exists():
            continue  # a teacher still training, or not a teacher
        entry: dict[str, Any] = {"key": folder.name}
        if record_file.exists():
            try:
                entry.update(json.loads(record_file.read_text()))
            except (OSError, json.JSONDecodeError) as error:
                entry["problem"] = f"unreadable {TEACHER_RECORD}: {error}"
        else:
            entry["problem"] = UNRECORDED
        entry["path"] = str(folder)
        entry["size_bytes"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        entries.append(entry)
    return entries


def options_text(entry: dict[str, Any]) -> str:
    """The objective with its params that differ from the defaults, and the stage options:
    ``ce label_smoothing=0.1``, ``select best_val_brier (epoch 37)``, ``T = 1.317``."""
    objective = entry.get("objective") or {}
    changed = entry.get("objective_options") or {}
    parts = [" ".join([str(objective.get("name", "?")), *(f"{k}={_short(v)}" for k, v in changed.items())])]
    if entry.get("select", "last") != "last":
        parts.append(f"select {entry['select']} (epoch {entry.get('selected_epoch', '?')})")
    calibration = entry.get("calibration")
    if calibration:
        parts.append(f"T = {calibration['temperature']:.4g}")
    return "\n".join(parts)


def print_teachers(console: Console, entries: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(entries))
        return
    if not entries:
        console.print("no stored teachers")
        return
    table = Table(title="Stored teachers (held-out test metrics)", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    table.add_column("teacher\nseed, epochs\ndata", overflow="fold", width=21)
    table.add_column("objective, options", overflow="fold", width=22)
    for column in ("top-1", "Brier", "NLL", "ECE", "size"):
        table.add_column(column, justify="right", no_wrap=True, min_width=5)
    for entry in entries:
        if "problem" in entry:
            table.add_row(escape(entry["key"]), f"[yellow]{escape(entry['problem'])}[/]", "", "", "", "",
                          _size(entry["size_bytes"]))
            continue
        test = (entry.get("metrics") or {}).get("test", {})
        data = (entry.get("data") or {}).get("name", "?")
        identity = f"{entry['key']}\nseed {entry.get('seed', '?')}, {entry.get('epochs', '?')} epochs\n{data}"
        table.add_row(
            escape(identity), escape(options_text(entry)),
            _number(test.get("top1"), ".2f"), _number(test.get("brier"), ".3f"), _number(test.get("nll"), ".3f"),
            _number(test.get("ece"), ".3f"), _size(entry["size_bytes"]),
        )
    console.print(table)
    console.print(f"{len(entries)} teacher{'s' if len(entries) != 1 else ''}; all fields: kdcore teachers --json")


def _number(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _short(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _size(count: int) -> str:
    """At most 5 characters: ``812B``, ``9.5k``, ``362k``, ``4.1M``, ``1.2G`` (powers of 1000)."""
    value = float(count)
    for unit in ("B", "k", "M", "G"):
        if value < 999.5 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" or value >= 9.95 else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.0f}G"
