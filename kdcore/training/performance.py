"""Speed settings of a run, resolved for its device: bf16 autocast, channels-last images, and
in-memory datasets kept on the device. On a CPU all default to off, so results there do not
depend on them."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from kdcore.nn import DatasetBundle, Split
from kdcore.recipe import RuntimeConfig


@dataclass(frozen=True)
class Performance:
    device: torch.device
    bf16: bool
    channels_last: bool
    data_on_device: bool

    @classmethod
    def resolve(cls, runtime: RuntimeConfig, device: torch.device) -> Performance:
        on_gpu = device.type == "cuda"
        return cls(
            device=device,
            bf16=runtime.precision == "bf16" or (runtime.precision == "auto" and on_gpu),
            channels_last=on_gpu if runtime.channels_last is None else runtime.channels_last,
            data_on_device=on_gpu if runtime.data_on_device is None else runtime.data_on_device,
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def network(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, batch: Tensor) -> Tensor:
        if self.channels_last and batch.dim() == 4:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    def place(self, data: DatasetBundle) -> None:
        """Move the in-memory splits (images as stored, e.g. uint8) onto the device once."""
        if not self.data_on_device:
            return
        for split in (data.train, data.val, data.test):
            if split is not None and split.in_memory:
                for field in fields(Split):
                    value = getattr(split, field.name)
                    if isinstance(value, Tensor):
                        setattr(split, field.name, value.to(self.device))
