"""The teacher-objective comparison table, read cell by cell against the runs' summaries."""

import csv
import json

import pytest
import yaml

from kdcore.results import comparison
from kdcore.results.collect import collect
from kdcore.results.report import write_report


def fake_run(root, teacher, student, objective, method, seed, teacher_top1, student_top1, best_top1=None):
    directory = root / f"{teacher}-{student}-{objective}-{method}-{seed}"
    directory.mkdir(parents=True)
    recipe = {
        "overrides": {"teacher.objective.name": objective, "seed": seed},
        "teacher": {"arch": {"name": teacher}, "objective": {"name": objective}},
        "student": {"arch": {"name": student}, "distillers": [{"name": n, "label": None} for n in method.split("+")]},
    }
    (directory / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    summary = {"teacher": {"test": {"top1": teacher_top1}}, "student": {"test": {"top1": student_top1}}}
    if best_top1 is not None:
        summary["student"]["best_val"] = {"epoch": 3, "val_top1": 50.0, "test": {"top1": best_top1}}
    (directory / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def runs(tmp_path):
    for seed, (ce, mse) in enumerate([(70.0, 71.0), (72.0, 71.5)]):
        fake_run(tmp_path, "wrn-40-2", "wrn-16-2", "ce", "kd", seed, 75.6, ce, best_top1=ce + 1)
        fake_run(tmp_path, "wrn-40-2", "wrn-16-2", "mse", "kd", seed, 75.0, mse, best_top1=mse + 1)
        fake_run(tmp_path, "wrn-40-2", "wrn-16-2", "ce", "at+kd", seed, 75.6, 73.0)
        fake_run(tmp_path, "wrn-40-2", "wrn-16-2", "mse", "at+kd", seed, 75.0, 72.0)
    fake_run(tmp_path, "vgg13", "vgg8", "ce", "kd", 0, 74.6, 72.9)
    return collect([tmp_path])


def test_cells_are_mean_and_std_over_seeds_with_differences_to_ce(runs):
    table = comparison.compare(runs)
    assert table.pairs == ["vgg13→vgg8", "wrn-40-2→wrn-16-2"]  # in the order the runs are found
    assert table.objectives == ["ce", "mse"] and table.methods == ["kd", "at+kd"]
    mean, std, n = table.stats("last epoch", "kd", "wrn-40-2→wrn-16-2", "ce")
    assert (mean, n) == (71.0, 2) and std == pytest.approx(1.41421, rel=1e-4)
    assert table.difference("last epoch", "kd", "wrn-40-2→wrn-16-2", "mse") == pytest.approx(0.25)
    assert table.difference("last epoch", "at+kd", "wrn-40-2→wrn-16-2", "mse") == pytest.approx(-1.0)
    assert table.stats("last epoch", "teacher", "wrn-40-2→wrn-16-2", "mse")[0] == pytest.approx(75.0)
    assert table.difference("last epoch", "kd", "vgg13→vgg8", "mse") is None
    assert table.stats("best on validation", "kd", "wrn-40-2→wrn-16-2", "mse")[0] == pytest.approx(72.25)
    assert table.stats("best on validation", "at+kd", "wrn-40-2→wrn-16-2", "ce") is None


def test_report_writes_the_comparison_markdown_csv_and_plots(runs, tmp_path):
    written = {p.name for p in write_report(tmp_path, runs)}
    assert {"report.md", "comparison.csv", "objective_difference.png"} <= written
    text = (tmp_path / "report.md").read_text()
    assert "## Student top-1 (%) by method and teacher objective (last epoch)" in text
    assert "## Student top-1 (%) by method and teacher objective (best on validation)" in text
    kd_row = next(line for line in text.splitlines() if line.startswith("| kd |"))
    assert "71.00 ± 1.41 (n=2)" in kd_row and "**+0.25**" in kd_row
    assert "| at+kd |" in text and "-1.00" in text
    rows = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    row = next(r for r in rows if r["selection"] == "last epoch" and r["row"] == "kd" and r["objective"] == "mse"
               and r["pair"] == "wrn-40-2→wrn-16-2")
    assert float(row["mean"]) == pytest.approx(71.25) and float(row["minus_ce"]) == pytest.approx(0.25)
