"""The GPU fast path: bf16 autocast, channels-last, data on the device, compiled passes replayed
as CUDA graphs, cuDNN benchmark mode. Skipped without a GPU (CI has none); benchmarks/gpu_check.sh
runs these on one."""

import pytest
import torch

from kdcore.nn import Split
from kdcore.engine.data import Augmentation, training_batches
from kdcore.engine.accelerator import Accelerator, AcceleratorSettings
from kdcore_vision.datasets.cifar import CIFAR100
from kdcore_vision.transforms import CropFlipNormalize
from tests.augmented_pair import train_pair

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

REFERENCE = {"device": "cuda", "precision": "fp32", "channels_last": False, "data_on_device": False,
             "compile": False, "deterministic": True}


def test_every_fast_option_is_on_by_default_on_a_gpu():
    fast = Accelerator.resolve(AcceleratorSettings(device="cuda"))
    assert (fast.bf16, fast.channels_last, fast.data_on_device, fast.compile, fast.cuda_graphs) == (True,) * 5
    assert not fast.deterministic


@pytest.mark.parametrize("distillers", [
    [{"name": "kd", "weight": 0.9}],
    [{"name": "at", "weight": 100.0}, {"name": "crd", "weight": 0.8, "params": {"num_negatives": 8}}],
], ids=["kd", "at+crd"])
def test_the_fast_path_trains_as_the_fp32_eager_path(distillers, registry, write_recipe, tmp_path):
    """Same seeds, so the same initial weights and batches: the losses agree to bf16 precision
    (taps and CRD's memory bank read through CUDA-graph replays included)."""
    torch._dynamo.reset()
    reference = train_pair(registry, write_recipe, tmp_path / "reference", REFERENCE, distillers, epochs=3)
    fast = train_pair(registry, write_recipe, tmp_path / "fast", {"device": "cuda"}, distillers, epochs=3)
    terms = [key for key in reference[0] if key.startswith("train/")]
    for term in terms:
        assert [r[term] for r in fast] == pytest.approx([r[term] for r in reference], rel=0.05, abs=0.02), term


def test_device_resident_batches_are_sliced_and_augmented_without_waiting_for_the_gpu():
    """No host-device synchronisation per batch: the epoch's order moves to the device once and
    the augmentation's random numbers are copied without waiting."""
    cuda = torch.device("cuda")
    split = Split(inputs=torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, device=cuda),
                  labels=torch.randint(0, 100, (256,), device=cuda))
    batches = training_batches(split, torch.arange(256), 64, drop_last=False, generator=torch.Generator().manual_seed(0),
                               device=cuda, augmentation=Augmentation(CropFlipNormalize(CIFAR100.mean, CIFAR100.std)))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        produced = [next(batches) for _ in range(4)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    inputs, labels, index = produced[-1]
    assert inputs.is_cuda and labels.is_cuda and index.is_cuda and inputs.shape == (64, 3, 32, 32)
    assert sorted(torch.cat([i for _, _, i in produced]).tolist()) == list(range(256))
