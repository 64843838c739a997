"""MLflow: one MLflow run per kdcore run, through ``MlflowClient`` (no global active run, so
several loggers or runs in one process do not interfere).

Metrics ``<stage>/<key>`` at step = the stage's epoch; the flattened recipe as params (values
as text: JSON for anything not a string) and the resolved recipe as the artifact
``recipe.yaml``; the summary's numbers as metrics ``summary/...`` (step 0), its other values as
tags, the whole summary as the artifact ``summary.json``; the run ends FINISHED, or FAILED when
the kdcore run failed. Tags ``kdcore.directory``, ``kdcore.sweep`` and ``kdcore.label`` say where
the run's files are.

The default store is a local file store ``file:<sweep dir>/mlruns``, so the variants of a
matrix land in one experiment (``mlflow ui --backend-store-uri file:runs/NAME/STAMP/mlruns``).
MLflow 3 keeps its file store in maintenance mode and refuses it unless
``MLFLOW_ALLOW_FILE_STORE=true``; this logger sets that variable for ``file:`` URIs when it is
unset. ``mlflow.json`` in the run's directory records the MLflow run, and ``--resume``
continues it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdcore.api import LoggerContext
from kdcore.callbacks import Callback, RunInfo, StageInfo
from kdcore_loggers import MLflowParams
from kdcore_loggers.common import (
    epoch_values, hyperparameters, is_number, require, run_name, summary_values, sweep_directory, text,
)

RUN_FILE = "mlflow.json"
_UNSAFE = re.compile(r"[^/\w.\- :]")
_MAX_PARAM_LENGTH = 6000


def build(params: MLflowParams, ctx: LoggerContext) -> MLflowLogger:
    require("mlflow", "mlflow", "mlflow")
    return MLflowLogger(params, ctx)


def tracking_uri(params: MLflowParams, ctx: LoggerContext) -> str:
    """The recipe's URI, else ``$MLFLOW_TRACKING_URI``, else a file store in the sweep's folder."""
    if params.tracking_uri:
        return params.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return (sweep_directory(ctx) / "mlruns").resolve().as_uri()


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


def _key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, ``_ - . / : space``)."""
    return _UNSAFE.sub("_", name).strip("/") or "_"


class MLflowLogger(Callback):
    def __init__(self, params: MLflowParams, ctx: LoggerContext):
        from mlflow.tracking import MlflowClient

        self.params = params
        self.context = ctx
        self.uri = tracking_uri(params, ctx)
        if _is_file_store(self.uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None
        self.finished = False

    def on_run_start(self, run: RunInfo) -> None:
        import yaml
        from mlflow.entities import Param

        record = Path(self.context.directory) / RUN_FILE
        previous = json.loads(record.read_text()) if record.exists() else {}
        if previous.get("tracking_uri") == self.uri and self._exists(previous.get("run_id")):
            self.run_id = previous["run_id"]  # --resume: continue the same MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment_id = self._experiment(self.params.experiment or str(run.recipe.get("name") or "kdcore"))
        tags = {"kdcore.directory": self.context.directory, "kdcore.sweep": str(sweep_directory(self.context)),
                "kdcore.label": self.context.run, **self.params.tags}
        self.run_id = self.client.create_run(experiment_id, tags=tags, run_name=run_name(self.context)).info.run_id
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"tracking_uri": self.uri, "experiment_id": experiment_id,
                                      "run_id": self.run_id}) + "\n")
        params = [Param(_key(key), text(value)[:_MAX_PARAM_LENGTH])
                  for key, value in hyperparameters(run.recipe).items()]
        self.client.log_batch(self.run_id, params=params)
        self.client.log_text(self.run_id, yaml.safe_dump(dict(run.recipe), sort_keys=False), "recipe.yaml")

    def on_epoch_end(self, stage: StageInfo, record: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        step, values = epoch_values(stage.stage, record)
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_key(k), v, now, step) for k, v in values.items()])

    def on_run_end(self, run: RunInfo, summary: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        flat = summary_values(summary)
        metrics = [Metric(_key(k), float(v), now, 0) for k, v in flat.items() if is_number(v)]
        tags = [RunTag(_key(k), text(v)) for k, v in flat.items() if not is_number(v)]
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        self.client.log_dict(self.run_id, dict(summary), "summary.json")
        self.client.set_terminated(self.run_id, status="FINISHED")
        self.finished = True

    def close(self) -> None:
        if self.run_id is not None and not self.finished:
            self.client.set_terminated(self.run_id, status="FAILED")

    def _experiment(self, name: str) -> str:
        """The experiment's id, created when missing (another process of the sweep may create it
        at the same time)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            self.client.get_run(run_id)
            return True
        except Exception:
            return False
