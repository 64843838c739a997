"""The distiller extension points: a preparation stage before distillation, and batch expansion."""

import copy
import json

import torch
from safetensors.torch import load_file
from torch import nn

from kdcore.api import DistillerSpec
from kdcore.nn import Batch, Distiller, Preparation
from kdcore.config.loader import load_variants
from kdcore.registry import PluginInfo
from kdcore.distill.run import Run
from tests.conftest import TINY_TOY


class ProbeHead(Distiller):
    """Trains a linear probe on the teacher's pooled feature first, then distils the probe's
    outputs on inputs doubled with noise."""

    student_taps = ("logits",)
    teacher_taps = ("pooled",)

    def __init__(self, params, ctx):
        super().__init__()
        self.teacher_features = ctx.teacher_features
        self.probe = nn.Linear(ctx.teacher_shapes["pooled"][0], ctx.num_classes)
        self.seen_rows: list[tuple[int, int]] = []

    def preparation(self):
        def step_loss(batch):
            pooled = self.teacher_features(batch.inputs)["pooled"]
            assert not pooled.requires_grad
            loss = nn.functional.cross_entropy(self.probe(pooled), batch.labels)
            return loss, {"probe_ce": loss}

        return Preparation(trainable=self.probe, step_loss=step_loss, epochs=2, batch_size=64,
                           optimizer={"lr": 0.1}, schedule={"name": "constant"})

    def expand_batch(self, batch):
        noisy = batch.inputs + 0.1 * torch.randn_like(batch.inputs)
        inputs = torch.stack([batch.inputs, noisy], dim=1).flatten(0, 1)
        return Batch(inputs=inputs, labels=batch.labels, index=batch.index, epoch=batch.epoch,
                     epochs=batch.epochs, labeled=batch.labeled, primary=torch.arange(0, len(inputs), 2))

    def forward(self, student, teacher, batch):
        self.seen_rows.append((len(student["logits"]), len(batch.labels)))
        target = self.probe(teacher["pooled"]).softmax(1)
        return {"probe_kd": -(target * student["logits"].log_softmax(1)).sum(1).mean()}


def test_preparation_runs_first_then_freezes_and_batch_expansion_reaches_both_networks(registry, write_recipe, tmp_path):
    built = []

    def build(params, ctx):
        built.append(ProbeHead(params, ctx))
        return built[-1]

    patched = registry.with_component("distiller", DistillerSpec(name="probe-head", summary="test", build=build),
                                      PluginInfo("t", "tests", "0"))
    recipe = copy.deepcopy(TINY_TOY)
    recipe["student"]["distillers"] = [{"name": "probe-head", "weight": 1.0}]
    [variant] = load_variants(write_recipe(recipe), [], patched)[1]
    Run(variant.recipe, tmp_path / "run", patched).execute()

    prepared = tmp_path / "run/prepare-probe-head"
    log = [json.loads(line) for line in (prepared / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and "train/probe_ce" in log[0]
    assert not any(key.startswith("val/") for key in log[0])
    distiller = built[0]
    assert not distiller.probe.weight.requires_grad
    saved = load_file(str(prepared / "model.safetensors"))
    assert torch.equal(saved["weight"], distiller.probe.weight.detach())  # the student stage left it alone
    assert distiller.seen_rows and all(rows == 2 * labels for rows, labels in distiller.seen_rows)
    student_log = [json.loads(line) for line in (tmp_path / "run/student/metrics.jsonl").read_text().splitlines()]
    assert {"train/ce", "train/probe-head"} <= set(student_log[0])
