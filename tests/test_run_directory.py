"""The run directory's guarantees: one process trains in it at a time, a torn metrics line does
not block resume, "the latest run" is the one created last and never one that failed before
training, temporary files of killed writers are removed, and a changed recipe is named field by
field."""

import copy
import json
import os
import subprocess
import sys
import time

import pytest

from kdcore.runs.layout import (
    STATUS,
    RunLock,
    StageFiles,
    latest_run_directory,
    remove_stale_temporaries,
)
from tests.conftest import TINY_TOY, run_cli

ONE_EPOCH = ["--set", "teacher.epochs=1", "--set", "student.epochs=1"]


def dead_pid() -> int:
    """A pid that no process has now."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_process_is_refused_a_locked_run_directory_naming_the_holder(write_recipe, tmp_path, monkeypatch,
                                                                                capsys):
    path = write_recipe(TINY_TOY)
    run = tmp_path / "run"
    assert run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, *ONE_EPOCH)[0] == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from kdcore.runs.layout import RunLock; "
         f"lock = RunLock(Path({str(run)!r})).acquire(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = (run / "student/metrics.jsonl").read_text()
        code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, "--resume", *ONE_EPOCH)
        assert code == 2 and err.strip().splitlines() == [err.strip()], err
        assert f"another kdcore process (pid {holder.pid}) is training in this run directory" in err
        assert str(run) in err and f"kill {holder.pid}" in err
        assert (run / "student/metrics.jsonl").read_text() == before
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the lock went with it
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, "--resume", *ONE_EPOCH)
    assert code == 0, err
    assert (run / "kdcore.lock").read_text().strip() == str(os.getpid())


def test_the_lock_is_held_while_training_and_released_after(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(Exception, match=rf"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()


def test_a_torn_last_metrics_line_is_dropped_on_resume_and_a_bad_middle_line_is_named(
        write_recipe, tmp_path, monkeypatch, capsys):
    path = write_recipe(TINY_TOY)
    run = tmp_path / "run"
    assert run_cli(monkeypatch, capsys, "run", path, "--run-dir", run)[0] == 0
    log = run / "student/metrics.jsonl"
    good = log.read_text()
    (run / "summary.json").unlink()
    (run / "student/model.safetensors").unlink()
    log.write_text(good + '{"epoch": 4, "train/lo')  # a kill in the middle of an append
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, "--resume")
    assert code == 0, err
    assert log.read_text() == good
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3]

    lines = good.splitlines()
    log.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(Exception, match=r"metrics.jsonl:2: not an epoch record of kdcore; delete that line"):
        StageFiles(run / "student").records()


def make_run(parent, name, created_ns=None, status="running", trained=True):
    directory = parent / name
    directory.mkdir(parents=True)
    (directory / "recipe.yaml").write_text("name: tiny\n")
    if created_ns is not None:
        (directory / STATUS).write_text(json.dumps({"created_ns": created_ns, "status": status, "trained": trained}))
    return directory


def test_the_latest_run_is_the_one_created_last_not_the_last_name(tmp_path):
    parent = tmp_path / "runs/tiny"
    make_run(parent, "20260101-120000-9", created_ns=1_000)
    tenth = make_run(parent, "20260101-120000-10", created_ns=2_000)
    assert latest_run_directory(tmp_path / "runs", "tiny") == tenth
    # a later run that failed before training anything is never the latest
    make_run(parent, "20260101-120000-11", created_ns=3_000, status="failed", trained=False)
    assert latest_run_directory(tmp_path / "runs", "tiny") == tenth
    # one that failed after training some epochs is: it is worth resuming
    trained = make_run(parent, "20260101-120000-12", created_ns=4_000, status="failed", trained=True)
    assert latest_run_directory(tmp_path / "runs", "tiny") == trained


def test_runs_without_a_status_file_are_ordered_by_when_their_recipe_was_written(tmp_path):
    parent = tmp_path / "runs/tiny"
    ninth, tenth = make_run(parent, "20260101-120000-9"), make_run(parent, "20260101-120000-10")
    os.utime(ninth / "recipe.yaml", ns=(1_000_000_000, 1_000_000_000))
    os.utime(tenth / "recipe.yaml", ns=(2_000_000_000, 2_000_000_000))
    assert latest_run_directory(tmp_path / "runs", "tiny") == tenth


def test_a_run_that_fails_before_its_first_epoch_is_marked_and_never_resumed_as_the_latest(
        write_recipe, tmp_path, monkeypatch, capsys):
    from kdcore.errors import KdcoreError

    path = write_recipe(TINY_TOY)
    monkeypatch.chdir(tmp_path)
    assert run_cli(monkeypatch, capsys, "run", path, *ONE_EPOCH)[0] == 0
    [good] = list((tmp_path / "runs/tiny").iterdir())
    time.sleep(0.01)

    def missing_data(self):
        raise KdcoreError("data.params.root: /nowhere does not exist; download the dataset there")

    with monkeypatch.context() as patch:
        patch.setattr("kdcore.distill.run.Run.execute", missing_data)
        code, _, err = run_cli(monkeypatch, capsys, "run", path, *ONE_EPOCH)
    assert code == 2 and "/nowhere does not exist" in err
    [failed] = [p for p in (tmp_path / "runs/tiny").iterdir() if p != good]
    status = json.loads((failed / STATUS).read_text())
    assert status["status"] == "failed" and status["trained"] is False and "/nowhere" in status["error"]

    code, out, err = run_cli(monkeypatch, capsys, "run", path, "--resume", *ONE_EPOCH)
    assert code == 0, err
    assert "1 of 1 runs already finished" in out or "already finished" in out
    assert json.loads((failed / STATUS).read_text())["status"] == "failed"  # not the one resumed


def test_temporary_files_of_killed_writers_are_removed_on_the_next_start(write_recipe, tmp_path, monkeypatch, capsys):
    path = write_recipe(TINY_TOY)
    run = tmp_path / "run"
    assert run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, *ONE_EPOCH)[0] == 0
    [stored] = [p for p in (tmp_path / "teachers").iterdir() if p.is_dir()]
    dead, alive = dead_pid(), os.getpid()
    stale = [run / "student" / f".checkpoint.pt.{dead}.tmp", stored / f".checkpoint.pt.{dead}.tmp",
             run / f".summary.json.{dead}.tmp"]
    kept = run / "student" / f".checkpoint.pt.{alive}.tmp"  # a live writer's
    for file in [*stale, kept]:
        file.write_bytes(b"half a checkpoint")
    (stored / "model.safetensors").unlink()  # the teacher stage starts again (from its checkpoint)
    (run / "summary.json").unlink()
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, "--resume", *ONE_EPOCH)
    assert code == 0, err
    assert not any(file.exists() for file in stale)
    assert kept.exists()
    kept.unlink()
    assert remove_stale_temporaries(run, recursive=True) == []


def test_a_changed_recipe_is_refused_naming_the_fields_that_differ(write_recipe, tmp_path, monkeypatch, capsys):
    path = write_recipe(TINY_TOY)
    run = tmp_path / "run"
    assert run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, *ONE_EPOCH)[0] == 0
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, "--resume",
                           "--set", "seed=5", "--set", "teacher.epochs=2", "--set", "student.epochs=1")
    assert code == 2 and err.strip().splitlines() == [err.strip()]
    assert "differs from the one this run started with in seed (0 → 5), teacher.epochs (1 → 2)" in err
    assert json.loads((run / STATUS).read_text())["status"] == "finished"  # a refusal is no failure


def test_a_matrix_run_folder_name_too_long_for_the_file_system_is_refused_before_anything_is_made(
        write_recipe, tmp_path, monkeypatch, capsys):
    recipe = dict(copy.deepcopy(TINY_TOY), matrix={"teacher.arch.params.hidden": [[16] * 100]})
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--out", tmp_path / "runs")
    assert code == 2 and err.strip().splitlines() == [err.strip()], err
    assert "matrix run folder 'hidden=" in err and "longer than the 255" in err and "shorten the matrix values" in err
    assert not (tmp_path / "runs").exists()
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(TINY_TOY), "--out", tmp_path / "runs",
                           "--set", f"name={'n' * 300}")
    assert code == 2 and "recipe name 'nnn" in err and "is 300 bytes" in err
    assert not (tmp_path / "runs").exists()
