"""SoTeacher (Dong, Liu & Shang, ICLR 2024, "Toward Student-Oriented Teacher Network Training
for Knowledge Distillation"): cross-entropy plus a Lipschitz regulariser of the weights and a
consistency regulariser tying each sample's prediction to the running ensemble of its earlier
predictions (temporal ensembling), as in the authors' code (github.com/shwinshaker/SoTeacher:
``helper/lip_util.py``, ``helper/consist_util.py``, ``helper/loss.py``, ``train_teacher.py``,
with the settings of ``run_teacher.sh``).

Loss of a batch B at epoch e (0-based) of E::

    L = CE(z, y) + λ_lip · Σ_layers Lip(layer) + w(e) · (1/|B|) Σ_{i∈B} ‖softmax(z_i) − s_i‖²

- ``Lip`` is the authors' per-layer bound, summed over the leaf layers (not multiplied):
  convolution: the entry-wise ℓ1 norm Σ|W| of its kernel; linear: the ℓ1 operator norm
  ‖W‖₁ = max_j Σ_i |W_ij| (the largest absolute column sum); batch norm: max_c |γ_c| /
  √(running_var_c + ε). No spectral norms or power iteration are involved. Other layers add 0.
- ``s_i`` is sample i's temporal ensemble: after each time the sample is seen, ``s_i ← (1 − τ)
  s_i + τ softmax(z_i)`` (detached), with τ = 1 at its first visit and τ = 1/(e + 2) at a
  later visit in epoch e. (The authors count epochs from 1 and set τ = 1/(1 + epoch) with their
  internal counter, which gives these values.) The loss uses ``s_i`` from before this batch's
  update; samples never seen before add 0.
- ``w(e)``: ``linear`` (``run_teacher.sh``'s ``--consist_scheduler linear``): λ_cons · (e + 1) / E,
  ``constant``: λ_cons; and 0 in epoch 0, when no ensemble exists yet.

Defaults from ``run_teacher.sh`` (SoTeacher): λ_lip = 1e-5 (``--lip_alpha 0.00001``), λ_cons = 1
(``--consist_alpha 1.0``) with the linear ramp; the temperature of the ensembled softmax is 1 as
in ``consist_util.py``.

Departures: a sample whose first visit comes after epoch 0 (e.g. dropped by ``drop_last`` in
epoch 0) starts its ensemble there instead of being pulled towards the zero vector the authors'
buffer holds for it; layers are recognised by type (``nn.Linear``, convolutions, batch norms)
instead of by class-name substrings; under torchrun every process receives every process's
ensemble updates (:func:`kdcore.nn.gather_across_processes`), so the buffers stay identical.
The ensemble is a (train_size × K) float32 buffer on the training device (20 MB for CIFAR-100).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from kdcore.api import ObjectiveContext
from kdcore.errors import KdcoreError
from kdcore.nn import Batch, Objective, gather_across_processes


def layer_lipschitz_bound(module: nn.Module) -> Tensor | None:
    """The authors' bound for one layer (see the module docstring), or ``None`` for a layer
    they do not bound."""
    if isinstance(module, _ConvNd):
        return module.weight.abs().sum()
    if isinstance(module, nn.Linear):
        return module.weight.abs().sum(dim=0).max()
    if isinstance(module, _BatchNorm) and module.running_var is not None:
        scale = module.weight.abs() if module.weight is not None else torch.ones_like(module.running_var)
        return (scale / torch.sqrt(module.running_var + module.eps)).max()
    return None


def lipschitz_layers(model: nn.Module) -> list[nn.Module]:
    """The leaf modules of ``model`` that :func:`layer_lipschitz_bound` bounds, each once."""
    found: list[nn.Module] = []
    seen: set[int] = set()
    for module in model.modules():
        if next(module.children(), None) is None and id(module) not in seen:
            if isinstance(module, (_ConvNd, nn.Linear, _BatchNorm)):
                found.append(module)
                seen.add(id(module))
    return found


def lipschitz_penalty(layers: list[nn.Module]) -> Tensor:
    """Σ over ``layers`` of :func:`layer_lipschitz_bound`."""
    bounds = [bound for bound in map(layer_lipschitz_bound, layers) if bound is not None]
    return torch.stack(bounds).sum() if bounds else torch.zeros(())


class SoTeacher(Objective):
    def __init__(self, params, ctx: ObjectiveContext):
        super().__init__()
        self.lipschitz_weight = params.lipschitz_weight
        self.consistency_weight = params.consistency_weight
        self.schedule = params.consistency_schedule
        if self.lipschitz_weight > 0 and ctx.model is None:
            raise KdcoreError("objective 'soteacher' needs the trained network (ObjectiveContext.model) "
                              "for its Lipschitz term; or set lipschitz_weight: 0")
        if self.consistency_weight > 0 and ctx.train_size <= 0:
            raise KdcoreError("objective 'soteacher' needs the training-set size (ObjectiveContext.train_size) "
                              "for its consistency term; or set consistency_weight: 0")
        # plain list, not a ModuleList: the layers belong to the model, not to the objective
        self._layers = lipschitz_layers(ctx.model) if ctx.model is not None else []
        size = max(ctx.train_size, 0) if self.consistency_weight > 0 else 0
        self.register_buffer("ensemble", torch.zeros(size, ctx.num_classes))
        self.register_buffer("seen", torch.zeros(size, dtype=torch.bool))

    def consistency_scale(self, epoch: int, epochs: int) -> float:
        """w(e) of the module docstring."""
        if epoch == 0 or self.consistency_weight == 0:
            return 0.0
        if self.schedule == "linear":
            return self.consistency_weight * (epoch + 1) / epochs
        return self.consistency_weight

    def forward(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        logits = logits.float()
        terms = {"ce": F.cross_entropy(logits, batch.labels)}
        if self.lipschitz_weight > 0:
            terms["lipschitz"] = self.lipschitz_weight * lipschitz_penalty(self._layers).to(logits.device)
        if self.consistency_weight > 0:
            terms["consistency"] = self._consistency(logits, batch)
        return terms

    def _consistency(self, logits: Tensor, batch: Batch) -> Tensor:
        if self.ensemble.device != logits.device:
            self.to(logits.device)  # buffers only: the model's layers are not submodules here
        probabilities = logits.softmax(dim=1)
        index = batch.index.to(logits.device)
        previous, seen = self.ensemble[index], self.seen[index]
        squared = (probabilities - previous).pow(2).sum(dim=1) * seen
        loss = self.consistency_scale(batch.epoch, batch.epochs) * squared.sum() / len(index)
        with torch.no_grad():
            self._update(gather_across_processes(index), gather_across_processes(probabilities.detach()),
                         batch.epoch)
        return loss

    def _update(self, index: Tensor, probabilities: Tensor, epoch: int) -> None:
        later = 1.0 / (epoch + 2)
        rate = torch.where(self.seen[index], later, 1.0)[:, None]
        self.ensemble[index] = (1 - rate) * self.ensemble[index] + rate * probabilities
        self.seen[index] = True
