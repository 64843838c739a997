"""The comparison table, read cell by cell against the runs' summaries: per method × pair ×
selection, mean ± std per objective and the paired difference by seed; report.md and
comparison.csv say the same."""

import csv
import json
import statistics

import pytest
import yaml

from kdcore.results import comparison
from kdcore.results.collect import collect
from kdcore.results.report import write_report

scipy_stats = pytest.importorskip("scipy.stats")


def fake_run(root, teacher, student, objective, method, seed, teacher_top1, student_top1, best_top1=None):
    directory = root / f"{teacher}-{student}-{objective}-{method}-{seed}"
    directory.mkdir(parents=True)
    recipe = {
        "overrides": {"teacher.objective.name": objective, "seed": seed},
        "seed": seed,
        "teacher": {"arch": {"name": teacher}, "objective": {"name": objective}},
        "student": {"arch": {"name": student}, "distillers": [{"name": n, "label": None} for n in method.split("+")]},
    }
    (directory / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    summary = {"teacher": {"test": {"top1": teacher_top1}}, "student": {"test": {"top1": student_top1}}}
    if best_top1 is not None:
        summary["student"]["best_val"] = {"epoch": 3, "val_top1": 50.0, "test": {"top1": best_top1}}
    (directory / "summary.json").write_text(json.dumps(summary))


KD = {"ce": [70.0, 72.0, 71.0], "mse": [71.0, 71.5, 72.5]}
AT_KD = {"ce": [73.0, 73.0, 74.0], "mse": [72.0, 72.5, 73.0]}


@pytest.fixture
def runs(tmp_path):
    for seed in range(3):
        fake_run(tmp_path, "wrn-40-2", "wrn-16-2", "ce", "kd", seed, 75.6 + seed, KD["ce"][seed], best_top1=KD["ce"][seed] + 1)
        fake_run(tmp_path, "wrn-40-2", "wrn-16-2", "mse", "kd", seed, 75.0 + seed, KD["mse"][seed], best_top1=KD["mse"][seed] + 1)
        fake_run(tmp_path, "wrn-40-2", "wrn-16-2", "ce", "at+kd", seed, 75.6 + seed, AT_KD["ce"][seed])
        fake_run(tmp_path, "wrn-40-2", "wrn-16-2", "mse", "at+kd", seed, 75.0 + seed, AT_KD["mse"][seed])
    fake_run(tmp_path, "vgg13", "vgg8", "ce", "kd", 0, 74.6, 72.9)
    return collect([tmp_path])


def test_cells_are_mean_and_std_over_seeds_with_paired_differences(runs):
    table = comparison.compare(runs)
    assert table.design.baseline == "ce" and table.design.values == ["ce", "mse"]
    kd = table.find("last epoch", "kd", "wrn-40-2→wrn-16-2")
    mean, std, n = kd.stats("ce")
    assert (mean, n) == (pytest.approx(statistics.fmean(KD["ce"])), 3) and std == pytest.approx(statistics.stdev(KD["ce"]))
    d = kd.difference("mse")
    diffs = [b - a for a, b in zip(KD["ce"], KD["mse"])]
    reference = scipy_stats.ttest_rel(KD["mse"], KD["ce"])
    assert d.mean == pytest.approx(statistics.fmean(diffs)) and d.differences == pytest.approx(diffs)
    assert d.p_value == pytest.approx(float(reference.pvalue), rel=1e-9)
    assert list(d.ci95) == pytest.approx([float(x) for x in reference.confidence_interval(0.95)], rel=1e-9)
    assert (d.wins, d.ties, d.losses) == (2, 0, 1)
    at = table.find("last epoch", "at+kd", "wrn-40-2→wrn-16-2").difference("mse")
    assert at.mean == pytest.approx(statistics.fmean(b - a for a, b in zip(AT_KD["ce"], AT_KD["mse"])))
    teacher = table.find("last epoch", "teacher", "wrn-40-2→wrn-16-2")
    assert teacher.stats("mse")[2] == 6  # no store here: each run trained its own teacher
    vgg = table.find("last epoch", "kd", "vgg13→vgg8")
    assert vgg.difference("mse") is None or vgg.difference("mse").n_pairs == 0
    best = table.find("best on validation", "kd", "wrn-40-2→wrn-16-2")
    assert best.stats("mse")[0] == pytest.approx(statistics.fmean(KD["mse"]) + 1)
    with pytest.raises(KeyError):
        table.find("best on validation", "at+kd", "wrn-40-2→wrn-16-2")


def test_report_writes_the_comparison_markdown_csv_and_plots(runs, tmp_path):
    written = {p.name for p in write_report(tmp_path, runs)}
    assert {"report.md", "comparison.csv", "objective_difference.png", "report.json"} <= written
    text = (tmp_path / "report.md").read_text()
    assert "## Paired comparison of teacher.objective.name: student top-1 (%), value − ce by seed (last epoch)" in text
    assert "(best on validation)" in text
    kd_row = next(line for line in text.splitlines() if line.startswith("| kd | wrn-40-2→wrn-16-2 |"))
    ce_mean, ce_std = statistics.fmean(KD["ce"]), statistics.stdev(KD["ce"])
    assert f"{ce_mean:.2f} ± {ce_std:.2f} (n=3)" in kd_row
    assert f"{statistics.fmean(b - a for a, b in zip(KD['ce'], KD['mse'])):+.2f}" in kd_row and "| 2/0/1 | 3 |" in kd_row
    rows = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    row = next(r for r in rows if r["selection"] == "last epoch" and r["method"] == "kd" and r["value"] == "mse"
               and r["pair"] == "wrn-40-2→wrn-16-2")
    assert float(row["mean"]) == pytest.approx(statistics.fmean(KD["mse"]))
    assert float(row["difference"]) == pytest.approx(statistics.fmean(b - a for a, b in zip(KD["ce"], KD["mse"])))
    assert int(row["n_pairs"]) == 3 and row["baseline"] == "ce"
