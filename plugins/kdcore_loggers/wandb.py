"""Weights & Biases: one W&B run per kdcore run, online or offline.

History ``<stage>/<key>`` with ``<stage>/epoch`` as each stage's x-axis (``define_metric``:
W&B's own ``_step`` only counts rows, so the teacher's and the student's epochs both start at
1); the flattened recipe as the run's config; the summary, flattened under ``summary/``, in the
run's summary; the run finishes with exit code 0, or 1 when the kdcore run failed.

Offline runs (the default without an API key) are written under ``<dir>/wandb/offline-run-*``;
``wandb sync <that folder>`` uploads them later. ``wandb.json`` in the run's directory records
the W&B run id, and ``--resume`` continues that run.
"""

from __future__ import annotations

import json
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kdcore.api import LoggerContext
from kdcore.callbacks import Callback, RunInfo, StageInfo
from kdcore_loggers import WandbParams
from kdcore_loggers.common import epoch_values, hyperparameters, require, run_name, summary_values, sweep_directory

RUN_FILE = "wandb.json"


def build(params: WandbParams, ctx: LoggerContext) -> WandbLogger:
    require("wandb", "wandb", "wandb")
    return WandbLogger(params, ctx)


def resolve_mode(params: WandbParams) -> str:
    """The recipe's mode, else ``$WANDB_MODE``, else online with an API key and offline without."""
    if params.mode:
        return params.mode
    environment = os.environ.get("WANDB_MODE", "").strip().lower()
    if environment in ("online", "offline", "disabled"):
        return environment
    if environment == "dryrun":
        return "offline"
    return "online" if _has_api_key() else "offline"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or ""
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(Callback):
    def __init__(self, params: WandbParams, ctx: LoggerContext):
        self.params = params
        self.context = ctx
        self.mode = resolve_mode(params)
        self.dir = Path(params.dir) if params.dir else Path(ctx.directory)
        self.run: Any = None
        self.stages: set[str] = set()
        self.finished = False

    def on_run_start(self, run: RunInfo) -> None:
        import wandb

        record = Path(self.context.directory) / RUN_FILE
        previous = json.loads(record.read_text()) if record.exists() else {}
        group = self.params.group or (sweep_directory(self.context).name if self.context.run else None)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.params.project or str(run.recipe.get("name") or "kdcore"),
            entity=self.params.entity,
            name=run_name(self.context),
            group=group,
            tags=list(self.params.tags) or None,
            dir=str(self.dir),
            mode=self.mode,
            config=hyperparameters(run.recipe),
            id=previous.get("id"),
            resume="allow" if previous.get("id") else None,
            reinit="create_new",
        )
        if self.mode != "disabled":
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"id": self.run.id, "mode": self.mode, "dir": str(self.dir)}) + "\n")

    def on_stage_start(self, stage: StageInfo) -> None:
        if stage.stage not in self.stages:
            self.stages.add(stage.stage)
            self.run.define_metric(f"{stage.stage}/epoch")
            self.run.define_metric(f"{stage.stage}/*", step_metric=f"{stage.stage}/epoch")

    def on_epoch_end(self, stage: StageInfo, record: Mapping[str, float]) -> None:
        self.on_stage_start(stage)
        step, values = epoch_values(stage.stage, record)
        self.run.log({f"{stage.stage}/epoch": step, **values})

    def on_run_end(self, run: RunInfo, summary: Mapping[str, Any]) -> None:
        self.run.summary.update(summary_values(summary))
        self.run.finish(exit_code=0)
        self.finished = True

    def close(self) -> None:
        if self.run is not None and not self.finished:
            self.run.finish(exit_code=1)
