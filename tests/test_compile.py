"""Compiled training passes (``runtime.compile``) train as eager ones do: the student's taps
are recorded through the compiled forward (hooks and all, even though the teacher of the same
class was compiled first, without hooks), the live teacher runs compiled too, and the per-epoch
losses match eager execution to float tolerance."""

import pytest
import torch

from tests.augmented_pair import train_pair

DISTILLERS = [{"name": "at", "weight": 100.0}, {"name": "kd", "weight": 0.9}]


def test_compiled_passes_train_as_eager_ones(registry, write_recipe, tmp_path):
    torch._dynamo.reset()
    runtime = {"device": "cpu", "threads": 2}
    eager = train_pair(registry, write_recipe, tmp_path / "eager", {**runtime, "compile": False}, DISTILLERS)
    compiled = train_pair(registry, write_recipe, tmp_path / "compiled", {**runtime, "compile": True}, DISTILLERS)
    for term in ("train/loss", "train/ce", "train/at", "train/kd"):
        assert [r[term] for r in compiled] == pytest.approx([r[term] for r in eager], rel=1e-3), term
    assert compiled[-1]["test/top1"] == eager[-1]["test/top1"]
