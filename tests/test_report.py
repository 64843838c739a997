"""Reports read cell by cell against the runs' own summary.json files and an independent
computation (the standard library and scipy): groups with distinct teachers, shared teachers
counted once, paired statistics by seed, baselines from the matrix order, merged sweeps with a
teacher-free baseline, loaded checkpoint teachers, the compared field generalised, report.json,
the plots drawn only where they mean something. Run directories are written by the tests
(recipe.yaml, summary.json, metrics.jsonl, teacher links), not trained."""

from __future__ import annotations

import hashlib
import json
import os
import random
import statistics
from pathlib import Path

import pytest
import yaml

from kdcore.errors import KdcoreError
from kdcore.results.collect import collect
from kdcore.results.report import build_report, write_report
from kdcore.results.tables import aggregate

scipy_stats = pytest.importorskip("scipy.stats")


# --- fake run directories ------------------------------------------------------------------------

def recipe(seed, objective="ce", distillers=("kd",), teacher=True, checkpoint=None, student_width=4,
           teacher_width=16, labeled=None, checkpoint_every=1, name="fake"):
    data = {"name": "digits", "params": {"split_seed": 0, **({"labeled": labeled} if labeled is not None else {})}}
    document = {
        "name": name, "seed": seed, "data": data,
        "student": {"arch": {"name": "cnn", "params": {"width": student_width}}, "ce_weight": 0.1, "epochs": 3,
                    "distillers": [{"name": d, "weight": 1.0, "params": {}, "label": None} for d in distillers]},
        "runtime": {"device": "cpu", "checkpoint_every": checkpoint_every},
    }
    if teacher:
        document["teacher"] = {"arch": {"name": "cnn", "params": {"width": teacher_width}}, "epochs": 4,
                               "objective": None if checkpoint else {"name": objective, "params": {}},
                               "checkpoint": str(checkpoint) if checkpoint else None}
    return document


def teacher_numbers(top1, brier):
    return {"test": {"top1": top1, "brier": brier, "nll": 3 * brier, "ece": brier / 10},
            "val": {"top1": top1 + 0.5, "brier": brier - 0.001, "nll": 3 * brier, "ece": brier / 10},
            "best_val": {"epoch": 2, "val_top1": top1 + 1, "test": {"top1": top1 - 0.25}}}


def write_run(directory, overrides, document, student_top1, best_top1=None, teacher=None, store=None, curve=None):
    """A finished run: recipe.yaml (overrides + resolved recipe), summary.json, a student log,
    and, for a trained teacher, a link into the store (or the run's own teacher/)."""
    directory.mkdir(parents=True)
    (directory / "recipe.yaml").write_text(yaml.safe_dump({"overrides": overrides, **document}, sort_keys=False))
    summary = {"student": {"test": {"top1": student_top1}, "val": {"top1": student_top1 + 1}}}
    if best_top1 is not None:
        summary["student"]["best_val"] = {"epoch": 2, "val_top1": 50.0, "test": {"top1": best_top1}}
    if teacher is not None:
        summary["teacher"] = teacher
    (directory / "summary.json").write_text(json.dumps(summary))
    epochs = curve or [student_top1 - 20, student_top1 - 5, student_top1]
    (directory / "student").mkdir()
    (directory / "student" / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e + 1, "train/loss": 1.0 / (e + 1), "val/top1": v}) + "\n" for e, v in enumerate(epochs)))
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
        if not (store / "metrics.jsonl").exists():
            (store / "metrics.jsonl").write_text("".join(
                json.dumps({"epoch": e, "val/top1": 90 + e}) + "\n" for e in range(1, 5)))
        os.symlink(os.path.relpath(store, directory), directory / "teacher", target_is_directory=True)


def sweep_recipe(directory, matrix, name="fake"):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "recipe.yaml").write_text(yaml.safe_dump({"name": name, "matrix": matrix}, sort_keys=False))


def shared_teacher_sweep(root, objectives=("ce", "mse"), seeds=range(5), methods=("kd", "kd+pkt"), drop=()):
    """objective × method × seed, one stored teacher per (objective, seed) shared by the
    methods' students; returns the planned numbers {(objective, method, seed): (top1, best)}
    and {(objective, seed): teacher numbers}."""
    rng = random.Random(7)
    sweep = root / "sweep"
    sweep_recipe(sweep, {"teacher.objective.name": list(objectives),
                         "student.distillers": [[{"name": n} for n in m.split("+")] for m in methods],
                         "seed": list(seeds)})
    students, teachers = {}, {}
    for objective in objectives:
        for seed in seeds:
            teachers[(objective, seed)] = teacher_numbers(round(rng.uniform(95, 99), 4), round(rng.uniform(0.01, 0.03), 5))
            for method in methods:
                if (objective, method, seed) in drop:
                    continue
                top1, best = round(rng.uniform(93, 98), 4), round(rng.uniform(93, 98), 4)
                students[(objective, method, seed)] = (top1, best)
                distillers = method.split("+")
                name = f"objective={objective},distillers={'-'.join(distillers)},seed={seed}"
                write_run(sweep / name, {"teacher.objective.name": objective,
                                         "student.distillers": [{"name": n} for n in distillers], "seed": seed},
                          recipe(seed, objective, distillers), top1, best, teachers[(objective, seed)],
                          store=root / "teachers" / f"cnn-{objective}-{seed:012d}")
    return sweep, students, teachers


def expected_difference(baseline: dict, other: dict) -> dict:
    """The paired statistics of other − baseline by seed, computed with scipy."""
    seeds = sorted(set(baseline) & set(other))
    x, y = [baseline[s] for s in seeds], [other[s] for s in seeds]
    d = [b - a for a, b in zip(x, y)]
    test = scipy_stats.ttest_rel(y, x)
    interval = test.confidence_interval(0.95)
    return {"mean": statistics.fmean(d), "ci95": [float(interval.low), float(interval.high)],
            "p_value": float(test.pvalue), "wilcoxon_p": float(scipy_stats.wilcoxon(d, method="exact").pvalue),
            "wins": sum(v > 0 for v in d), "ties": sum(v == 0 for v in d), "losses": sum(v < 0 for v in d),
            "n_pairs": len(d), "seeds": seeds}


def assert_difference(actual: dict, expected: dict) -> None:
    for key in ("mean", "p_value", "wilcoxon_p"):
        assert actual[key] == pytest.approx(expected[key], rel=1e-9), key
    assert actual["ci95"] == pytest.approx(expected["ci95"], rel=1e-9)
    for key in ("wins", "ties", "losses", "n_pairs", "seeds"):
        assert actual[key] == expected[key], key
    assert actual["test"] == "paired t-test" and actual["wilcoxon_method"] == "exact"


def cell(data, method, selection="last epoch", pair=None):
    found = [c for c in data["cells"] if c["method"] == method and c["selection"] == selection
             and (pair is None or c["pair"] == pair)]
    assert len(found) == 1, (method, selection, [(c["method"], c["selection"], c["pair"]) for c in data["cells"]])
    return found[0]


# --- groups --------------------------------------------------------------------------------------

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
    mean, std, n = by_group["objective=mse"]["student top-1 (%)"]
    assert mean == pytest.approx(statistics.fmean([72.0, 73.0, 74.5]))
    assert std == pytest.approx(statistics.stdev([72.0, 73.0, 74.5])) and n == 3
    assert by_group["objective=ce"]["teacher MSE to p* (train)"][0] == pytest.approx(0.11)
    written = write_report(tmp_path, collect([tmp_path]))
    assert [p.name for p in written] == ["report.md", "report.csv", "comparison.csv", "objective_difference.png",
                                         "bcpd_scatter.png", "report.json"]  # no metrics.jsonl: no curves
    assert "| objective=mse | 3 | 3 | 74.00 ± 0.50 | 73.17 ± 1.26 |" in (tmp_path / "report.md").read_text()


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


# --- shared teachers and paired statistics -----------------------------------------------------

def test_shared_teachers_count_once_and_cells_pair_by_seed(tmp_path):
    sweep, students, teachers = shared_teacher_sweep(tmp_path)
    report = build_report(sweep, collect([sweep]))
    data = json.loads((sweep / "report.json").read_text())
    assert data["schema"] == "kdcore-report/1" and data["runs"] == 20
    assert data["compare"] == {"field": "teacher.objective.name", "baseline": "ce", "values": ["ce", "mse"],
                               "baseline_from": "matrix order", "compares": True}
    # ten distinct teachers, each with its two students, whatever the number of runs
    assert len(data["teachers"]) == 10 and {t["students"] for t in data["teachers"]} == {2}
    assert {(t["objective"], t["seed"]) for t in data["teachers"]} == set(teachers)
    for selection, index in (("last epoch", 0), ("best on validation", 1)):
        for method in ("kd", "kd+pkt"):
            found = cell(data, method, selection)
            for objective in ("ce", "mse"):
                values = [students[(objective, method, s)][index] for s in range(5)]
                side = found["objectives"][objective]
                assert side["n"] == 5 and side["seeds"] == list(range(5))
                assert side["mean"] == pytest.approx(statistics.fmean(values))
                assert side["std"] == pytest.approx(statistics.stdev(values))
            expected = expected_difference({s: students[("ce", method, s)][index] for s in range(5)},
                                           {s: students[("mse", method, s)][index] for s in range(5)})
            assert_difference(found["difference"], expected)
        # the teacher row: n = 5 distinct teachers per objective, std over them (not duplicates)
        row = cell(data, "teacher", selection)
        key = ("test", "top1") if selection == "last epoch" else ("best_val", "test", "top1")

        def metric(numbers, path=key):
            for part in path:
                numbers = numbers[part]
            return numbers

        for objective in ("ce", "mse"):
            values = [metric(teachers[(objective, s)]) for s in range(5)]
            assert row["objectives"][objective]["n"] == 5
            assert row["objectives"][objective]["std"] == pytest.approx(statistics.stdev(values))
            assert len(set(row["objectives"][objective]["teachers"])) == 5
        assert_difference(row["difference"], expected_difference(
            {s: metric(teachers[("ce", s)]) for s in range(5)}, {s: metric(teachers[("mse", s)]) for s in range(5)}))
    # the group table's teacher columns are over distinct teachers too
    group = next(g for g in data["groups"] if g["label"] == "objective=mse,distillers=kd-pkt")
    assert group["runs"] == 5 and group["teachers"] == 5
    assert group["metrics"]["teacher top-1 (%)"]["std"] == pytest.approx(
        statistics.stdev([teachers[("mse", s)]["test"]["top1"] for s in range(5)]))
    # the Brier ranking: each teacher once, with its own seed and objective, lowest Brier first
    text = (sweep / "report.md").read_text()
    ranking = text.split("## Teachers ranked by Brier score (val split")[1].split("\n## ")[0]
    rows = [line for line in ranking.splitlines() if line.startswith("| cnn-")]
    assert len(rows) == 10
    order = sorted(teachers, key=lambda k: teachers[k]["val"]["brier"])
    assert [(r.split("|")[3].strip(), int(r.split("|")[4])) for r in rows] == order
    assert data["teacher_ranking"]["order"] == [
        f"folder:{os.path.realpath(tmp_path / 'teachers' / f'cnn-{o}-{s:012d}')}" for o, s in order]
    # report.md says the same as report.json, with both tests named
    kd = next(line for line in text.splitlines() if line.startswith("| kd | "))
    d = cell(data, "kd")["difference"]
    assert f"{d['mean']:+.2f}" in kd and f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" in kd
    assert f"{d['wins']}/{d['ties']}/{d['losses']}" in kd
    assert "paired t-test" in text and "Wilcoxon signed-rank" in text
    assert report.table.has_students


def test_unpaired_runs_are_reported_as_such(tmp_path):
    sweep, students, _ = shared_teacher_sweep(tmp_path, seeds=range(4), methods=("kd",), drop={("mse", "kd", 3)})
    data = build_report(sweep, collect([sweep])).data
    found = cell(data, "kd")
    assert found["objectives"]["ce"]["n"] == 4 and found["objectives"]["mse"]["n"] == 3
    assert found["difference"]["n_pairs"] == 3 and found["difference"]["unpaired"] == {"ce": [3], "mse": []}
    assert_difference(found["difference"], expected_difference(
        {s: students[("ce", "kd", s)][0] for s in range(4)}, {s: students[("mse", "kd", s)][0] for s in range(3)}))
    assert "ce: 3" in (sweep / "report.md").read_text()


def test_baseline_is_the_first_value_of_the_matrix_axis_or_the_one_named(tmp_path):
    sweep, students, _ = shared_teacher_sweep(tmp_path, objectives=("mse", "soteacher"), seeds=range(3), methods=("kd",))
    data = build_report(sweep, collect([sweep])).data
    assert data["compare"]["baseline"] == "mse" and data["compare"]["values"] == ["mse", "soteacher"]
    assert cell(data, "kd")["difference"]["value"] == "soteacher"
    data = build_report(sweep, collect([sweep]), baseline="soteacher").data
    assert data["compare"]["baseline"] == "soteacher" and data["compare"]["baseline_from"] == "--baseline"
    assert cell(data, "kd")["difference"]["mean"] == pytest.approx(
        statistics.fmean(students[("mse", "kd", s)][0] - students[("soteacher", "kd", s)][0] for s in range(3)))
    with pytest.raises(KdcoreError, match="--baseline ce: not a value of teacher.objective.name"):
        build_report(sweep, collect([sweep]), baseline="ce")


def test_any_two_valued_field_can_be_compared(tmp_path):
    sweep, students, teachers = shared_teacher_sweep(tmp_path, seeds=range(6))
    data = build_report(sweep, collect([sweep]), compare="student.distillers").data
    assert data["compare"]["baseline"] == "kd" and data["compare"]["values"] == ["kd", "kd-pkt"]
    for objective in ("ce", "mse"):
        found = [c for c in data["cells"] if c["row"] == "student" and c["selection"] == "last epoch"
                 and c["condition"] == f"objective={objective}"]
        assert len(found) == 1
        assert_difference(found[0]["difference"], expected_difference(
            {s: students[(objective, "kd", s)][0] for s in range(6)},
            {s: students[(objective, "kd+pkt", s)][0] for s in range(6)}))
    # the teachers are the same for both values: shown, not compared
    rows = [c for c in data["cells"] if c["row"] == "teacher" and c["selection"] == "last epoch"]
    assert rows and all(c["shared_teachers"] and c["difference"] is None for c in rows)
    by_index = build_report(sweep, collect([sweep]), compare="student.distillers.1.name").data
    assert by_index["compare"]["values"] == ["none", "pkt"]
    with pytest.raises(KdcoreError, match="--compare student.epochs: takes 1 value"):
        build_report(sweep, collect([sweep]), compare="student.epochs")
    with pytest.raises(KdcoreError, match="no such recipe field"):
        build_report(sweep, collect([sweep]), compare="student.nope")


# --- merged sweeps, baselines, checkpoints ------------------------------------------------------

def baseline_sweep(root, seeds=range(5)):
    sweep = root / "alone"
    sweep_recipe(sweep, {"seed": list(seeds)}, name="alone")
    values = {}
    for seed in seeds:
        values[seed] = 90.0 + seed / 4
        write_run(sweep / f"seed={seed}", {"seed": seed}, recipe(seed, teacher=False, distillers=(), name="alone"),
                  values[seed], values[seed] - 1)
    return sweep, values


def test_merged_sweeps_show_the_teacher_free_baseline_as_a_reference(tmp_path):
    sweep, students, _ = shared_teacher_sweep(tmp_path, methods=("kd",))
    alone, values = baseline_sweep(tmp_path)
    out = tmp_path / "merged"
    out.mkdir()
    report = build_report(out, collect([sweep, alone]))
    data = report.data
    assert data["compare"]["values"] == ["ce", "mse"]  # no "none" objective
    assert {c["pair"] for c in data["cells"]} == {"cnn(width=16)→cnn(width=4)"}  # the widths, no "(no teacher)"
    (reference,) = [r for r in data["references"] if r["selection"] == "last epoch"]
    assert reference["label"] == "no teacher (labels only)" and reference["n"] == 5
    assert reference["mean"] == pytest.approx(statistics.fmean(values.values()))
    assert reference["std"] == pytest.approx(statistics.stdev(values.values()))
    labels = [g["label"] for g in data["groups"]]
    assert "all runs" not in labels and any(label.startswith("no teacher") for label in labels)
    assert_difference(cell(data, "kd")["difference"], expected_difference(
        {s: students[("ce", "kd", s)][0] for s in range(5)}, {s: students[("mse", "kd", s)][0] for s in range(5)}))
    text = (out / "report.md").read_text()
    assert "none−ce" not in text and "− none" not in text and "(no teacher)→" not in text
    assert "Reference runs" in text


def test_a_loaded_checkpoint_is_one_teacher_labelled_by_its_file(tmp_path):
    made = tmp_path / "old" / "objective=mse,seed=7"  # the run that trained it, with its recipe
    (made / "teacher").mkdir(parents=True)
    (made / "recipe.yaml").write_text(yaml.safe_dump(recipe(7, "mse")))
    weights = made / "teacher" / "model.safetensors"
    weights.write_bytes(b"weights of the teacher" * 100)
    copy = tmp_path / "copy" / "mse7.safetensors"  # the same file elsewhere: the same teacher
    copy.parent.mkdir()
    copy.write_bytes(weights.read_bytes())
    sweep = tmp_path / "ckpt"
    sweep_recipe(sweep, {"seed": [0, 1, 2]})
    teacher = teacher_numbers(97.0, 0.02)
    for seed in (0, 1, 2):
        path = weights if seed < 2 else copy
        write_run(sweep / f"seed={seed}", {"seed": seed}, recipe(seed, checkpoint=path), 95.0 + seed, teacher=teacher)
    data = build_report(sweep, collect([sweep])).data
    (entry,) = data["teachers"]
    assert entry["kind"] == "checkpoint" and entry["students"] == 3
    assert entry["id"] == "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    assert entry["label"] == "teacher/model.safetensors"
    assert (entry["objective"], entry["seed"]) == ("mse", 7)
    text = (sweep / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| teacher/model.safetensors"))
    assert "| mse | 7 | 3 |" in row
    # without the file on this machine: the path is the identity, and nothing is invented
    weights.unlink()
    copy.unlink()
    entries = build_report(sweep, collect([sweep])).data["teachers"]
    assert len(entries) == 2 and {e["id"] for e in entries} == {f"checkpoint:{weights}", f"checkpoint:{copy}"}
    assert next(e for e in entries if e["id"] == f"checkpoint:{copy}")["objective"] is None


def test_a_checkpoint_of_a_stored_teacher_is_that_teacher(tmp_path):
    sweep, _, teachers = shared_teacher_sweep(tmp_path, seeds=range(3), methods=("kd",))
    stored = tmp_path / "teachers" / "cnn-mse-000000000002"
    (stored / "model.safetensors").write_bytes(b"mse teacher 2" * 50)
    (stored / "teacher.json").write_text(json.dumps({"objective": {"name": "mse"}, "seed": 2}))
    loaded = tmp_path / "loaded"
    sweep_recipe(loaded, {"seed": [0, 1]})
    for seed in (0, 1):
        write_run(loaded / f"seed={seed}", {"seed": seed}, recipe(seed, checkpoint=stored / "model.safetensors"),
                  94.0, teacher=teachers[("mse", 2)])
    out = tmp_path / "out"
    out.mkdir()
    data = build_report(out, collect([sweep, loaded])).data
    assert len(data["teachers"]) == 6
    entry = next(t for t in data["teachers"] if t["label"] == "cnn-mse-000000000002")
    assert entry["students"] == 3 and entry["loaded_from"] == [str(stored / "model.safetensors")]
    (reference,) = [r for r in data["references"] if r["selection"] == "last epoch"]
    assert reference["label"] == "checkpoint cnn-mse-000000000002/model.safetensors (mse, seed 2) kd"
    assert cell(data, "teacher")["objectives"]["mse"]["n"] == 3  # still one per seed


def test_runs_without_a_teacher_store_use_their_own_teacher_folder(tmp_path):
    for seed in (0, 1):
        run = tmp_path / f"seed={seed}"
        write_run(run, {"seed": seed}, recipe(seed), 90.0 + seed, teacher=teacher_numbers(96.0 + seed, 0.02))
        (run / "teacher").mkdir()
    data = build_report(tmp_path, collect([tmp_path])).data
    assert [t["kind"] for t in data["teachers"]] == ["run", "run"]
    assert [t["label"] for t in data["teachers"]] == ["seed=0/teacher", "seed=1/teacher"]


# --- plots ---------------------------------------------------------------------------------------

def test_curves_only_over_a_named_or_a_data_field(tmp_path):
    runs = tmp_path / "runs"
    for every in (1, 10):  # a runtime setting varies: never a curve
        for seed in (0, 1):
            write_run(runs / f"every{every}-{seed}", {"runtime.checkpoint_every": every, "seed": seed},
                      recipe(seed, checkpoint_every=every), 90.0 + seed, teacher=teacher_numbers(96.0, 0.02))
    written = {p.name for p in write_report(runs, collect([runs]))}
    assert "accuracy_curve.png" not in written
    budget = tmp_path / "budget"
    for labeled in (500, 4000):
        for objective in ("ce", "mse"):
            for seed in (0, 1):
                write_run(budget / f"{labeled}-{objective}-{seed}",
                          {"data.params.labeled": labeled, "teacher.objective.name": objective, "seed": seed},
                          recipe(seed, objective, labeled=labeled), 60.0 + labeled / 500 + seed,
                          teacher=teacher_numbers(70.0, 0.3))
    written = {p.name for p in write_report(budget, collect([budget]))}
    assert "accuracy_curve.png" in written
    report = build_report(budget, collect([budget]))
    assert {c["condition"] for c in report.data["cells"]} == {"labeled=500", "labeled=4000"}
    named = {p.name for p in build_report(runs, collect([runs]), curve="runtime.checkpoint_every").written}
    assert "accuracy_curve.png" in named
    with pytest.raises(KdcoreError, match="--curve nope"):
        build_report(runs, collect([runs]), curve="nope")


def test_plots_are_pngs(tmp_path):
    sweep, _, _ = shared_teacher_sweep(tmp_path, seeds=range(3))
    written = build_report(sweep, collect([sweep])).written
    for name in ("objective_difference.png", "learning_curves.png"):
        assert (sweep / name) in written and (sweep / name).read_bytes()[:4] == b"\x89PNG"


# --- the command line ----------------------------------------------------------------------------

def test_report_json_option_prints_report_json(tmp_path, monkeypatch, capsys):
    from tests.conftest import run_cli

    sweep, _, _ = shared_teacher_sweep(tmp_path, seeds=range(3), methods=("kd",))
    code, out, err = run_cli(monkeypatch, capsys, "report", sweep, "--json")
    assert code == 0, err
    assert json.loads(out) == json.loads((sweep / "report.json").read_text())
    code, _, err = run_cli(monkeypatch, capsys, "report", sweep, "--compare", "teacher.epochs")
    assert code == 2 and "--compare teacher.epochs: takes 1 value" in err


def test_teacher_lab_correlations_and_recipe_ranking(tmp_path):
    sweep, students, teachers = shared_teacher_sweep(tmp_path, seeds=range(6))
    data = build_report(sweep, collect([sweep])).data
    lab = data["teacher_lab"]
    assert lab["split"] == "val" and lab["teachers"] == 12
    keys = sorted(teachers)
    means = [statistics.fmean(students[(o, m, s)][0] for m in ("kd", "kd+pkt")) for o, s in keys]
    for metric in ("top1", "brier", "nll", "ece"):
        (found,) = [c for c in lab["correlations"] if c["metric"] == metric and c["students"] == "all"]
        values = [teachers[k]["val"][metric] for k in keys]
        reference = scipy_stats.spearmanr(values, means)
        assert found["n_teachers"] == 12
        assert found["rho"] == pytest.approx(float(reference.statistic), abs=1e-12)
        assert found["p_value"] == pytest.approx(float(reference.pvalue), rel=1e-7)
    (kd,) = [c for c in lab["correlations"] if c["metric"] == "brier" and c["students"] == "kd"]
    assert kd["rho"] == pytest.approx(float(scipy_stats.spearmanr(
        [teachers[k]["val"]["brier"] for k in keys], [students[(o, "kd", s)][0] for o, s in keys]).statistic), abs=1e-12)
    ranking = [r for r in lab["recipes"] if r["selection"] == "last epoch"]
    per_teacher = {(o, s): statistics.fmean(students[(o, m, s)][0] for m in ("kd", "kd+pkt")) for o, s in keys}
    mse = next(r for r in ranking if r["value"] == "mse")
    assert mse["students"] == 12 and mse["teachers"] == 6
    assert_difference(mse["difference"], {**expected_difference(
        {s: per_teacher[("ce", s)] for s in range(6)}, {s: per_teacher[("mse", s)] for s in range(6)}),
        "seeds": mse["difference"]["seeds"]})
    assert [r["value"] for r in ranking] == sorted(["ce", "mse"], key=lambda v: -statistics.fmean(
        students[(v, m, s)][0] for m in ("kd", "kd+pkt") for s in range(6)))
    assert "## Teacher lab: which teacher metric predicts its students?" in (sweep / "report.md").read_text()


def test_report_reads_existing_run_directories_read_only(tmp_path):
    sweep, _, _ = shared_teacher_sweep(tmp_path, seeds=range(2), methods=("kd",))
    before = {p: p.stat().st_mtime_ns for p in Path(sweep).rglob("summary.json")}
    out = tmp_path / "elsewhere"
    out.mkdir()
    write_report(out, collect([sweep]))
    assert {p: p.stat().st_mtime_ns for p in Path(sweep).rglob("summary.json")} == before
    assert not (sweep / "report.md").exists()


def test_zip_axes_label_cells_and_can_be_compared(tmp_path):
    """A zip axis (``method``) sets several fields per run: cells are named by its label, and
    ``--compare method`` pairs its entries by seed."""
    sweep = tmp_path / "zip"
    entries = [{"student.distillers.0": {"name": "at"}, "student.ce_weight": 1.0},
               {"student.distillers.0": {"name": "kd"}, "student.ce_weight": 0.1}]
    sweep_recipe(sweep, {"teacher.objective.name": ["ce", "mse"], "method": entries, "seed": [0, 1, 2]})
    numbers = {}
    for objective in ("ce", "mse"):
        for entry in entries:
            label = entry["student.distillers.0"]["name"]
            for seed in range(3):
                numbers[(objective, label, seed)] = 90 + seed + (0.5 if objective == "mse" else 0) + (label == "kd")
                document = recipe(seed, objective, (label,))
                document["student"]["ce_weight"] = entry["student.ce_weight"]
                overrides = {"teacher.objective.name": objective, "method": label, **entry, "seed": seed}
                write_run(sweep / f"objective={objective},method={label},seed={seed}", overrides, document,
                          numbers[(objective, label, seed)], teacher=teacher_numbers(96.0, 0.02),
                          store=tmp_path / "teachers" / f"cnn-{objective}-{seed:012d}")
    data = build_report(sweep, collect([sweep])).data
    assert [g["label"] for g in data["groups"]] == ["objective=ce,method=at", "objective=ce,method=kd",
                                                     "objective=mse,method=at", "objective=mse,method=kd"]
    kd = next(c for c in data["cells"] if c["method"] == "kd" and c["selection"] == "last epoch")
    assert kd["condition"] == "method=kd" and kd["difference"]["mean"] == pytest.approx(0.5)
    data = build_report(sweep, collect([sweep]), compare="method").data
    assert data["compare"]["values"] == ["at", "kd"] and data["compare"]["baseline_from"] == "matrix order"
    for objective in ("ce", "mse"):
        found = next(c for c in data["cells"] if c["row"] == "student" and c["condition"] == f"objective={objective}"
                     and c["selection"] == "last epoch")
        assert found["difference"]["mean"] == pytest.approx(1.0) and found["difference"]["n_pairs"] == 3


def test_a_zip_axis_of_teacher_recipes_is_the_default_factor(tmp_path):
    """A teacher lab names its teacher recipes by a zip axis that sets ``teacher.objective`` and
    teacher-stage options: without ``--compare``, the report pairs its entries against the first
    one, instead of splitting each recipe into a cell of its own (0 pairs)."""
    sweep = tmp_path / "lab"
    entries = [{"label": "ce", "teacher.objective": {"name": "ce"}, "teacher.select": "last"},
               {"label": "ce-best", "teacher.objective": {"name": "ce"}, "teacher.select": "best_val_top1"},
               {"label": "mse", "teacher.objective": {"name": "mse"}, "teacher.select": "last"}]
    sweep_recipe(sweep, {"teacher_recipe": entries, "seed": [0, 1, 2]})
    planned = {}
    for index, entry in enumerate(entries):
        for seed in range(3):
            planned[(entry["label"], seed)] = 90 + seed + index * 0.3 + (seed == 1) * index * 0.1
            document = recipe(seed, entry["teacher.objective"]["name"])
            document["teacher"]["select"] = entry["teacher.select"]
            overrides = {"teacher_recipe": entry["label"], "teacher.objective": entry["teacher.objective"],
                         "teacher.select": entry["teacher.select"], "seed": seed}
            write_run(sweep / f"teacher_recipe={entry['label']},seed={seed}", overrides, document,
                      planned[(entry["label"], seed)], teacher=teacher_numbers(96.0 + index, 0.02),
                      store=tmp_path / "teachers" / f"cnn-{entry['label']}-{seed:012d}")
    data = build_report(sweep, collect([sweep])).data
    assert data["compare"] == {"field": "teacher_recipe", "baseline": "ce", "values": ["ce", "ce-best", "mse"],
                               "baseline_from": "matrix order", "compares": True}
    kd = [c for c in data["cells"] if c["method"] == "kd" and c["selection"] == "last epoch"]
    assert len(kd) == 1
    by_value = {d["value"]: d for d in kd[0]["differences"]}
    for value in ("ce-best", "mse"):
        assert by_value[value]["n_pairs"] == 3
        assert by_value[value]["mean"] == pytest.approx(statistics.fmean(
            planned[(value, s)] - planned[("ce", s)] for s in range(3)))
    ranking = [r["value"] for r in data["teacher_lab"]["recipes"] if r["selection"] == "last epoch"]
    assert ranking == ["mse", "ce-best", "ce"]
    assert build_report(sweep, collect([sweep]), compare="teacher.objective.name").data["compare"]["values"] == ["ce", "mse"]


def test_a_component_with_other_params_is_another_value(tmp_path):
    """ce with label smoothing is not ce: the compared value carries the params that tell runs of
    one objective apart, so that no seed is pooled across them."""
    sweep = tmp_path / "ls"
    objectives = [{"name": "ce"}, {"name": "ce", "params": {"label_smoothing": 0.1}}, {"name": "mse"}]
    sweep_recipe(sweep, {"teacher.objective": objectives, "seed": [0, 1, 2]})
    planned = {}
    for objective in objectives:
        params = objective.get("params", {"label_smoothing": 0.0} if objective["name"] == "ce" else {})
        label = objective["name"] + (f"(label_smoothing={params['label_smoothing']})" if objective["name"] == "ce" else "")
        for seed in range(3):
            planned[(label, seed)] = 80 + seed + len(planned) / 10
            document = recipe(seed, objective["name"])
            document["teacher"]["objective"]["params"] = params
            write_run(sweep / f"{label}-{seed}", {"teacher.objective": objective, "seed": seed}, document,
                      planned[(label, seed)], teacher=teacher_numbers(96.0, 0.02))
    data = build_report(sweep, collect([sweep])).data
    assert data["compare"]["values"] == ["ce(label_smoothing=0.0)", "ce(label_smoothing=0.1)", "mse"]
    kd = next(c for c in data["cells"] if c["method"] == "kd" and c["selection"] == "last epoch")
    assert {v: o["n"] for v, o in kd["objectives"].items()} == {v: 3 for v in data["compare"]["values"]}
    by_value = {d["value"]: d for d in kd["differences"]}
    for value in ("ce(label_smoothing=0.1)", "mse"):
        assert by_value[value]["mean"] == pytest.approx(statistics.fmean(
            planned[(value, s)] - planned[("ce(label_smoothing=0.0)", s)] for s in range(3)))


def test_a_report_over_an_unfinished_sweep_names_the_missing_runs(tmp_path):
    import json as json_

    import yaml as yaml_

    from kdcore.results.collect import collect as collect_
    from kdcore.results.report import write_report as write_report_

    sweep = tmp_path / "sweep"
    for name, finished in (("seed=0", True), ("seed=1", False), ("seed=2", False)):
        (sweep / name).mkdir(parents=True)
        (sweep / name / "recipe.yaml").write_text(yaml_.safe_dump({"overrides": {"seed": int(name[-1])}, "seed": 0}))
        if finished:
            (sweep / name / "summary.json").write_text(json_.dumps({"student": {"test": {"top1": 50.0}}}))
    (sweep / "recipe.yaml").write_text(yaml_.safe_dump({"matrix": {"seed": [0, 1, 2]}}))
    write_report_(sweep, collect_([sweep]))
    report = (sweep / "report.md").read_text()
    assert "Incomplete sweep: 2 runs not finished** (`seed=1`, `seed=2`)" in report
