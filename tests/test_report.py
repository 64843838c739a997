"""Reports: grouping by matrix values, mean ± std over seeds, read back from run directories."""

import json
import statistics

import pytest
import yaml

from kdcore.errors import KdcoreError
from kdcore.results.collect import collect
from kdcore.results.report import write_report
from kdcore.results.tables import aggregate


def fake_run(directory, objective, seed, teacher_top1, student_top1, mse):
    directory.mkdir(parents=True)
    (directory / "recipe.yaml").write_text(yaml.safe_dump({"overrides": {"teacher.objective.name": objective, "seed": seed}}))
    summary = {"teacher": {"test": {"top1": teacher_top1}, "train": {"mse_to_true": mse, "ce_to_true": 2 * mse}},
               "student": {"test": {"top1": student_top1}}}
    (directory / "summary.json").write_text(json.dumps(summary))


def test_groups_pool_seeds_with_sample_std(tmp_path):
    values = {("ce", 0): (75.0, 70.0, 0.10), ("ce", 1): (77.0, 71.0, 0.12), ("mse", 0): (74.0, 72.0, 0.05),
              ("mse", 1): (74.5, 73.0, 0.04), ("mse", 2): (73.5, 74.5, 0.06)}
    for (objective, seed), numbers in values.items():
        fake_run(tmp_path / f"objective={objective},seed={seed}", objective, seed, *numbers)
    labels, rows = aggregate(collect([tmp_path]))
    by_group = {row["group"]: row for row in rows}
    assert by_group["objective=ce"]["runs"] == 2 and by_group["objective=mse"]["runs"] == 3
    mean, std = by_group["objective=mse"]["student top-1 (%)"]
    assert mean == pytest.approx(statistics.fmean([72.0, 73.0, 74.5]))
    assert std == pytest.approx(statistics.stdev([72.0, 73.0, 74.5]))
    assert by_group["objective=ce"]["teacher MSE to p* (train)"][0] == pytest.approx(0.11)
    written = write_report(tmp_path, collect([tmp_path]))
    assert [p.name for p in written] == ["report.md", "report.csv", "bcpd_scatter.png"]
    assert "| objective=mse | 3 | 74.00 ± 0.50 | 73.17 ± 1.26 |" in (tmp_path / "report.md").read_text()


def test_no_finished_runs_is_an_error(tmp_path):
    with pytest.raises(KdcoreError, match="no finished runs"):
        collect([tmp_path])


def test_spearman_matches_hand_ranks_with_ties():
    from kdcore.results.statistics import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x: 1, 2.5, 2.5, 4; y: 1, 2, 3, 4 -> Pearson of ranks by hand
    rx, ry = [1, 2.5, 2.5, 4], [1, 2, 3, 4]
    mx, my = 2.5, 2.5
    expected = sum((a - mx) * (b - my) for a, b in zip(rx, ry)) / (
        sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    assert spearman([0.1, 0.5, 0.5, 0.9], [3, 5, 7, 9]) == pytest.approx(expected)


def test_teacher_free_runs_use_their_distillers_distances(tmp_path):
    for seed, (mse, top1) in enumerate([(0.01, 75.0), (0.05, 74.0), (0.10, 72.0)]):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        run.joinpath("recipe.yaml").write_text(yaml.safe_dump(
            {"student": {"arch": {"name": "mlp"}, "distillers": [{"name": "noisy-bayes", "label": None}]}}))
        run.joinpath("summary.json").write_text(json.dumps(
            {"student": {"test": {"top1": top1}}, "distillers": {"noisy-bayes": {"mse_to_true": mse, "ce_to_true": 1 - mse}}}))
    results = collect([tmp_path])
    assert results[1].estimate_distance("mse_to_true") == 0.05 and results[1].source == "noisy-bayes"
    written = write_report(tmp_path, results)
    assert tmp_path / "bcpd_scatter.png" in written
    text = (tmp_path / "report.md").read_text()
    assert "- squared error (MSE): -1.000" in text and "- cross-entropy (CE): +1.000" in text


def test_teachers_ranked_by_brier_and_curve_over_the_varying_numeric_field(tmp_path):
    from kdcore.results.tables import teacher_ranking, varying_numeric_field

    for labels in (500, 4000):
        for objective, brier, top1 in (("ce", 0.30, 60.0), ("mse", 0.25, 62.0)):
            run = tmp_path / f"{labels}-{objective}"
            run.mkdir()
            recipe = {"seed": 0, "data": {"name": "semisup", "params": {"labeled": labels}},
                      "teacher": {"arch": {"name": "wrn"}, "objective": {"name": objective}},
                      "student": {"arch": {"name": "resnet18"}, "distillers": [{"name": "kd", "label": None}]}}
            run.joinpath("recipe.yaml").write_text(yaml.safe_dump(recipe))
            teacher = {"top1": top1 + labels / 1000, "brier": brier - labels / 1e5, "nll": 1.0, "ece": 0.05}
            run.joinpath("summary.json").write_text(json.dumps(
                {"teacher": {"test": teacher}, "student": {"test": {"top1": top1 + labels / 500}}}))
    results = collect([tmp_path])
    assert varying_numeric_field(results) == "data.params.labeled"
    ranking = teacher_ranking(results).splitlines()
    rows = [line for line in ranking if line.startswith("| wrn")]
    assert [row.split("|")[4].strip() for row in rows] == ["66.00", "62.50", "64.00", "60.50"]  # Brier 0.21, 0.245, 0.26, 0.295
    assert "(test split; lower is closer to p*)" in ranking[1]
    written = write_report(tmp_path, results)
    assert tmp_path / "accuracy_curve.png" in written
