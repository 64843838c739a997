"""Bad files and faults: each is one line naming the file, field or plugin and the fix, exit code
2 for bad input and 1 for a failed run, no traceback; worker processes die with their parent and
one worker's death fails only its run; Ctrl-C says what was saved and how to resume."""

import copy
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.conftest import TINY_TOY, run_cli

ONE_EPOCH = ["--set", "teacher.epochs=1", "--set", "student.epochs=1"]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """One finished tiny run (3 epochs per stage), trained once for the tests of this module."""
    from kdcore.cli import main

    base = tmp_path_factory.mktemp("base")
    path = base / "recipe.yaml"
    path.write_text(yaml.safe_dump(TINY_TOY, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["kdcore", "run", str(path), "--run-dir", str(base / "run")])
        with pytest.raises(SystemExit) as exit_info:
            main()
            raise SystemExit(0)
    assert exit_info.value.code == 0
    return base


@pytest.fixture
def finished_run(base_run, tmp_path):
    """A copy of the finished tiny run at tmp_path/run, with its teacher store beside it, and
    its recipe."""
    shutil.copytree(base_run / "run", tmp_path / "run", symlinks=True)
    shutil.copytree(base_run / "teachers", tmp_path / "teachers", symlinks=True)
    shutil.copy(base_run / "recipe.yaml", tmp_path / "recipe.yaml")
    assert (tmp_path / "run/teacher/model.safetensors").resolve().is_relative_to(tmp_path)
    return tmp_path / "recipe.yaml", tmp_path / "run"


def reopen_student(run: Path) -> Path:
    """Make the student stage of a finished run resume from its checkpoint."""
    (run / "summary.json").unlink()
    (run / "student/model.safetensors").unlink()
    return run / "student/checkpoint.pt"


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize("damage, reason", [
    ("empty", r"not a readable kdcore checkpoint \(empty file\)"),
    ("truncated", r"not a readable kdcore checkpoint \((PytorchStreamReader failed|\[Errno 22\] Invalid argument)"),
    ("foreign", r"not a readable kdcore checkpoint \(Weights only load failed"),
    ("not_a_dict", r"not a kdcore checkpoint \(a list, not a dict\)"),
    ("negative_epochs", r"epochs_done is -5, outside the student stage's 1..3"),
    ("too_many_epochs", r"epochs_done is 7, outside the student stage's 1..3"),
    ("no_optimizer", r"not a kdcore checkpoint \(no 'optimizer'\)"),
    ("other_network", r"does not fit the student stage \(Missing key\(s\) in state_dict: \"model.classifier"),
    ("pin_elsewhere", r"'pinned' names files other than the stage's best weights at epoch 3"),
])
def test_a_bad_checkpoint_is_one_line_naming_it_and_the_fix(damage, reason, finished_run, monkeypatch, capsys):
    path, run = finished_run
    checkpoint = reopen_student(run)
    data = checkpoint.read_bytes()
    state = torch.load(checkpoint, weights_only=True)
    if damage == "empty":
        checkpoint.write_bytes(b"")
    elif damage == "truncated":
        checkpoint.write_bytes(data[: len(data) // 2])
    elif damage == "foreign":
        torch.save({"epochs_done": 1, "evil": Path("/")}, checkpoint)  # a class weights_only refuses
    elif damage == "not_a_dict":
        torch.save([1, 2], checkpoint)
    elif damage in ("negative_epochs", "too_many_epochs"):
        torch.save({**state, "epochs_done": -5 if damage == "negative_epochs" else 7}, checkpoint)
    elif damage == "no_optimizer":
        torch.save({k: v for k, v in state.items() if k != "optimizer"}, checkpoint)
    elif damage == "other_network":
        trainable = {k: v for k, v in state["trainable"].items() if "classifier" not in k}
        torch.save({**state, "trainable": trainable}, checkpoint)
    elif damage == "pin_elsewhere":  # restoring it would write over a file outside the stage
        torch.save({**state, "pinned": {"best.safetensors": "../../recipe.yaml"}}, checkpoint)
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, "--resume")
    line = one_line(err)
    assert code == 2, err
    assert str(checkpoint) in line and re.search(reason, line), line
    assert f"delete it to train this stage again from epoch 1 (rm {checkpoint})" in line


@pytest.mark.parametrize("damage", ["missing", "extra", "architecture", "empty", "not_safetensors"])
def test_a_bad_teacher_checkpoint_is_one_line(damage, finished_run, write_recipe, tmp_path, monkeypatch, capsys):
    _, run = finished_run
    weights = load_file(str(run / "teacher/model.safetensors"))
    bad = tmp_path / "teacher.safetensors"
    recipe = copy.deepcopy(TINY_TOY)
    del recipe["teacher"]["objective"]
    recipe["teacher"]["checkpoint"] = str(bad)
    if damage == "missing":
        save_file({k: v for k, v in weights.items() if not k.startswith("classifier")}, str(bad))
        expected = "missing: classifier"
    elif damage == "extra":
        save_file({**weights, "head.weight": torch.zeros(2, 2)}, str(bad))
        expected = "unexpected: head.weight"
    elif damage == "architecture":
        recipe["teacher"]["arch"]["params"]["hidden"] = [32]
        save_file(weights, str(bad))
        expected = "weights do not fit MLP"
    elif damage == "empty":
        bad.write_bytes(b"")
        expected = "cannot read weights"
    else:
        torch.save(weights, bad)
        expected = "cannot read weights"
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe, "load.yaml"), "--run-dir", tmp_path / "l")
    line = one_line(err)
    assert code == 2 and str(bad) in line and expected in line, line


def test_a_device_that_is_not_there_is_named_with_the_devices_present(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = dict(copy.deepcopy(TINY_TOY), runtime={"device": "cuda:99"})
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--out", tmp_path / "runs")
    line = one_line(err)
    assert code == 2
    assert line.startswith("error: runtime.device: cuda:99 is not on this machine (devices present: cpu")
    assert "set runtime.device to one of them, or to auto" in line
    assert not (tmp_path / "runs").exists()  # refused before any folder is made


def test_report_of_a_file_or_a_missing_folder_is_refused_and_creates_nothing(finished_run, tmp_path, monkeypatch,
                                                                            capsys):
    _, run = finished_run
    code, _, err = run_cli(monkeypatch, capsys, "report", run / "summary.json")
    assert code == 2 and "summary.json: is a file, not a run directory; give the folder that holds it" in one_line(err)
    code, _, err = run_cli(monkeypatch, capsys, "report", tmp_path / "nowhere")
    assert code == 2 and "nowhere: no such run directory" in one_line(err)
    assert not (tmp_path / "nowhere").exists()


def immutable(folder: Path) -> bool:
    """Make ``folder`` unwritable, also for root (chattr +i) where chmod is not enough."""
    folder.chmod(0o555)
    probe = folder / "probe"
    try:
        probe.mkdir()
    except OSError:
        return True
    probe.rmdir()
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return True
    return False


def test_a_read_only_output_folder_is_one_line(write_recipe, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "read-only"
    locked.mkdir()
    if not immutable(locked):
        pytest.skip("cannot make a folder read-only here")
    try:
        code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(TINY_TOY), "--out", locked / "runs")
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
        locked.chmod(0o755)
    line = one_line(err)
    assert code == 2 and f"{locked / 'runs'}" in line and "pick a writable folder with --out" in line, line


def test_a_full_disk_names_the_file_fails_the_run_and_keeps_the_checkpoint(finished_run, monkeypatch, capsys):
    """The write of a checkpoint fails as on a full disk: one line naming checkpoint.pt (not
    torch's ``unexpected pos``), exit 1; the previous checkpoint is intact and resume works."""
    path, run = finished_run
    checkpoint = reopen_student(run)
    (run / "student/metrics.jsonl").unlink()
    checkpoint.unlink()  # the stage trains again from epoch 1 and writes checkpoints
    real = Path.write_bytes

    def full(self, data):
        if self.name.startswith(".checkpoint.pt.") and "student" in str(self):
            real(self, bytes(data)[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_bytes", full)
        code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, "--resume")
    line = one_line(err)
    assert code == 1
    assert line == (f"error: {checkpoint}: no space left on the device (or over quota); free space there, or pick "
                    "another --out/--teachers, then continue with --resume (checkpoints are intact)")
    assert not checkpoint.exists() and not list(checkpoint.parent.glob(".*.tmp"))
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, "--resume")
    assert code == 0, err


def test_a_really_full_file_system_names_the_file(finished_run, tmp_path, monkeypatch, capsys):
    """On a real file system with no space left (a 256 KiB tmpfs; needs root)."""
    path, _ = finished_run
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small file system here")
    try:
        run = mount / "run"
        code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, "--teachers", tmp_path / "teachers")
        assert code == 0, err
        reopen_student(run)
        (run / "student/metrics.jsonl").unlink()
        (run / "student/checkpoint.pt").unlink()
        with open(mount / "filler", "wb") as filler:  # leave two pages: small writes pass, a checkpoint not
            free = os.statvfs(mount)
            filler.write(b"\0" * ((free.f_bavail - 2) * free.f_bsize))
        code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, "--resume",
                               "--teachers", tmp_path / "teachers")
        line = one_line(err)
        assert code == 1 and "no space left on the device" in line and str(run) in line, line
        (mount / "filler").unlink()
        code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", run, "--resume",
                               "--teachers", tmp_path / "teachers")
        assert code == 0, err
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# ---------------------------------------------------------------- faults of processes


def children(pid: int) -> set[int]:
    """Live (not zombie) child processes of ``pid`` other than multiprocessing's resource tracker."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z" and b"resource_tracker" not in command:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def sweep_recipe(write_recipe, values):
    recipe = dict(copy.deepcopy(TINY_TOY), matrix={"student.ce_weight": values})
    recipe["data"]["params"]["n_train"] = 2000
    recipe["student"]["epochs"] = 4
    recipe["runtime"] = {"device": "cpu", "jobs": 2, "threads": 1}
    return write_recipe(recipe)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_their_parent(write_recipe, tmp_path):
    path = sweep_recipe(write_recipe, [0.25, 0.5])
    parent = subprocess.Popen([sys.executable, "-m", "kdcore.cli", "run", str(path), "--run-dir", str(tmp_path / "s")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(children(parent.pid)) == 2), "the two workers did not start"
        workers = children(parent.pid)
        assert wait_for(lambda: any((tmp_path / "teachers").glob("*/metrics.jsonl"))), "no training began"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_for(lambda: not any(alive(pid) for pid in workers), seconds=10), "workers outlived the parent"
    finally:
        parent.kill()
        parent.wait()
        for pid in children(parent.pid) | locals().get("workers", set()):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_worker_fails_its_run_only_and_the_sweep_says_how_to_retry(write_recipe, tmp_path, monkeypatch,
                                                                             capsys):
    path = sweep_recipe(write_recipe, [0.25, 0.5])
    sweep = tmp_path / "s"
    parent = subprocess.Popen([sys.executable, "-m", "kdcore.cli", "run", str(path), "--run-dir", str(sweep)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(children(parent.pid)) == 2), "the two workers did not start"
        assert wait_for(lambda: any((tmp_path / "teachers").glob("*/metrics.jsonl"))), "no training began"
        victim = min(children(parent.pid))
        os.kill(victim, signal.SIGKILL)
        _, err = parent.communicate(timeout=300)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == 1, err
    assert "Traceback" not in err and "BrokenProcessPool" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]  # workers share stderr
    assert len(lines) == 2, err
    assert re.match(rf"error: ce_weight=0\.(25|5): its worker process \(pid {victim}\) was killed by SIGKILL", lines[0])
    retry = f"kdcore run {path} --run-dir {sweep} --resume"
    assert re.match(r"error: 1 of 2 runs failed \(ce_weight=0\.(25|5)\); the others finished; ", lines[1])
    assert lines[1].endswith(f"retry them with: {retry}")
    finished = [run for run in ("ce_weight=0.25", "ce_weight=0.5") if (sweep / run / "summary.json").exists()]
    assert len(finished) == 1
    code, out, err = run_cli(monkeypatch, capsys, *shlex.split(retry)[1:])
    assert code == 0, err
    assert "1 of 2 runs already finished" in out


def test_a_failed_run_of_a_sequential_sweep_does_not_stop_the_others(write_recipe, tmp_path, monkeypatch, capsys):
    from kdcore.distill.run import Run

    recipe = dict(copy.deepcopy(TINY_TOY), matrix={"seed": [0, 1]})
    real = Run.execute

    def fail_seed_0(self):
        if self.recipe.seed == 0:
            raise RuntimeError("boom")
        return real(self)

    monkeypatch.setattr(Run, "execute", fail_seed_0)
    path = write_recipe(recipe)
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "s", *ONE_EPOCH)
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[0] == f"error: seed=0: RuntimeError: boom; traceback in {tmp_path / 's/seed=0/error.log'}"
    assert "1 of 2 runs failed (seed=0)" in lines[1] and "--resume" in lines[1]
    assert (tmp_path / "s/seed=1/summary.json").exists()
    assert "RuntimeError: boom" in (tmp_path / "s/seed=0/error.log").read_text()


def test_ctrl_c_says_what_was_saved_and_the_exact_command_that_resumes(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = copy.deepcopy(TINY_TOY)
    recipe["data"]["params"]["n_train"] = 4000
    recipe["student"]["epochs"] = 30
    recipe["runtime"]["checkpoint_every"] = 1  # a checkpoint after the first epoch, 29 before the end
    path = write_recipe(recipe)
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "kdcore.cli", "run", str(path), "--set", "seed=0", "--run-dir", str(run)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # a suite started in the background by a shell without job control ignores SIGINT, and
        # a child would inherit that: Ctrl-C reaches a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        # after the first student checkpoint (written after the epoch's metrics line: too early)
        checkpoint = run / "student/checkpoint.pt"
        assert wait_for(lambda: checkpoint.exists() or process.poll() is not None)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    line = one_line(err)
    match = re.fullmatch(r"interrupted: saved teacher trained, student epoch (\d+)/30; resume with: (.+)", line)
    assert match, line
    assert match[2] == f"kdcore run {path} --set seed=0 --run-dir {run} --resume"
    assert torch.load(run / "student/checkpoint.pt", weights_only=True)["epochs_done"] == int(match[1])
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"


def test_the_default_thread_count_follows_the_free_cores_and_the_runs_at_once(monkeypatch):
    from kdcore.runs import sweep

    monkeypatch.setattr(sweep, "usable_cpus", lambda: 8)
    monkeypatch.setattr(sweep, "busy_cpus", lambda cpus: 0)
    assert [sweep.default_threads(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setattr(sweep, "busy_cpus", lambda cpus: 6)  # two cores free
    assert [sweep.default_threads(n) for n in (1, 2, 4)] == [2, 1, 1]
    monkeypatch.setattr(sweep, "busy_cpus", lambda cpus: 8)  # all busy: one thread, never zero
    assert sweep.default_threads(1) == 1


def test_busy_cores_count_processes_that_just_started(monkeypatch):
    """The load average lags behind processes that just started: a short sample counts too."""
    from kdcore.runs import sweep

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(sweep, "_sampled_busy", lambda seconds: 1.8)
    assert sweep.busy_cpus(2) == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    monkeypatch.setattr(sweep, "_sampled_busy", lambda seconds: 0.1)
    assert sweep.busy_cpus(2) == 1
