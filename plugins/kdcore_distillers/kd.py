"""Knowledge distillation (Hinton et al., 2015)."""

import torch.nn.functional as F
from torch import Tensor

from kdcore.api import DistillerContext
from kdcore.nn import Batch, Distiller, Features


class KD(Distiller):
    """``KL(softmax(t/T) || softmax(s/T))``, summed over classes, averaged over the batch,
    times ``T²`` when ``scale_by_t2`` (the published CIFAR setting: T = 4)."""

    def __init__(self, params, ctx: DistillerContext):
        super().__init__()
        self.temperature = params.temperature
        self.scale = params.temperature**2 if params.scale_by_t2 else 1.0

    def forward(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        log_student = F.log_softmax(student["logits"] / self.temperature, dim=1)
        log_teacher = F.log_softmax(teacher["logits"] / self.temperature, dim=1)
        divergence = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")
        return {"kd": divergence * self.scale}
