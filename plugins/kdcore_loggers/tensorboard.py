"""TensorBoard: event files written with ``torch.utils.tensorboard``.

Scalars ``<stage>/<key>`` at step = the stage's epoch; the flattened recipe as the HParams
dashboard's session (with the recipe as YAML in the Text tab, tag ``recipe``); the summary's
numbers as scalars ``summary/...`` at step 0 (and the whole summary as JSON text, tag
``summary``); the session's end status (success, or failure when the run failed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdcore.api import LoggerContext
from kdcore.callbacks import Callback, RunInfo, StageInfo
from kdcore_loggers import TensorBoardParams
from kdcore_loggers.common import epoch_values, hyperparameters, is_number, require, summary_values, text


def build(params: TensorBoardParams, ctx: LoggerContext) -> TensorBoardLogger:
    require("tensorboard", "tensorboard", "tensorboard")
    require("tensorboard", "torch.utils.tensorboard", "tensorboard")
    return TensorBoardLogger(params, ctx)


class TensorBoardLogger(Callback):
    def __init__(self, params: TensorBoardParams, ctx: LoggerContext):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(params.log_dir) if params.log_dir else Path(ctx.directory) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=params.flush_secs)
        self.finished = False

    def on_run_start(self, run: RunInfo) -> None:
        import yaml

        hparams = {key: value if isinstance(value, (bool, str)) or is_number(value) else text(value)
                   for key, value in hyperparameters(run.recipe).items()}
        self.writer.file_writer.add_summary(_session_start(hparams))
        recipe = yaml.safe_dump(dict(run.recipe), sort_keys=False)
        self.writer.add_text("recipe", _code_block(recipe), global_step=0)

    def on_epoch_end(self, stage: StageInfo, record: Mapping[str, float]) -> None:
        step, values = epoch_values(stage.stage, record)
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)

    def on_stage_end(self, stage: StageInfo) -> None:
        self.writer.flush()

    def on_run_end(self, run: RunInfo, summary: Mapping[str, Any]) -> None:
        for key, value in summary_values(summary).items():
            if is_number(value):
                self.writer.add_scalar(key, float(value), global_step=0)
        self.writer.add_text("summary", _code_block(json.dumps(summary, indent=2)), global_step=0)
        self.writer.file_writer.add_summary(_session_end(success=True))
        self.finished = True

    def close(self) -> None:
        if not self.finished:
            self.writer.file_writer.add_summary(_session_end(success=False))
        self.writer.close()


def _code_block(content: str) -> str:
    """Markdown (TensorBoard's Text tab) that shows ``content`` verbatim."""
    return "\n".join("    " + line for line in content.splitlines())


def _hparams_summary(tag: str, **plugin_data: Any) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = HParamsPluginData(version=PLUGIN_DATA_VERSION, **plugin_data)
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=PLUGIN_NAME, content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata)])


def _session_start(hparams: Mapping[str, Any]) -> Any:
    """The HParams plugin's session start: without an experiment summary, TensorBoard lists
    these hyperparameters and every scalar of the run as its metrics."""
    from tensorboard.plugins.hparams.metadata import SESSION_START_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import SessionStartInfo

    info = SessionStartInfo(start_time_secs=time.time())
    for key, value in hparams.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, str):
            info.hparams[key].string_value = value
        else:
            info.hparams[key].number_value = float(value)
    return _hparams_summary(SESSION_START_INFO_TAG, session_start_info=info)


def _session_end(success: bool) -> Any:
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import SessionEndInfo

    status = Status.Value("STATUS_SUCCESS" if success else "STATUS_FAILURE")
    info = SessionEndInfo(status=status, end_time_secs=time.time())
    return _hparams_summary(SESSION_END_INFO_TAG, session_end_info=info)
