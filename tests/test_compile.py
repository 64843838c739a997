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


def test_the_cuda_graph_mode_compiles_and_marks_steps():
    """The CUDA-graph settings' calls (mode 'reduce-overhead', a step mark before each step)
    on a CPU, where PyTorch compiles without graphs: the same values as the eager module."""
    from kdcore.engine.accelerator import Accelerator
    from kdcore_toy.mlp import MLP

    torch._dynamo.reset()
    graphs = Accelerator(device=torch.device("cpu"), bf16=False, channels_last=False, data_on_device=False,
                         compile=True, cuda_graphs=True, deterministic=True)
    model = MLP(4, [8], 3)
    training_pass = graphs.training_pass(model)
    inputs = torch.randn(5, 4)
    for _ in range(2):
        graphs.begin_step()
        assert torch.allclose(training_pass(inputs), model(inputs), atol=1e-6)
