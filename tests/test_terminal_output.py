"""What a person reads: the report's summary in an 80-column terminal (no line wrapped inside a
cell, long labels with a legend, --wide for everything), the progress bars at 80 columns, and
for a log (stdout not a terminal) plain lines per epoch, flushed; --quiet and --json."""

from __future__ import annotations

import copy
import io
import json
import re

import pytest
from rich.cells import cell_len
from rich.console import Console

from kdcore.callbacks import StageInfo
from kdcore.runs.progress import BarProgress, EventConsole, JsonProgress, LineProgress, RichProgress
from tests.conftest import TINY_TOY, run_cli
from tests.test_report import baseline_sweep, shared_teacher_sweep


def wide_lines(text: str, width: int = 80) -> list[str]:
    return [line for line in text.splitlines() if cell_len(line) > width]


# --- the report's summary ------------------------------------------------------------------------

def test_report_summary_fits_80_columns_with_every_number_whole(tmp_path, monkeypatch, capsys):
    sweep, _, _ = shared_teacher_sweep(tmp_path, methods=("kd", "kd+pkt+attention+similarity+correlation"))
    alone, _ = baseline_sweep(tmp_path)
    out = tmp_path / "merged"
    monkeypatch.setenv("COLUMNS", "80")
    code, text, err = run_cli(monkeypatch, capsys, "report", sweep, alone, "--out", out)
    assert code == 0, err
    assert wide_lines(text) == []
    data = json.loads((out / "report.json").read_text())
    for found in data["cells"]:
        d = found["difference"]
        if d is None:
            continue
        ci = f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
        row = [line for line in text.splitlines() if ci in line and f"{d['mean']:+.2f}" in line]
        assert row, ci  # the difference, its interval and W/T/L on one line: never wrapped inside a cell
        assert f"{d['wins']}/{d['ties']}/{d['losses']}" in row[0]
    assert "p(t): paired t-test, p(W): Wilcoxon signed-rank" in text
    # long group labels are shortened with a legend beneath
    assert re.search(r"^  G1 = objective=ce, kd\+pkt\+attention\+similarity\+correlation$", text, re.M)
    assert re.search(r"^  C1 = kd\+pkt\+attention\+similarity\+correlation$", text, re.M)
    assert "references (no value of the compared field)" in text and "no teacher (labels only)" in text


def test_wide_shows_every_column_and_full_labels(tmp_path, monkeypatch, capsys):
    sweep, _, _ = shared_teacher_sweep(tmp_path, seeds=range(3), methods=("kd", "kd+pkt+attention"))
    monkeypatch.setenv("COLUMNS", "80")
    code, text, _ = run_cli(monkeypatch, capsys, "report", sweep, "--wide")
    assert code == 0
    assert "teacher ECE (test)" in text and "objective=ce,distillers=kd-pkt-attention" in text
    assert "more column" not in text and " G1 " not in text


# --- progress ------------------------------------------------------------------------------------

STAGE = StageInfo("objective=mse,distillers=kd-pkt,seed=3", "student", "/tmp/x", 20, 558, 0)
RECORD = {"epoch": 4, "lr": 0.1, "train/loss": 0.512, "train/ce": 0.31, "train/kd": 0.2, "val/top1": 93.4,
          "val/nll": 0.2, "seconds": 1.23}


def test_bars_fit_80_columns_with_step_counts_and_time_left():
    display = BarProgress(Console(file=io.StringIO(), force_terminal=True, width=80), total_runs=40)
    display.on_stage_start(STAGE)
    display.on_steps(STAGE, 1116)
    display.on_epoch_end(STAGE, {**RECORD, "epoch": 2})
    progress = display._progress
    rendered = Console(file=io.StringIO(), width=80, color_system=None)
    rendered.print(progress.make_tasks_table(progress.tasks))
    text = rendered.file.getvalue()
    assert wide_lines(text) == []
    assert "mse,kd-pkt,s3 stud" in text  # the run by its matrix values
    assert "1116/11160" in text and " 0/40" in text  # whole step counts, and the runs bar
    assert re.search(r"\d:\d\d:\d\d|-:--:--", text)  # the time left
    assert "val 93.40" in text


class Log(io.StringIO):
    """A file that counts its flushes."""

    flushes = 0

    def flush(self):
        self.flushes += 1
        super().flush()


def test_plain_lines_per_epoch_flushed_for_a_log():
    log = Log()
    display = LineProgress(Console(file=log, force_terminal=False), total_runs=2, heartbeat=0.0)
    display.on_stage_start(STAGE)
    display.on_steps(STAGE, 100)
    display.on_epoch_end(STAGE, RECORD)
    display.on_stage_end(STAGE)
    display.run_finished()
    lines = log.getvalue().splitlines()
    assert lines[0] == "run objective=mse,distillers=kd-pkt,seed=3 student: 20 epochs of 558 steps"
    assert lines[1].startswith("run objective=mse,distillers=kd-pkt,seed=3 student epoch 1/20 step 100/11160 (1%)")
    assert re.fullmatch(r"run objective=mse,distillers=kd-pkt,seed=3 student epoch 4/20 loss 0\.512 "
                        r"\(ce 0\.31, kd 0\.2\) val top1 93\.40 1\.2s eta \d+:\d\d:\d\d", lines[2]), lines[2]
    assert lines[3].startswith("run objective=mse,distillers=kd-pkt,seed=3 student done in ")
    assert lines[4] == "runs done: 1/2"
    assert log.flushes >= len(lines)  # every line flushed as it is written


def test_the_display_follows_the_console():
    assert isinstance(RichProgress(Console(file=io.StringIO(), force_terminal=True), 2).display, BarProgress)
    assert isinstance(RichProgress(Console(file=io.StringIO()), 2).display, LineProgress)
    events = io.StringIO()
    progress = RichProgress(EventConsole(events=events, file=io.StringIO()), 2)
    assert isinstance(progress.display, JsonProgress)
    quiet = io.StringIO()
    silent = RichProgress(Console(file=quiet, quiet=True), 2)
    with silent:
        silent.on_stage_start(STAGE)
        silent.on_epoch_end(STAGE, RECORD)
        silent.run_finished()
    assert quiet.getvalue() == ""
    progress.on_stage_start(STAGE)
    progress.on_epoch_end(STAGE, {**RECORD, "val/nll": float("nan")})
    progress.on_stage_end(STAGE)
    progress.run_finished()
    parsed = [json.loads(line) for line in events.getvalue().splitlines()]
    assert [p["event"] for p in parsed] == ["stage_start", "epoch", "stage_end", "run_done"]
    assert parsed[1]["metrics"]["val/top1"] == 93.4 and parsed[1]["metrics"]["val/nll"] is None
    assert parsed[1]["run"] == STAGE.run and parsed[3] | {"time": 0} == {"event": "run_done", "done": 1, "total": 2, "time": 0}


# --- one tiny real sweep, with stdout not a terminal ---------------------------------------------

@pytest.fixture
def tiny(write_recipe):
    recipe = copy.deepcopy(TINY_TOY)
    recipe["teacher"]["epochs"] = recipe["student"]["epochs"] = 2
    return recipe


def test_a_sweep_logs_every_epoch_and_summarises_in_80_columns(tiny, write_recipe, tmp_path, monkeypatch, capsys):
    tiny["matrix"] = {"teacher.objective.name": ["ce", "mse"], "seed": [0, 1]}
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(monkeypatch, capsys, "run", write_recipe(tiny), "--run-dir", tmp_path / "sweep")
    assert code == 0, err
    for objective in ("ce", "mse"):
        for seed in (0, 1):
            for stage in ("teacher", "student"):
                epochs = re.findall(rf"^run objective={objective},seed={seed} {stage} epoch (\d)/2 loss [\d.]+.* "
                                    rf"val top1 [\d.]+ [\d.]+s", out, re.M)
                assert epochs == ["1", "2"], (objective, seed, stage, out)
    assert "runs done: 4/4" in out
    summary = out[out.index("mean ± std over seeds"):]
    assert wide_lines(summary) == [], summary
    assert "mse−ce" in summary and "p(t)" in summary


def test_quiet_prints_one_line_and_json_one_object_per_event(tiny, write_recipe, tmp_path, monkeypatch, capsys):
    path = write_recipe(tiny)
    code, out, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "quiet", "--quiet")
    assert code == 0, err
    assert out.strip().splitlines() == [f"1 runs; report: {tmp_path / 'quiet' / 'report.md'}"]
    code, out, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "json", "--json")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "stage_start" and names[-1] == "report"
    assert names.count("epoch") == 2  # the student's: the teacher is the stored one of the quiet run
    assert events[-1]["directory"] == str(tmp_path / "json")
    assert "run directory:" in err  # messages on stderr, stdout stays JSON
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "both", "--json", "--quiet")
    assert code == 2 and "--quiet and --json" in err
