"""Logit matching: the student regresses the teacher's logits."""

from kdcore.nn import Distiller


class LogitMatching(Distiller):
    # Both networks' logits; ask for "pooled", "stages"... to read intermediate features.
    student_taps = ("logits",)
    teacher_taps = ("logits",)

    def __init__(self, params, ctx):
        super().__init__()
        self.center = params.center

    def forward(self, student, teacher, batch):
        s, t = student["logits"], teacher["logits"].detach()  # the teacher only teaches
        if self.center:
            s = s - s.mean(dim=1, keepdim=True)
            t = t - t.mean(dim=1, keepdim=True)
        return {"mse": (s - t).pow(2).mean()}
