"""The KD distiller against a per-sample, per-class loop."""

import math

import pytest
import torch

from kdcore.nn import Batch


def build_kd(registry, **params):
    spec = registry.get("distiller", "kd").spec
    return spec.builder()(spec.params(**params), None)


def kd_by_hand(student, teacher, temperature):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        s_exp = [math.exp(v / temperature) for v in s_row]
        t_exp = [math.exp(v / temperature) for v in t_row]
        p = [e / sum(t_exp) for e in t_exp]
        q = [e / sum(s_exp) for e in s_exp]
        total += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
    return total / len(student)


def batch_of(size):
    return Batch(inputs=torch.zeros(size, 1), labels=torch.zeros(size, dtype=torch.long),
                 index=torch.arange(size), epoch=0, epochs=1)


def test_kd_matches_hand_computation_with_t_squared_scaling(registry):
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator)
    kd = build_kd(registry)
    loss = kd({"logits": student}, {"logits": teacher}, batch_of(4))["kd"]
    assert kd.temperature == 4.0
    assert loss.item() == pytest.approx(16 * kd_by_hand(student, teacher, 4.0), rel=1e-5)
    unscaled = build_kd(registry, temperature=2.0, scale_by_t2=False)
    value = unscaled({"logits": student}, {"logits": teacher}, batch_of(4))["kd"].item()
    assert value == pytest.approx(kd_by_hand(student, teacher, 2.0), rel=1e-5)


def test_kd_is_zero_when_student_equals_teacher_and_grad_only_reaches_student(registry):
    logits = torch.randn(3, 4)
    kd = build_kd(registry, temperature=1.0)
    assert kd({"logits": logits}, {"logits": logits}, batch_of(3))["kd"].item() == pytest.approx(0.0, abs=1e-7)
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    kd({"logits": student}, {"logits": teacher.detach()}, batch_of(3))["kd"].backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
