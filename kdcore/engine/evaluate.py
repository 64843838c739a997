"""Evaluation metrics of a classifier on a split.

Top-1/top-5 are in percent. Besides them, every evaluation reports the negative
log-likelihood, the Brier score (mean ‖softmax − onehot‖², which ranks models as their MSE to
p* does, since E‖y − q‖² = E‖p* − q‖² + a constant of the split) and the expected calibration
error (15 equal-width confidence bins). Where the split knows p*(y|x), it also reports the
distances of the model's probabilities q to p*: ``mse_to_true`` = mean ‖q − p*‖² (the quantity that bounds the
student's error) and ``ce_to_true`` = mean −Σ p* log q.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.engine.accelerator import Accelerator
from kdcore.engine.data import LoaderSettings, evaluation_batches
from kdcore.nn import Split

ECE_BINS = 15


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    accelerator: Accelerator,
    batch_size: int,
    transform: Callable[[Any], Tensor] | None = None,
    loader: LoaderSettings = LoaderSettings(),
) -> dict[str, float]:
    """Metrics over the whole split; with several processes each evaluates its share and the
    sums are added up across them. ``transform`` applies where :attr:`Split.batch_transformed`
    says so."""
    was_training = model.training
    model.eval()
    totals: dict[str, Tensor] = {}
    count = 0
    device = accelerator.device
    shard = (accelerator.rank(), accelerator.world_size())
    for inputs, labels, index in evaluation_batches(split, batch_size, device, loader, *shard):
        if transform is not None and split.batch_transformed:
            inputs = transform(inputs)
        inputs = accelerator.inputs(inputs)
        with accelerator.autocast():
            logits = model(inputs).float()
        true_probs = split.true_probs[index.cpu()].to(device) if split.true_probs is not None else None
        for name, value in _batch_sums(logits, labels, true_probs).items():
            totals[name] = totals.get(name, 0) + value
        count += len(labels)
    model.train(was_training)
    if accelerator.several_processes():
        totals = {name: accelerator.sum_across_ranks(torch.as_tensor(total, device=device).clone())
                  for name, total in totals.items()}
        count = int(accelerator.sum_across_ranks(torch.tensor(count, device=device)))
    bins = totals.pop("ece_bins")
    metrics = {name: float(total) / count for name, total in totals.items()}
    metrics["top1"] *= 100
    metrics["top5"] *= 100
    metrics["ece"] = float((bins[1] - bins[2]).abs().sum()) / count
    return metrics


def _batch_sums(logits: Tensor, labels: Tensor, true_probs: Tensor | None) -> dict[str, Tensor]:
    num_classes = logits.shape[1]
    log_probs = F.log_softmax(logits, dim=1)
    probs = log_probs.exp()
    top = logits.topk(min(5, num_classes), dim=1).indices
    hits = top == labels[:, None]
    sums = {
        "top1": hits[:, 0].sum(),
        "top5": hits.any(dim=1).sum(),
        "nll": -log_probs.gather(1, labels[:, None]).sum(),
        "brier": (probs - F.one_hot(labels, num_classes)).pow(2).sum(),
    }
    confidence, predicted = probs.max(dim=1)
    bin_of = (confidence * ECE_BINS).nan_to_num(0).long().clamp(0, ECE_BINS - 1)
    correct = (predicted == labels).to(probs.dtype)
    sums["ece_bins"] = torch.stack([
        torch.zeros(ECE_BINS, device=probs.device).index_add_(0, bin_of, source)
        for source in (torch.ones_like(confidence), confidence, correct)
    ])  # per bin: count, summed confidence, summed correctness
    if true_probs is not None:
        sums["mse_to_true"] = (probs - true_probs).pow(2).sum()
        sums["ce_to_true"] = -(true_probs * log_probs).sum()
    return sums
