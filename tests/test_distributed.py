"""Two processes launched by torchrun (gloo on CPU) train one run together."""

import copy
import json
import subprocess
import sys

import torch

from kdcore.engine.distributed import world_size
from kdcore.engine.data import training_batches
from kdcore.nn import Split
from tests.conftest import TINY_TOY


def test_torchrun_with_two_processes_ends_with_identical_weights_written_once(write_recipe, tmp_path):
    """Identical on both ranks: the networks, and CRD's parameters and memory banks, which each
    process updates with both processes' samples."""
    recipe = copy.deepcopy(TINY_TOY)
    recipe["runtime"] = {"device": "cpu"}
    recipe["student"]["distillers"].append({"name": "crd", "weight": 0.8, "params": {"num_negatives": 16}})
    path = write_recipe(recipe)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "kdcore.cli", "run", str(path), "--run-dir", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    for stage in ("teacher", "student"):
        assert json.loads((run / stage / "distributed.json").read_text()) == {"world_size": 2, "identical_weights": True}
        log = [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in log] == [1, 2, 3]  # written by rank 0 only
    summary = json.loads((run / "summary.json").read_text())
    assert 0 < summary["student"]["test"]["top1"] <= 100
    assert result.stdout.count("run directory:") == 1


def test_torchrun_with_compiled_passes_records_taps_and_keeps_ranks_identical(write_recipe, tmp_path):
    """torch.compile over DistributedDataParallel: the student's pooled tap (PKT) is recorded
    through the compiled, wrapped forward, and both ranks end identical."""
    recipe = copy.deepcopy(TINY_TOY)
    recipe["runtime"] = {"device": "cpu", "compile": True}
    recipe["teacher"]["epochs"] = recipe["student"]["epochs"] = 2
    recipe["student"]["distillers"].append({"name": "pkt", "weight": 1.0})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "kdcore.cli", "run", str(write_recipe(recipe)), "--run-dir", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("teacher", "student"):
        assert json.loads((tmp_path / "run" / stage / "distributed.json").read_text())["identical_weights"]
    log = [json.loads(line) for line in (tmp_path / "run/student/metrics.jsonl").read_text().splitlines()]
    assert all(0 < record["train/pkt"] < float("inf") for record in log)


def test_each_process_takes_its_share_of_every_global_batch():
    split = Split(inputs=torch.arange(10.0)[:, None], labels=torch.zeros(10, dtype=torch.long))
    shares = []
    for rank in (0, 1):
        generator = torch.Generator().manual_seed(3)
        batches = training_batches(split, torch.arange(10), 4, drop_last=False, generator=generator,
                                   device=torch.device("cpu"), rank=rank, world_size=2)
        shares.append([batch.index.tolist() for batch in batches])
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert shares[0] == [order[0:2], order[4:6]] and shares[1] == [order[2:4], order[6:8]]  # last 2 dropped
    assert world_size() == 1
