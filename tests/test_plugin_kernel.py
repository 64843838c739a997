"""The plugin kernel: kinds declared once, hooks that match nothing reported, published weights,
plugin runtime options, callbacks and loggers, objectives that see the batch, augmented views."""

import copy
import json
from typing import Literal

import pytest
import torch

from kdcore.api import SPEC_TYPES, DatasetSpec, DistillerSpec, LoggerSpec, ObjectiveSpec, RuntimeOptionSpec
from kdcore.callbacks import Callback
from kdcore.config.loader import load_variants
from kdcore.errors import KdcoreError
from kdcore.hookspecs import HOOK_NAMES, KdcoreSpecs
from kdcore.nn import Distiller, Objective
from kdcore.registry import PluginInfo, load_registry
from kdcore.testing import make_distribution, run_recipe
from tests.conftest import TINY_TOY, run_cli

TEST = PluginInfo("t", "tests", "0")


def test_every_kind_is_declared_once_on_its_spec_type():
    assert set(SPEC_TYPES) == {"objective", "distiller", "dataset", "architecture", "logger", "runtime-option"}
    assert HOOK_NAMES == {t.hook for t in SPEC_TYPES.values()}
    assert all(callable(getattr(KdcoreSpecs, t.hook)) for t in SPEC_TYPES.values())
    assert set(load_registry().components) == set(SPEC_TYPES)


MISSPELLED = """
from kdcore.api import DatasetSpec, DistillerSpec, hookimpl

@hookimpl
def kdcore_distiller():
    yield DistillerSpec(name="never-seen", summary="misspelled hook", build="x:y")

def kdcore_datasets():
    yield DatasetSpec(name="not-marked", summary="hook without the marker", build="x:y")

@hookimpl
def kdcore_objectives():
    from kdcore.api import ObjectiveSpec
    yield ObjectiveSpec(name="still-works", summary="a good hook beside the bad ones", build="x:y")
"""


def test_a_misspelled_or_unmarked_hook_is_an_error_of_its_plugin_and_the_rest_still_works(
    fake_site, monkeypatch, capsys
):
    make_distribution(fake_site, "fake-typo", "2.0", {"fake_typo": MISSPELLED}, {"typo": "fake_typo"})
    registry = load_registry()
    plugin = next(p for p in registry.plugins if p.name == "typo")
    assert plugin.status == "error"
    assert "hook kdcore_distiller matches no kdcore hook; rename it to kdcore_distillers" in plugin.error
    assert "kdcore_datasets is not marked @hookimpl" in plugin.error
    assert "still-works" in registry.names("objective")
    assert "never-seen" not in registry.names("distiller") and "not-marked" not in registry.names("dataset")
    code, out, _ = run_cli(monkeypatch, capsys, "plugins", "--json")
    listed = next(p for p in json.loads(out)["plugins"] if p["name"] == "typo")
    assert code == 0 and listed["status"] == "error" and "kdcore_distiller" in listed["error"]
    assert all(p["status"] == "ok" for p in json.loads(out)["plugins"] if p["distribution"] == "kdcore")


WEIGHTED = """
from kdcore.api import DistillerSpec, RuntimeOptionSpec, hookimpl

@hookimpl
def kdcore_distillers():
    yield DistillerSpec(name="weighted-kd", summary="kd with a published weight", published_weight=2.5,
                        build="kdcore_distillers.kd:KD", params=__import__("kdcore_distillers").KDParams)

@hookimpl
def kdcore_runtime_options():
    yield RuntimeOptionSpec(name="flush_every", summary="epochs between flushes", type=int, default=3)
"""


def test_a_distillers_published_weight_is_the_recipes_default_and_is_listed(
    fake_site, write_recipe, monkeypatch, capsys
):
    make_distribution(fake_site, "fake-weighted", "1.0", {"fake_weighted": WEIGHTED}, {"weighted": "fake_weighted"})
    recipe = copy.deepcopy(TINY_TOY)
    recipe["student"]["distillers"] = [{"name": "weighted-kd"}, {"name": "kd", "label": "plain"}]
    [variant] = load_variants(write_recipe(recipe), [], load_registry())[1]
    assert [d.weight for d in variant.recipe.student.distillers] == [2.5, 0.9]
    code, out, _ = run_cli(monkeypatch, capsys, "plugins", "--params", "weighted-kd")
    assert code == 0 and "published loss weight 2.5" in " ".join(out.split())
    code, out, _ = run_cli(monkeypatch, capsys, "plugins", "--params", "weighted-kd", "--json")
    assert json.loads(out)["published_weight"] == 2.5


def test_a_plugins_runtime_option_is_validated_defaulted_and_offered(fake_site, write_recipe):
    make_distribution(fake_site, "fake-weighted", "1.0", {"fake_weighted": WEIGHTED}, {"weighted": "fake_weighted"})
    registry = load_registry()
    recipe = copy.deepcopy(TINY_TOY)
    assert load_variants(write_recipe(recipe), [], registry)[1][0].recipe.runtime.options == {"flush_every": 3}
    recipe["runtime"]["flush_every"] = 7
    [variant] = load_variants(write_recipe(recipe), [], registry)[1]
    assert variant.recipe.runtime.options == {"flush_every": 7}
    again = type(variant.recipe).model_validate(variant.recipe.model_dump(mode="json"), context={"registry": registry})
    assert again.runtime.options == {"flush_every": 7}  # worker processes re-read the resolved recipe
    recipe["runtime"]["flush_every"] = "often"
    with pytest.raises(KdcoreError, match=r"runtime.flush_every: .*integer.*epochs between flushes"):
        load_variants(write_recipe(recipe), [], registry)
    recipe["runtime"] = {"flush_evrey": 7}
    with pytest.raises(KdcoreError, match=r"runtime.flush_evrey: unknown key; did you mean 'flush_every'\?"):
        load_variants(write_recipe(recipe), [], registry)


class Recorder(Callback):
    """Every event, in order, as (event, stage or None, detail)."""

    instances: list["Recorder"] = []

    def __init__(self, params=None, ctx=None):
        self.events = []
        self.context = ctx
        Recorder.instances.append(self)

    def on_run_start(self, run):
        self.events.append(("run_start", None, run.label))

    def on_stage_start(self, stage):
        self.events.append(("stage_start", stage.stage, (stage.epochs, stage.steps_per_epoch, stage.start_epoch)))

    def on_steps(self, stage, steps):
        self.events.append(("steps", stage.stage, steps))

    def on_epoch_end(self, stage, record):
        self.events.append(("epoch_end", stage.stage, dict(record)))

    def on_checkpoint(self, stage, epochs_done):
        self.events.append(("checkpoint", stage.stage, epochs_done))

    def on_stage_end(self, stage):
        self.events.append(("stage_end", stage.stage, None))

    def on_run_end(self, run, summary):
        self.events.append(("run_end", None, summary))

    def close(self):
        self.events.append(("close", None, None))


def test_callbacks_and_a_recipes_logger_see_every_stage_epoch_and_checkpoint(tmp_path):
    Recorder.instances.clear()
    recipe = dict(copy.deepcopy(TINY_TOY), loggers=[{"name": "recorder"}])
    recipe["runtime"]["checkpoint_every"] = 2
    display = Recorder()
    summary = run_recipe(recipe, tmp_path / "run", components=[LoggerSpec(name="recorder", summary="t", build=Recorder)],
                         callbacks=display)
    logger = Recorder.instances[1]
    assert logger.events == display.events  # the recipe's logger sees what the caller's display sees
    assert logger.context.recipe["name"] == "tiny" and logger.context.directory == str(tmp_path / "run")
    kinds = [(event, stage) for event, stage, _ in display.events if event != "steps"]
    per_stage = lambda s: [("stage_start", s), *[("epoch_end", s)] * 2, ("checkpoint", s), ("epoch_end", s),
                           ("checkpoint", s), ("stage_end", s)]
    assert kinds == [("run_start", None), *per_stage("teacher"), *per_stage("student"), ("run_end", None),
                     ("close", None)]
    steps = sum(n for event, stage, n in display.events if event == "steps" and stage == "student")
    assert steps == 3 * 8  # 256 samples, batch 32, 3 epochs
    logged = [detail for event, stage, detail in display.events if event == "epoch_end" and stage == "student"]
    written = [json.loads(line) for line in (tmp_path / "run/student/metrics.jsonl").read_text().splitlines()]
    assert logged == written
    assert display.events[-2] == ("run_end", None, summary)


class TermsAndState(Objective):
    """Cross-entropy and a per-sample counter kept as a buffer (state a resume must restore)."""

    def __init__(self, params, ctx):
        super().__init__()
        self.context = ctx
        self.register_buffer("seen", torch.zeros(ctx.train_size))

    def forward(self, logits, batch):
        self.seen[batch.index] += 1
        return {"ce": torch.nn.functional.cross_entropy(logits, batch.labels), "zero": logits.sum() * 0}


def test_an_objective_sees_the_batch_logs_its_terms_and_has_its_state_checkpointed(tmp_path):
    recipe = copy.deepcopy(TINY_TOY)
    recipe["teacher"]["objective"] = {"name": "terms"}
    del recipe["student"]
    run_recipe(recipe, tmp_path / "run", components=[ObjectiveSpec(name="terms", summary="t", build=TermsAndState)])
    record = json.loads((tmp_path / "run/teacher/metrics.jsonl").read_text().splitlines()[0])
    assert {"train/terms.ce", "train/terms.zero", "train/loss"} <= set(record)
    assert record["train/loss"] == pytest.approx(record["train/terms.ce"])
    state = torch.load(tmp_path / "run/teacher/checkpoint.pt", weights_only=True)
    assert torch.equal(state["trainable"]["objective.seen"], torch.full((256,), 3.0))


def views_dataset(params, ctx):
    from kdcore.nn import DatasetBundle, Split

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    split = Split(inputs=torch.randn(64, 4, generator=generator) + labels[:, None], labels=labels)
    return DatasetBundle(num_classes=2, input_shape=(4,), train=split, test=split,
                         views={"negated": lambda inputs, rng: -inputs})


class ReadsNegatedView(Distiller):
    teacher_taps = ()
    input_views = ("negated",)
    seen = []

    def __init__(self, params, ctx):
        super().__init__()

    def forward(self, student, teacher, batch):
        ReadsNegatedView.seen.append(torch.equal(batch.views["negated"], -batch.inputs))
        return {"zero": student["logits"].sum() * 0}


def test_a_distiller_gets_the_views_it_asks_for_and_a_missing_view_is_named(tmp_path):
    recipe = {
        "name": "views", "data": {"name": "views"}, "optimizer": {"lr": 0.1},
        "student": {"arch": {"name": "mlp", "params": {"hidden": [4]}}, "epochs": 1, "batch_size": 16,
                    "distillers": [{"name": "negated"}]},
        "runtime": {"device": "cpu", "threads": 1},
    }
    specs = [DatasetSpec(name="views", summary="t", build=views_dataset),
             DistillerSpec(name="negated", summary="t", build=ReadsNegatedView)]
    run_recipe(recipe, tmp_path / "run", components=specs)
    assert ReadsNegatedView.seen == [True] * 4
    ReadsNegatedView.input_views = ("strong",)
    try:
        with pytest.raises(KdcoreError, match=r"dataset 'views' offers no 'strong' view .*\(it offers: negated\)"):
            run_recipe(recipe, tmp_path / "again", components=specs)
    finally:
        ReadsNegatedView.input_views = ("negated",)


def test_a_runtime_options_value_reaches_components(fake_site, tmp_path):
    make_distribution(fake_site, "fake-weighted", "1.0", {"fake_weighted": WEIGHTED}, {"weighted": "fake_weighted"})
    seen = {}

    class Spy(Distiller):
        def __init__(self, params, ctx):
            super().__init__()
            seen.update(ctx.runtime)

        def forward(self, student, teacher, batch):
            return {"zero": student["logits"].sum() * 0}

    recipe = copy.deepcopy(TINY_TOY)
    recipe["student"]["distillers"] = [{"name": "spy"}]
    recipe["runtime"]["flush_every"] = 5
    recipe["teacher"]["epochs"] = recipe["student"]["epochs"] = 1
    run_recipe(recipe, tmp_path / "run", load_registry(), components=[DistillerSpec(name="spy", summary="t", build=Spy)])
    assert seen["flush_every"] == 5 and seen["device"] == "cpu" and "options" not in seen


def test_the_listing_shows_a_runtime_option(fake_site, monkeypatch, capsys):
    make_distribution(fake_site, "fake-weighted", "1.0", {"fake_weighted": WEIGHTED}, {"weighted": "fake_weighted"})
    code, out, _ = run_cli(monkeypatch, capsys, "plugins", "--params", "flush_every", "--json")
    assert code == 0 and json.loads(out) == {"name": "flush_every", "type": "int", "default": 3,
                                             "summary": "epochs between flushes"}


def test_runtime_option_types_may_be_any_pydantic_annotation():
    spec = RuntimeOptionSpec(name="mode", summary="t", type=Literal["a", "b"], default="a")
    assert spec.kind == "runtime-option" and spec.hook == "kdcore_runtime_options"
