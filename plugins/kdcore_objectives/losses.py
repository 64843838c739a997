"""Teacher objectives as modules mapping (logits, labels) to a scalar loss."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.api import ObjectiveContext


class CrossEntropy(nn.Module):
    def __init__(self, params, ctx: ObjectiveContext):
        super().__init__()
        self.label_smoothing = params.label_smoothing

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


class SoftmaxMSE(nn.Module):
    """``‖softmax(z) − onehot(y)‖²`` averaged over the batch (``reduction="sum"``), or also
    averaged over the K classes (``"mean"``), times ``scale``.

    Since E[onehot(y) | x] = p*(·|x), its expectation is ``E‖p* − q‖²`` plus a constant: the
    minimiser is the teacher closest to the Bayes class probabilities in squared distance.
    """

    def __init__(self, params, ctx: ObjectiveContext):
        super().__init__()
        self.num_classes = ctx.num_classes
        self.per_class = params.reduction == "mean"
        self.scale = params.scale

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        probabilities = logits.float().softmax(dim=1)
        one_hot = torch.zeros_like(probabilities).scatter_(1, labels[:, None], 1.0)
        squared_distance = F.mse_loss(probabilities, one_hot, reduction="sum") / len(labels)
        if self.per_class:
            squared_distance = squared_distance / self.num_classes
        return squared_distance * self.scale
