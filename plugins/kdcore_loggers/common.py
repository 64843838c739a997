"""What the three loggers share: the keys and steps they log, the flattening of the recipe and
the summary, and the check that a tracker is installed. Imports neither torch nor a tracker."""

from __future__ import annotations

import importlib
import json
import numbers
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from kdcore.api import LoggerContext
from kdcore.errors import KdcoreError

SUMMARY_PREFIX = "summary/"


def require(logger: str, module: str, extra: str) -> ModuleType:
    """Import a tracker's package, or explain how to install it (raised when the recipe's logger
    is built, before anything trains)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and error.name != module and not module.startswith(f"{error.name}."):
            raise KdcoreError(f"logger '{logger}': importing {module} failed ({error}); "
                              f"pip install 'kdcore[{extra}]'") from error
        raise KdcoreError(f"logger '{logger}' needs {module}: pip install 'kdcore[{extra}]'") from error
    except ImportError as error:
        raise KdcoreError(f"logger '{logger}': importing {module} failed ({error}); "
                          f"pip install 'kdcore[{extra}]'") from error


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def epoch_values(stage: str, record: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
    """An epoch's record as (step, {``<stage>/<key>``: value}): the step is the stage's epoch
    (from 1); every other number of the record is logged (loss terms, lr, held-out metrics,
    seconds)."""
    values = {f"{stage}/{key}": float(value) for key, value in record.items()
              if key != "epoch" and is_number(value)}
    return int(record["epoch"]), values


def flatten(data: Any, separator: str, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level, keys joined by ``separator``; a list of mappings (or of
    lists) is indexed (``student.distillers.0.name``), a list of plain values kept whole
    (``teacher.arch.params.hidden: [16]``); an empty mapping is kept as ``{}``."""
    flat: dict[str, Any] = {}

    def visit(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            if not value and key:
                flat[key] = {}
            for name, item in value.items():
                visit(item, f"{key}{separator}{name}" if key else str(name))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in value):
            for index, item in enumerate(value):
                visit(item, f"{key}{separator}{index}" if key else str(index))
        else:
            flat[key] = list(value) if isinstance(value, tuple) else value

    visit(data, prefix)
    return flat


def hyperparameters(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved recipe as hyperparameters: ``{"teacher.arch.name": "mlp", ...}``."""
    return flatten(recipe, ".")


def summary_values(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The run's summary as ``{"summary/student/test/top1": 71.2, ...}``."""
    return {f"{SUMMARY_PREFIX}{key}": value for key, value in flatten(summary, "/").items()}


def text(value: Any) -> str:
    """A hyperparameter as text, for trackers that store strings: strings as they are, anything
    else as JSON (``true``, ``null``, ``[16, 16]``)."""
    return value if isinstance(value, str) else json.dumps(value)


def sweep_directory(ctx: LoggerContext) -> Path:
    """The folder of the ``kdcore run`` that made this run: the run's own directory, or its
    parent for a variant of a matrix."""
    directory = Path(ctx.directory)
    return directory.parent if ctx.run else directory


def run_name(ctx: LoggerContext) -> str:
    """The tracker's run name: the variant's label (``objective=mse,seed=3``), else the name of
    the run's folder (its timestamp)."""
    return ctx.run or Path(ctx.directory).name
