"""Sweeps split into shards (``--shard I/N``) that run at once on one run directory and teacher
store, ``kdcore status``, and the shards as an array through submitit's local executor."""

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kdcore.errors import KdcoreError
from kdcore.runs.launch import peel_launcher, slurm_parameters
from kdcore.runs.layout import RunLock
from kdcore.runs.shards import parse_shard, partition
from tests.conftest import TINY_TOY, run_cli

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240


def sweep_recipe(write_recipe):
    recipe = dict(copy.deepcopy(TINY_TOY), matrix={"seed": [0, 1], "student.ce_weight": [0.25, 0.5]})
    recipe["teacher"]["epochs"] = 1
    recipe["student"]["epochs"] = 1
    return write_recipe(recipe)


def test_shards_partition_the_variants_deterministically_balanced_and_grouped_by_teacher():
    items = [f"t{t}-s{s}" for t in range(5) for s in range(3)]  # 5 teachers × 3 students
    group = lambda item: item.split("-")[0]  # noqa: E731
    for count in (1, 2, 3, 4, 5, 7, 15, 16, 40):
        shards = partition(items, count, group)
        assert len(shards) == count
        flat = [item for shard in shards for item in shard]
        assert sorted(flat) == sorted(items) and len(flat) == len(items)  # each in exactly one shard
        sizes = [len(shard) for shard in shards]
        assert max(sizes) - min(sizes) <= 1
        assert partition(list(items), count, group) == shards  # deterministic
    assert [sorted({group(i) for i in shard}) for shard in partition(items, 5, group)] == [[f"t{t}"] for t in range(5)]
    # the variants of a teacher are kept together even where the matrix interleaves them
    interleaved = [f"t{t}-s{s}" for s in range(3) for t in range(2)]
    assert [{group(i) for i in shard} for shard in partition(interleaved, 2, group)] == [{"t0"}, {"t1"}]


def test_parse_shard():
    assert (parse_shard("0/4").index, parse_shard("3/4").count) == (0, 4)
    for bad, said in (("4/4", "from 0 to 3"), ("1", "expected I/N"), ("a/b", "expected I/N"), ("0/0", "at least 1"),
                      ("-1/2", "expected I/N")):
        with pytest.raises(KdcoreError, match=said) as error:
            parse_shard(bad)
        assert "\n" not in str(error.value)


TRACER = r"""
import builtins, io, os, sys
fd = os.open(os.environ["WRITE_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
def note(path):
    os.write(fd, (os.path.realpath(os.fspath(path)) + "\n").encode())
real_open = io.open
def traced(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
        note(file)
    return real_open(file, mode, *args, **kwargs)
builtins.open = io.open = traced
for name in ("replace", "rename", "link"):
    def wrap(real):
        def moved(source, target, *args, **kwargs):
            result = real(source, target, *args, **kwargs)
            note(target)
            return result
        return moved
    setattr(os, name, wrap(getattr(os, name)))
sys.argv = ["kdcore", *sys.argv[1:]]
from kdcore.cli import main
main()
"""


def written_files(log: Path) -> set[str]:
    """What a shard wrote, less lock files (opened to be locked, never written) and temporaries."""
    names = set(log.read_text().split()) if log.exists() else set()
    return {n for n in names if not n.endswith((".lock", ".tmp"))}


def test_two_shards_at_once_share_the_run_directory_and_the_teacher_store(write_recipe, tmp_path, monkeypatch,
                                                                           capsys):
    path = sweep_recipe(write_recipe)
    sweep = tmp_path / "sweep"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    processes = []
    for index in (0, 1):
        env_i = dict(env, WRITE_LOG=str(tmp_path / f"writes-{index}.txt"))
        processes.append(subprocess.Popen(
            [sys.executable, "-c", TRACER, "run", str(path), "--run-dir", str(sweep), "--shard", f"{index}/2"],
            env=env_i, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=TIMEOUT)[0] for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output
        assert "kdcore report" in output and "2 of 4 runs" in output
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert runs == ["seed=0,ce_weight=0.25", "seed=0,ce_weight=0.5", "seed=1,ce_weight=0.25", "seed=1,ce_weight=0.5"]
    assert all((sweep / run / "summary.json").exists() for run in runs)
    stored = [p for p in (tmp_path / "teachers").iterdir() if not p.name.startswith(".")]
    assert len(stored) == 2  # one teacher per seed
    for teacher in stored:  # each trained once: one epoch record, none interleaved
        assert [json.loads(line)["epoch"] for line in (teacher / "metrics.jsonl").read_text().splitlines()] == [1]
    for run in runs:
        assert [json.loads(line)["epoch"] for line in (sweep / run / "student/metrics.jsonl").read_text()
                .splitlines()] == [1]
    first, second = (written_files(tmp_path / f"writes-{i}.txt") for i in (0, 1))
    assert first and second
    assert not first & second, f"written by both shards: {sorted(first & second)}"
    assert {Path(p).name for p in first | second} >= {"recipe.yaml", "env.shard-0.json", "env.shard-1.json",
                                                     "status.json", "summary.json"}
    assert not (sweep / "report.md").exists()  # kdcore report, once all shards are done

    code, out, err = run_cli(monkeypatch, capsys, "status", sweep)
    assert code == 0, err
    assert out.count("done") >= 4 and "4 runs: 4 done, 0 running, 0 failed, 0 pending" in out
    assert max(len(line) for line in out.splitlines()) <= 80

    # another sweep of the same recipe with a third seed: one run done, one failed, one running, one pending
    other = tmp_path / "other"
    other.mkdir()
    top = yaml.safe_load((sweep / "recipe.yaml").read_text())
    top["matrix"] = {"seed": [0, 1, 2, 3], "student.ce_weight": [0.25]}
    (other / "recipe.yaml").write_text(yaml.safe_dump(top))
    shutil.copytree(sweep / "seed=0,ce_weight=0.25", other / "seed=0,ce_weight=0.25", symlinks=True)
    (other / "seed=1,ce_weight=0.25").mkdir()
    (other / "seed=1,ce_weight=0.25/status.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    with RunLock(other / "seed=2,ce_weight=0.25"):
        code, out, err = run_cli(monkeypatch, capsys, "status", other, "--json")
    assert code == 0, err
    states = {r["run"]: (r["state"], r["detail"]) for r in json.loads(out)["runs"]}
    assert states["seed=0,ce_weight=0.25"][0] == "done"
    assert states["seed=1,ce_weight=0.25"] == ("failed", "boom")
    assert states["seed=2,ce_weight=0.25"] == ("running", f"pid {os.getpid()}")
    assert states["seed=3,ce_weight=0.25"] == ("pending", "")

    code, out, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", sweep, "--shard", "0/2",
                             "--set", "student.epochs=2")
    assert code == 2 and "different recipe" in err and len(err.strip().splitlines()) == 1


def test_launcher_settings_and_a_missing_submitit(write_recipe, tmp_path, monkeypatch, capsys):
    overrides, settings = peel_launcher(["seed=1", "launcher.partition=gpu", "launcher.gpus_per_node=1",
                                         "launcher.timeout_min=90", "launcher.array_parallelism=4"])
    assert overrides == ["seed=1"]
    assert slurm_parameters(settings, "kdcore-tiny") == {"job_name": "kdcore-tiny", "partition": "gpu",
                                                         "gpus_per_node": 1, "time": 90, "array_parallelism": 4}
    with pytest.raises(KdcoreError, match="unknown launcher setting 'gpu'"):
        peel_launcher(["launcher.gpu=1"])
    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed
    code, _, err = run_cli(monkeypatch, capsys, "run", sweep_recipe(write_recipe), "--run-dir", tmp_path / "s",
                           "--launcher", "slurm")
    assert code == 2 and "pip install 'kdcore[slurm]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_submitit_runs_the_shards_as_a_local_array(write_recipe, tmp_path):
    submitit = pytest.importorskip("submitit")
    from kdcore.runs.launch import LOGS, submit

    path = sweep_recipe(write_recipe)
    sweep = tmp_path / "sweep"
    executor = submitit.LocalExecutor(folder=sweep / LOGS)
    executor.update_parameters(timeout_min=TIMEOUT // 60)
    jobs = submit(executor, path, [], sweep, None, 2)
    assert len(jobs) == 2
    deadline = time.monotonic() + TIMEOUT
    try:
        while not all(job.done() for job in jobs) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert all(job.done() for job in jobs), "the array did not finish in time"
        assert [job.result() for job in jobs] == [0, 0]
    finally:
        for job in jobs:
            if not job.done():
                job.cancel()
    assert sum((p / "summary.json").exists() for p in sweep.iterdir() if p.is_dir()) == 4
    assert list((sweep / LOGS).glob("*_log.out"))  # the tasks' logs in the run directory


FAKE_SBATCH = """#!/usr/bin/env bash
# Records the submission script, as a SLURM controller would receive it, and answers as sbatch.
cp "$1" "{record}"
echo "Submitted batch job 4242"
"""
FAKE_SRUN = """#!/usr/bin/env bash
# Runs the task's command in this shell, its output where sbatch's script asks (%A %a %t %j filled in).
out=/dev/stdout; err=/dev/stderr
while [[ $# -gt 0 ]]; do
  case "$1" in
    --output) out=$2; shift 2;; --error) err=$2; shift 2;; --*) shift;; *) break;;
  esac
done
fill() {{ local p=${{1//%A/$SLURM_ARRAY_JOB_ID}}; p=${{p//%a/$SLURM_ARRAY_TASK_ID}}; p=${{p//%t/0}}; echo "${{p//%j/$SLURM_JOB_ID}}"; }}
exec "$@" > "$(fill "$out")" 2> "$(fill "$err")"
"""


def test_the_slurm_launcher_submits_one_array_that_runs_as_slurm_would(write_recipe, tmp_path, monkeypatch, capsys):
    """``--launcher slurm`` through submitit's real SlurmExecutor against stand-ins for ``sbatch``
    and ``srun``: the array script asks for the settings given, and running its tasks as SLURM
    would (one process per array index, SLURM's environment) trains every run of the sweep."""
    pytest.importorskip("submitit")
    from kdcore.runs.launch import LOGS

    bin_dir, record = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH.format(record=record)), ("srun", FAKE_SRUN.format())):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sweep = tmp_path / "sweep"
    code, out, err = run_cli(monkeypatch, capsys, "run", sweep_recipe(write_recipe), "--run-dir", sweep,
                             "--launcher", "slurm", "--set", "launcher.partition=gpu", "--set", "launcher.shards=2",
                             "--set", "launcher.cpus_per_task=1", "--set", "launcher.timeout_min=30",
                             "--set", "launcher.array_parallelism=1", "--set", "launcher.account=kd")
    assert code == 0, err
    assert "submitted SLURM array job 4242: 2 shards of 4 runs" in " ".join(out.split())
    script = record.read_text()
    for flag in ("--array=0-1%1", "--partition=gpu", "--cpus-per-task=1", "--time=30", "--account=kd",
                 "--job-name=kdcore-tiny", f"--output={sweep / LOGS}/%A_%a_0_log.out"):
        assert f"#SBATCH {flag}" in script, script
    assert not any(p.is_dir() and (p / "summary.json").exists() for p in sweep.iterdir())  # nothing ran yet
    for task in range(2):
        environment = {**os.environ, "SLURM_JOB_ID": f"{4243 + task}", "SLURM_ARRAY_JOB_ID": "4242",
                       "SLURM_ARRAY_TASK_ID": str(task), "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1",
                       "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "node1"}
        subprocess.run(["bash", str(record)], env=environment, check=True, timeout=TIMEOUT, cwd=tmp_path)
    assert sum((p / "summary.json").exists() for p in sweep.iterdir() if p.is_dir()) == 4
    for task in range(2):
        assert (sweep / LOGS / f"4242_{task}_0_result.pkl").exists()
        log = (sweep / LOGS / f"4242_{task}_0_log.out").read_text()
        assert f"shard {task}/2: 2 of 4 runs" in log and "Job completed successfully" in log
    code, out, _ = run_cli(monkeypatch, capsys, "status", sweep)
    assert code == 0 and "4 done" in " ".join(out.split())
