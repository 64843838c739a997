"""The built-in loggers (plugins/kdcore_loggers): a tiny real run with each tracker, read back
with the tracker's own reader (TensorBoard's EventAccumulator, MLflow's client on the local
store, the records of W&B's offline run file), and compared with the run's own metrics.jsonl
and summary.json. Each tracker's tests skip when its package is not installed; nothing goes
over the network (W&B offline, MLflow in a local file store)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdcore.api import DatasetSpec
from kdcore.callbacks import Callback
from kdcore.errors import KdcoreError
from kdcore.registry import load_registry
from kdcore.testing import make_distribution, run_recipe
from tests.conftest import TINY_TOY, run_cli

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
if importlib.util.find_spec("kdcore_loggers") is None:  # not installed yet: use the source tree
    sys.path.insert(0, str(PLUGINS))

TRACKERS = ("tensorboard", "mlflow", "wandb")


def logger_specs() -> list:
    """The logger specs to add to the installed plugins: none once kdcore_loggers is registered
    through its entry point, else the ones its hook yields."""
    if "tensorboard" in load_registry().names("logger"):
        return []
    import kdcore_loggers

    return list(kdcore_loggers.kdcore_loggers())


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for variable in ("WANDB_API_KEY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)


class RecipeSpy(Callback):
    def on_run_start(self, run):
        self.recipe = run.recipe


def tiny_run(tmp_path: Path, loggers: list[dict], **replace: Any) -> tuple[Path, dict, dict]:
    """TINY_TOY with 2 epochs a stage and these loggers: (run directory, summary, resolved recipe)."""
    recipe = copy.deepcopy(TINY_TOY)
    recipe["teacher"]["epochs"] = recipe["student"]["epochs"] = 2
    components = [*logger_specs(), *replace.pop("components", [])]
    recipe.update(replace, loggers=loggers)
    spy = RecipeSpy()
    directory = tmp_path / "run"
    summary = run_recipe(recipe, directory, components=components, callbacks=spy)
    return directory, summary, spy.recipe


def epoch_metrics(directory: Path) -> dict[tuple[str, int], float]:
    """What metrics.jsonl holds, as the loggers key it: (``<stage>/<key>``, epoch) → value."""
    expected = {}
    for stage in ("teacher", "student"):
        for line in (directory / stage / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            expected.update({(f"{stage}/{key}", record["epoch"]): value for key, value in record.items()
                             if key != "epoch"})
    return expected


def flat_summary(data: dict, prefix: str = "summary") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flat_summary(value, f"{prefix}/{key}"))
        else:
            flat[f"{prefix}/{key}"] = value
    return flat


@dataclass
class Logged:
    """What a tracker holds after a run, read with its own reader."""

    epochs: dict[tuple[str, int], float] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    status: str = ""
    recipe: dict | None = None


def read_tensorboard(directory: Path) -> Logged:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    events = list((directory / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    accumulator = EventAccumulator(str(directory / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    logged = Logged()
    for tag in accumulator.Tags()["scalars"]:
        for event in accumulator.Scalars(tag):
            if tag.startswith("summary/"):
                assert event.step == 0
                logged.summary[tag] = event.value
            else:
                logged.epochs[(tag, event.step)] = event.value
    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    for key, value in start.session_start_info.hparams.items():
        logged.hparams[key] = getattr(value, value.WhichOneof("kind"))
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    logged.status = {api_pb2.STATUS_SUCCESS: "success", api_pb2.STATUS_FAILURE: "failure"}[end.session_end_info.status]
    if "recipe/text_summary" in accumulator.Tags()["tensors"]:
        [text] = accumulator.Tensors("recipe/text_summary")
        markdown = text.tensor_proto.string_val[0].decode()
        logged.recipe = yaml.safe_load("\n".join(line[4:] for line in markdown.splitlines()))
    return logged


def read_mlflow(directory: Path) -> Logged:
    from mlflow.tracking import MlflowClient

    uri = (directory / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert json.loads((directory / "mlflow.json").read_text())["run_id"] == run.info.run_id
    assert run.info.run_name == directory.name and run.data.tags["kdcore.directory"] == str(directory)
    logged = Logged(hparams=dict(run.data.params))
    logged.status = {"FINISHED": "success", "FAILED": "failure"}[run.info.status]
    for key in run.data.metrics:
        for metric in client.get_metric_history(run.info.run_id, key):
            if key.startswith("summary/"):
                assert metric.step == 0
                logged.summary[key] = metric.value
            else:
                logged.epochs[(key, metric.step)] = metric.value
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    if "recipe.yaml" in artifacts:
        logged.recipe = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "recipe.yaml",
                                                                      str(directory.parent))).read_text())
    if "summary.json" in artifacts:
        stored = json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json",
                                                           str(directory.parent))).read_text())
        assert stored == json.loads((directory / "summary.json").read_text())
    return logged


def wandb_records(path: Path):
    """The records of a W&B run file (``run-<id>.wandb``): W&B's header (``:W&B``, magic 0xBEE1,
    version 0), then LevelDB-log chunks in 32 KiB blocks, each a piece of a serialised
    ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    position, pieces = 7, []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:  # zero padding up to the end of the block
            position += left
            continue
        if position + 7 + length > len(data):  # still being written
            return
        pieces.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(pieces))
            pieces = []
            yield record


def _wandb_items(items) -> dict[str, Any]:
    return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in items}


def finished_wandb_records(path: Path, timeout: float = 30.0) -> list:
    """The run file's records once W&B has written them all: ``run.finish()`` returns before
    W&B's service process has flushed the file, so wait for its ``exit`` record."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def read_wandb(directory: Path) -> Logged:
    [path] = directory.glob("wandb/offline-run-*/run-*.wandb")
    assert json.loads((directory / "wandb.json").read_text())["id"] in path.name
    logged = Logged()
    for record in finished_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            assert record.run.display_name == directory.name and record.run.project == "tiny"
            logged.hparams = {k: v for k, v in _wandb_items(record.run.config.update).items() if k != "_wandb"}
        elif kind == "history":
            row = _wandb_items(record.history.item)
            [step_key] = [key for key in row if key.endswith("/epoch")]
            stage = step_key.split("/")[0]
            for key, value in row.items():
                if key.startswith(f"{stage}/") and key != step_key:
                    logged.epochs[(key, row[step_key])] = value
        elif kind == "summary":
            logged.summary.update({k: v for k, v in _wandb_items(record.summary.update).items()
                                   if k.startswith("summary/")})
        elif kind == "exit":
            logged.status = "success" if record.exit.exit_code == 0 else "failure"
    return logged


READERS = {"tensorboard": read_tensorboard, "mlflow": read_mlflow, "wandb": read_wandb}
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def expected_hparams(tracker: str, recipe: dict) -> dict[str, Any]:
    """The flattened recipe as the tracker stores it: TensorBoard keeps numbers (as floats),
    bools and strings, MLflow strings, W&B any JSON value."""
    from kdcore_loggers.common import hyperparameters, is_number, text

    flat = hyperparameters(recipe)
    if tracker == "mlflow":
        return {key: text(value) for key, value in flat.items()}
    if tracker == "tensorboard":
        return {key: float(v) if is_number(v) else v if isinstance(v, (bool, str)) else text(v)
                for key, v in flat.items()}
    return flat


@pytest.mark.parametrize("tracker", TRACKERS)
def test_a_logger_records_every_epoch_the_recipe_and_the_summary(tracker, tmp_path):
    pytest.importorskip(PACKAGES[tracker])
    directory, summary, recipe = tiny_run(tmp_path, [{"name": tracker}])
    logged = READERS[tracker](directory)

    expected = epoch_metrics(directory)
    assert {key for key, _ in expected} >= {"teacher/train/loss", "teacher/lr", "teacher/val/top1", "teacher/seconds",
                                            "student/train/kd", "student/train/ce", "student/val/nll"}
    assert logged.epochs == pytest.approx(expected, rel=1e-6)  # TensorBoard stores float32

    assert summary == json.loads((directory / "summary.json").read_text())
    assert logged.summary == pytest.approx(flat_summary(summary), rel=1e-6)
    assert "summary/student/test/top1" in logged.summary

    assert logged.hparams == expected_hparams(tracker, recipe)
    some = {"name": "tiny", "teacher.epochs": 2, "teacher.objective.name": "mse", "loggers.0.name": tracker,
            "student.distillers.0.name": "kd", "student.distillers.0.params.temperature": 2.0,
            "teacher.arch.params.hidden": [16]}
    assert logged.hparams.items() >= expected_hparams(tracker, some).items()
    if tracker != "wandb":  # TensorBoard's text and MLflow's artifact recipe.yaml
        assert logged.recipe == recipe
    assert logged.status == "success"


def broken_dataset(params, ctx):
    raise RuntimeError("no data today")


@pytest.mark.parametrize("tracker", TRACKERS)
def test_a_failed_run_is_marked_failed_in_the_tracker(tracker, tmp_path):
    pytest.importorskip(PACKAGES[tracker])
    with pytest.raises(Exception, match="no data today"):
        tiny_run(tmp_path, [{"name": tracker}], data={"name": "broken"},
                 components=[DatasetSpec(name="broken", summary="t", build=broken_dataset)])
    logged = READERS[tracker](tmp_path / "run")
    assert logged.status == "failure" and not logged.epochs and not logged.summary
    assert logged.hparams["data.name"] == "broken"


@pytest.mark.parametrize("tracker", TRACKERS)
def test_a_missing_tracker_is_named_with_its_extra_before_anything_trains(tracker, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, PACKAGES[tracker], None)  # as if not installed
    with pytest.raises(KdcoreError) as error:
        tiny_run(tmp_path, [{"name": tracker}])
    assert str(error.value) == f"logger '{tracker}' needs {PACKAGES[tracker]}: pip install 'kdcore[{tracker}]'"
    assert not (tmp_path / "run" / "teacher").exists()


def test_params_are_checked_by_the_logger(tmp_path):
    with pytest.raises(KdcoreError, match=r"loggers.0.params.flush_sec.*flush_secs"):
        tiny_run(tmp_path, [{"name": "tensorboard", "params": {"flush_sec": 5}}])
    with pytest.raises(KdcoreError, match=r"loggers.0.params.mode"):
        tiny_run(tmp_path, [{"name": "wandb", "params": {"mode": "sometimes"}}])


def test_the_registration_imports_neither_torch_nor_a_tracker():
    code = ("import sys, kdcore_loggers; names = [s.name for s in kdcore_loggers.kdcore_loggers()]; "
            "assert names == ['tensorboard', 'mlflow', 'wandb'], names; "
            "heavy = {'torch', 'tensorboard', 'mlflow', 'wandb'} & set(sys.modules); assert not heavy, heavy")
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PLUGINS), str(ROOT)]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr


def test_the_runs_of_a_matrix_share_one_mlflow_experiment(fake_site, write_recipe, tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    if logger_specs():  # not yet registered through kdcore's own entry point
        make_distribution(fake_site, "kdcore-loggers-under-test", "0", {}, {"loggers": "kdcore_loggers"})
    recipe = copy.deepcopy(TINY_TOY)
    recipe["teacher"]["epochs"] = recipe["student"]["epochs"] = 1
    recipe["loggers"] = [{"name": "mlflow", "params": {"experiment": "grid", "tags": {"owner": "tests"}}}]
    recipe["matrix"] = {"seed": [0, 1]}
    sweep = tmp_path / "sweep"
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--run-dir", sweep)
    assert code == 0, err
    client = MlflowClient(tracking_uri=(sweep / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("grid").experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["seed=0", "seed=1"]
    for run in runs:
        variant = sweep / run.info.run_name
        assert run.data.tags["kdcore.sweep"] == str(sweep) and run.data.tags["owner"] == "tests"
        assert run.data.params["seed"] == run.info.run_name[-1]
        summary = json.loads((variant / "summary.json").read_text())
        assert run.data.metrics["summary/student/test/top1"] == summary["student"]["test"]["top1"]


def test_only_the_first_process_builds_loggers(tmp_path, monkeypatch):
    """Under torchrun the kernel builds the recipe's loggers on rank 0 only (the torchrun test
    below checks it with two real processes)."""
    pytest.importorskip("tensorboard")
    from kdcore.engine.accelerator import Accelerator

    monkeypatch.setattr(Accelerator, "is_main", staticmethod(lambda: False))
    tiny_run(tmp_path, [{"name": "tensorboard"}])
    assert not (tmp_path / "run" / "tensorboard").exists()


@pytest.mark.skipif(not os.environ.get("KDCORE_TEST_TORCHRUN"),
                    reason="two torchrun processes take about a minute on 2 CPU cores; set KDCORE_TEST_TORCHRUN=1")
def test_under_torchrun_only_the_first_process_logs(fake_site, write_recipe, tmp_path):
    pytest.importorskip("tensorboard")
    if logger_specs():  # not yet registered through kdcore's own entry point
        make_distribution(fake_site, "kdcore-loggers-under-test", "0", {}, {"loggers": "kdcore_loggers"})
    recipe = copy.deepcopy(TINY_TOY)
    recipe["teacher"]["epochs"] = recipe["student"]["epochs"] = 1
    recipe["runtime"] = {"device": "cpu", "threads": 1}
    recipe["loggers"] = [{"name": "tensorboard"}]
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "kdcore.cli", "run", str(write_recipe(recipe)), "--run-dir", str(run)]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake_site), str(PLUGINS), str(ROOT)]))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = read_tensorboard(run)  # one event file: rank 1 wrote none
    assert logged.epochs == pytest.approx(epoch_metrics(run), rel=1e-6)
    assert logged.summary == pytest.approx(flat_summary(json.loads((run / "summary.json").read_text())), rel=1e-6)
