"""The teacher lab: the teacher stage's options `calibration: {name: temperature}` and
`select: last | best_val_top1 | best_val_brier`, each checked against an independent
computation and by short runs; the teachers' identity; teacher.json and `kdcore teachers`."""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
import torch
import yaml

from kdcore.cli import main
from kdcore.config.loader import load_variants
from kdcore.distill.calibration import fit_temperature, nll_at, scale_logits, split_logits
from kdcore.distill.store import teacher_key
from kdcore.engine.accelerator import Accelerator, AcceleratorSettings
from kdcore.nn import Distiller
from kdcore.runs.layout import load_weights
from tests.conftest import TINY_TOY, run_cli

# -- calibration: the temperature against a direct NLL minimisation -----------------------------


def direct_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """argmin_T of the mean NLL of softmax(logits / T), by a dense log-spaced grid over
    [0.01, 100] and three finer grids around its best point (numpy, float64)."""
    chosen = logits[np.arange(len(labels)), labels]

    def nll(temperature: float) -> float:
        scaled = logits / temperature
        top = scaled.max(axis=1)
        return float((np.log(np.exp(scaled - top[:, None]).sum(axis=1)) + top - chosen / temperature).mean())

    grid = np.geomspace(0.01, 100.0, 2001)
    for _ in range(4):
        best = int(np.argmin([nll(t) for t in grid]))
        grid = np.linspace(grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)], 201)
    return float(grid[int(np.argmin([nll(t) for t in grid]))])


@pytest.mark.parametrize("true_temperature, scale", [(2.5, 4.0), (0.6, 1.0), (1.0, 2.0)])
def test_fitted_temperature_equals_a_direct_nll_minimisation(true_temperature, scale):
    generator = torch.Generator().manual_seed(7)
    logits = scale * torch.randn(3000, 6, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / true_temperature, dim=1), 1, generator=generator).squeeze(1)
    fitted = fit_temperature(logits.float(), labels)
    direct = direct_temperature(logits.float().double().numpy(), labels.numpy())
    assert fitted == pytest.approx(direct, abs=1e-4)
    assert fitted == pytest.approx(true_temperature, rel=0.15)  # the data's own temperature, roughly
    assert nll_at(logits, labels, fitted) <= min(nll_at(logits, labels, fitted * f) for f in (0.999, 1.001))


def test_temperature_stays_in_range_when_the_nll_falls_beyond_it():
    logits = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])
    assert fit_temperature(logits, torch.tensor([0, 1])) == 0.01  # separable: sharper is always better
    assert fit_temperature(logits, torch.tensor([1, 0])) == 100.0  # always wrong: flatter is always better


def test_scaled_logits_reach_every_way_the_student_reads_the_teacher():
    """The recorder (training step), the cached targets (unaugmented data) and a plain call
    (evaluation, distillers' own use of the teacher) see z / T; the taps are unchanged."""
    from kdcore.distill.student import _cached_targets
    from kdcore.distill.taps import FeatureRecorder
    from kdcore.nn import Batch, Split
    from kdcore_toy.mlp import MLP

    torch.manual_seed(0)
    teacher = MLP(4, [6], 3).eval().requires_grad_(False)
    inputs = torch.randn(10, 4)
    raw = teacher(inputs)
    hidden = teacher.layers(inputs)
    handle = scale_logits(teacher, 2.5)
    recorder = FeatureRecorder(teacher, {"hidden": "layers"}, ["hidden"])
    split = Split(inputs=inputs, labels=torch.zeros(10, dtype=torch.long))
    index = torch.tensor([7, 2, 5])
    batch = Batch(inputs=inputs[index], labels=torch.zeros(3), index=index, epoch=0, epochs=1)
    cached = _cached_targets(recorder, split, torch.device("cpu"), 4)(batch)
    live = recorder(batch.inputs)
    for features in (cached, live):
        assert torch.allclose(features["logits"], raw[index] / 2.5, atol=1e-6)
        assert torch.allclose(features["hidden"], hidden[index], atol=1e-6)
    assert torch.allclose(teacher(inputs), raw / 2.5, atol=1e-6)
    handle.remove()
    recorder.remove()
    assert torch.allclose(teacher(inputs), raw)


# -- short runs: one sweep over the options, sharing a store --------------------------------------

LAB = dict(copy.deepcopy(TINY_TOY), name="lab")
LAB["data"]["params"].update(n_train=512, n_val=256)
LAB["teacher"].update(objective={"name": "ce"}, epochs=5)
LAB["student"].update(epochs=2)
LAB["matrix"] = {"teacher.calibration": [None, {"name": "temperature"}],
                 "teacher.select": ["last", "best_val_top1", "best_val_brier"]}


def cli(*args: object) -> int:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["kdcore", *map(str, args)])
        try:
            main()
        except SystemExit as end:
            return end.code or 0
    return 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    (root / "lab.yaml").write_text(yaml.safe_dump(LAB, sort_keys=False))
    assert cli("run", root / "lab.yaml", "--run-dir", root / "sweep") == 0
    runs = {}
    for folder in (root / "sweep").iterdir():
        if (folder / "summary.json").exists():
            recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
            teacher = recipe["teacher"]
            runs[(teacher.get("select", "last"), "calibration" in teacher)] = folder
    assert len(runs) == 6
    return root, runs


def summary(folder):
    return json.loads((folder / "summary.json").read_text())


def records(folder):
    return [json.loads(line) for line in (folder / "teacher/metrics.jsonl").read_text().splitlines()]


def test_options_do_not_change_how_the_teacher_trains(lab):
    _, runs = lab
    plain = records(runs[("last", False)])
    for folder in runs.values():
        assert [{k: v for k, v in r.items() if k != "seconds"} for r in records(folder)] == \
               [{k: v for k, v in r.items() if k != "seconds"} for r in plain]


@pytest.mark.parametrize("select, metric, best", [("best_val_top1", "val/top1", max), ("best_val_brier", "val/brier", min)])
def test_select_makes_the_best_validation_epoch_the_teacher(lab, select, metric, best):
    _, runs = lab
    folder = runs[(select, False)]
    logged = records(folder)
    values = [r[metric] for r in logged]
    epoch = values.index(best(values)) + 1
    teacher = summary(folder)["teacher"]
    assert teacher["selection"]["epoch"] == epoch and teacher["selection"]["select"] == select
    name = metric.split("/")[1]
    assert teacher["val"][name] == pytest.approx(values[epoch - 1], abs=1e-5)  # the teacher is that epoch's
    assert teacher["val"]["nll"] == pytest.approx(logged[epoch - 1]["val/nll"], abs=1e-5)
    if epoch != len(logged):
        assert summary(runs[("last", False)])["teacher"]["val"]["nll"] != pytest.approx(teacher["val"]["nll"])


@pytest.mark.parametrize("select", ["last", "best_val_top1", "best_val_brier"])
def test_calibration_fits_the_direct_temperature_and_lowers_validation_nll(lab, registry, select):
    root, runs = lab
    calibrated, plain = summary(runs[(select, True)])["teacher"], summary(runs[(select, False)])["teacher"]
    fitted = calibrated["calibration"]
    assert fitted["name"] == "temperature"
    assert calibrated["val"]["nll"] <= plain["val"]["nll"] + 1e-6
    assert fitted["val_nll_before"] == pytest.approx(plain["val"]["nll"], abs=1e-5)
    assert fitted["val_nll_after"] == pytest.approx(calibrated["val"]["nll"], abs=1e-5)
    assert calibrated["test"]["top1"] == plain["test"]["top1"]  # a temperature keeps every argmax

    # independently: the stored weights' validation logits, minimised over T directly
    variant = load_variants(root / "lab.yaml", [], registry)[1][0]
    from kdcore_toy.gaussian import build_gaussian
    from kdcore_toy.mlp import MLP

    folder = (runs[(select, True)] / "teacher").resolve()
    weights = json.loads((folder / "teacher.json").read_text())["weights"]
    model = MLP(8, [16], 3)
    load_weights(model, folder / weights)
    data = build_gaussian(variant.recipe.data.params, None)
    accelerator = Accelerator.resolve(AcceleratorSettings(device="cpu"))
    logits, labels = split_logits(model, data.val, accelerator, 1024)
    assert fitted["temperature"] == pytest.approx(direct_temperature(logits.double().numpy(), labels.numpy()),
                                                  abs=1e-4)


def test_the_student_learns_from_the_calibrated_teacher(lab):
    _, runs = lab
    weights = [torch.load(runs[("last", c)] / "student/checkpoint.pt", weights_only=True)["trainable"]
               for c in (False, True)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_every_option_is_part_of_the_stored_identity(lab):
    _, runs = lab
    stored = {(folder / "teacher").resolve() for folder in runs.values()}
    assert len(stored) == 6  # one stored teacher per combination of options
    for folder in runs.values():
        record = json.loads(((folder / "teacher").resolve() / "teacher.json").read_text())
        recipe = yaml.safe_load((folder / "recipe.yaml").read_text())["teacher"]
        assert record["select"] == recipe.get("select", "last")
        assert (record["calibration"] is not None) == ("calibration" in recipe)
        assert record["key"] == (folder / "teacher").resolve().name


def test_key_changes_with_each_option_and_defaults_leave_it_as_before(write_recipe, registry):
    def key(**teacher):
        recipe = copy.deepcopy(TINY_TOY)
        recipe["teacher"].update(teacher)
        return teacher_key(load_variants(write_recipe(recipe), [], registry)[1][0].recipe, registry)

    base = key()
    assert key(select="last") == base and key(calibration=None) == base  # the defaults: same teacher
    others = [key(select="best_val_top1"), key(select="best_val_brier"), key(calibration={"name": "temperature"}),
              key(select="best_val_brier", calibration={"name": "temperature"})]
    assert len({base, *others}) == 5
    recipe = load_variants(write_recipe(TINY_TOY), [], registry)[1][0].recipe
    assert {"select", "calibration"}.isdisjoint(recipe.model_dump(mode="json")["teacher"])  # resolved recipes as before


# -- refusals ---------------------------------------------------------------------------------


def test_select_and_calibration_need_a_validation_split(write_recipe, tmp_path, monkeypatch, capsys):
    for option in ({"select": "best_val_brier"}, {"calibration": {"name": "temperature"}}):
        recipe = copy.deepcopy(TINY_TOY)
        recipe["data"]["params"]["n_val"] = 0
        recipe["teacher"].update(option)
        code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe), "--run-dir", tmp_path / str(len(option)) / next(iter(option)))
        assert code == 2, err
        assert "needs a validation split" in err and "gaussian" in err and "Traceback" not in err


def test_select_is_refused_for_a_loaded_checkpoint_and_calibration_applies(write_recipe, tmp_path, monkeypatch, capsys):
    assert run_cli(monkeypatch, capsys, "run", write_recipe(TINY_TOY), "--run-dir", tmp_path / "trained")[0] == 0
    recipe = copy.deepcopy(TINY_TOY)
    del recipe["teacher"]["objective"]
    recipe["teacher"].update(checkpoint=str(tmp_path / "trained/teacher/model.safetensors"), select="best_val_top1")
    code, _, err = run_cli(monkeypatch, capsys, "validate", write_recipe(recipe, "select.yaml"))
    assert code == 2 and "select: best_val_top1 chooses among the epochs of training" in err
    del recipe["teacher"]["select"]
    recipe["teacher"]["calibration"] = {"name": "temperature"}
    code, _, err = run_cli(monkeypatch, capsys, "run", write_recipe(recipe, "cal.yaml"), "--run-dir", tmp_path / "loaded")
    assert code == 0, err
    loaded = json.loads((tmp_path / "loaded/summary.json").read_text())["teacher"]
    trained = json.loads((tmp_path / "trained/summary.json").read_text())["teacher"]
    assert loaded["calibration"]["val_nll_before"] == pytest.approx(trained["val"]["nll"], abs=1e-5)
    assert loaded["val"]["nll"] <= trained["val"]["nll"] + 1e-6


# -- teacher.json and `kdcore teachers` ---------------------------------------------------------


def test_kdcore_teachers_lists_the_store(lab, monkeypatch, capsys):
    root, runs = lab
    store = root / "teachers"
    code, out, err = run_cli(monkeypatch, capsys, "teachers", store, "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert len(listed) == 6 and all(entry["size_bytes"] > 0 for entry in listed)
    folder = (runs[("best_val_brier", True)] / "teacher").resolve()
    [entry] = [e for e in listed if e["key"] == folder.name]
    teacher = summary(runs[("best_val_brier", True)])["teacher"]
    assert entry["arch"]["name"] == "mlp" and entry["objective"]["name"] == "ce" and entry["seed"] == 0
    assert entry["data"]["name"] == "gaussian" and entry["epochs"] == 5
    assert entry["select"] == "best_val_brier" and entry["selected_epoch"] == teacher["selection"]["epoch"]
    assert entry["calibration"]["temperature"] == teacher["calibration"]["temperature"]
    for name in ("top1", "brier", "nll", "ece"):
        assert entry["metrics"]["test"][name] == pytest.approx(teacher["test"][name], abs=1e-6)

    (store / "old-teacher").mkdir()
    (store / "old-teacher/model.safetensors").write_bytes(b"0" * 10)
    code, out, err = run_cli(monkeypatch, capsys, "teachers", store)
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "old-teacher" in out and "no teacher.json" in out and "T = " in out and "select best_val_brier" in out
    assert "7 teachers" in out
    code, _, err = run_cli(monkeypatch, capsys, "teachers", root / "nowhere")
    assert code == 2 and "no teacher store there" in err


def test_a_teacher_stored_before_records_gets_its_record_when_used_again(lab, tmp_path, monkeypatch, capsys):
    root, runs = lab
    stored = (runs[("last", False)] / "teacher").resolve()
    record = json.loads((stored / "teacher.json").read_text())
    (stored / "teacher.json").unlink()
    recipe = copy.deepcopy(LAB)
    del recipe["matrix"]
    path = root / "again.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    code, _, err = run_cli(monkeypatch, capsys, "run", path, "--run-dir", tmp_path / "again", "--teachers", root / "teachers")
    assert code == 0, err
    assert (tmp_path / "again/teacher").resolve() == stored
    again = json.loads((stored / "teacher.json").read_text())
    assert {k: v for k, v in again.items() if k != "created"} == {k: v for k, v in record.items() if k != "created"}


# -- every distiller sees the calibrated teacher: a probe distiller through the trainer --------

SEEN: dict[str, object] = {}


class TeacherProbe(Distiller):
    """Records the teacher logits it receives for each sample, and the teacher network and
    feature function its context offers (what a distiller may call directly)."""

    def __init__(self, params, ctx):
        super().__init__()
        SEEN["direct"] = (ctx.teacher, ctx.teacher_features)
        SEEN["logits"] = torch.full((ctx.train_size, ctx.num_classes), float("nan"))

    def forward(self, student, teacher, batch):
        SEEN["logits"][batch.index.cpu()] = teacher["logits"].detach().float().cpu()
        return {"probe": 0.0 * student["logits"].sum()}


class LiveTeacherProbe(TeacherProbe):
    """Expands the batch (as HSAKD does, here to the same batch), which keeps the student
    stage from caching the teacher's outputs: the teacher runs at every step."""

    def expand_batch(self, batch):
        return batch


@pytest.mark.parametrize("probe", [TeacherProbe, LiveTeacherProbe], ids=["cached", "live"])
def test_a_distiller_receives_the_calibrated_logits(probe, registry, tmp_path):
    from kdcore.api import DistillerSpec
    from kdcore.testing import run_recipe
    from kdcore_toy.mlp import MLP

    recipe = copy.deepcopy(TINY_TOY)
    recipe["teacher"]["calibration"] = {"name": "temperature"}
    recipe["student"].update(distillers=[{"name": "probe", "weight": 1.0}], epochs=1)
    spec = DistillerSpec(name="probe", summary="test", build=probe)
    result = run_recipe(recipe, tmp_path / "run", registry, components=[spec])
    temperature = result["teacher"]["calibration"]["temperature"]
    assert temperature != pytest.approx(1.0, abs=1e-3)

    raw = MLP(8, [16], 3)
    load_weights(raw, tmp_path / "run/teacher/model.safetensors")
    from kdcore_toy import GaussianParams
    from kdcore_toy.gaussian import build_gaussian

    inputs = build_gaussian(GaussianParams(**recipe["data"]["params"]), None).train.inputs
    with torch.no_grad():
        expected = raw(inputs) / temperature
    seen = SEEN["logits"]
    assert not seen.isnan().any()  # every sample was seen
    assert torch.allclose(seen, expected, atol=1e-5)
    teacher, features = SEEN["direct"]
    with torch.no_grad():
        assert torch.allclose(teacher(inputs[:5]), expected[:5], atol=1e-5)
        assert torch.allclose(features(inputs[:5])["logits"], expected[:5], atol=1e-5)


def test_kdcore_teachers_does_not_import_torch(lab):
    import subprocess

    root, _ = lab
    probe = ("import sys; from kdcore.cli import main; sys.argv = ['kdcore', 'teachers', sys.argv[1]]\n"
             "try:\n    main()\nexcept SystemExit as end:\n    assert end.code in (0, None), end.code\n"
             "assert 'torch' not in sys.modules, 'kdcore teachers imported torch'\nprint('no torch')")
    result = subprocess.run([sys.executable, "-c", probe, str(root / "teachers")], capture_output=True, text=True)
    assert result.returncode == 0 and "no torch" in result.stdout, result.stderr
