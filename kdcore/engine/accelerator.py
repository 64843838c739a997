"""Where and how a run computes, as one object: the device, bf16 autocast, channels-last images,
in-memory datasets kept on the device, compiled passes replayed as CUDA graphs, the choice
between deterministic and fastest kernels, and the processes training together (torchrun).

Defaults: on a GPU everything is on (CUDA graphs not under torchrun) and kernels are picked
for speed; on a CPU only channels-last is on (about 1.2× faster CPU convolutions, measured in
benchmarks/README.md) and kernels are deterministic. Compilation is off on a CPU by default: it
costs tens of seconds per network, more than short CPU runs gain from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from kdcore.engine import distributed
from kdcore.errors import KdcoreError
from kdcore.nn import DatasetBundle, Split


@dataclass(frozen=True)
class AcceleratorSettings:
    """What a run asks for; ``None`` means the device's default (see the module docstring)."""

    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    data_on_device: bool | None = None
    compile: bool | None = None
    cuda_graphs: bool | None = None
    deterministic: bool | None = None


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one (with several processes, this process's GPU)."""
    if name == "auto":
        return torch.device(f"cuda:{distributed.local_rank()}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    present = available_devices()
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise KdcoreError(f"runtime.device: {name} is not on this machine (devices present: {', '.join(present)}); "
                          f"set runtime.device to one of them, or to auto")
    if device.type == "mps" and "mps" not in present:
        raise KdcoreError(f"runtime.device: mps is not on this machine (devices present: {', '.join(present)}); "
                          "set runtime.device to one of them, or to auto")
    return device


def available_devices() -> list[str]:
    """``cpu``, then every CUDA device (``cuda:0`` ...) and ``mps`` where present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


@dataclass(frozen=True)
class Accelerator:
    device: torch.device
    bf16: bool
    channels_last: bool
    data_on_device: bool
    compile: bool
    cuda_graphs: bool
    deterministic: bool

    @classmethod
    def resolve(cls, settings: AcceleratorSettings) -> Accelerator:
        device = resolve_device(settings.device)
        on_gpu = device.type == "cuda"
        if settings.cuda_graphs and not on_gpu:
            raise KdcoreError(f"runtime.cuda_graphs needs a CUDA device, and this run trains on {device}; "
                              "remove cuda_graphs or set runtime.device: cuda")
        compiled = on_gpu if settings.compile is None else settings.compile
        return cls(
            device=device,
            bf16=settings.precision == "bf16" or (settings.precision == "auto" and on_gpu),
            channels_last=settings.channels_last,
            data_on_device=on_gpu if settings.data_on_device is None else settings.data_on_device,
            compile=compiled,
            # DistributedDataParallel's gradient hooks do not replay in a graph
            cuda_graphs=compiled and on_gpu and not distributed.launched() if settings.cuda_graphs is None
            else settings.cuda_graphs,
            deterministic=not on_gpu if settings.deterministic is None else settings.deterministic,
        )

    # the processes that train together (one, without torchrun)
    is_main = staticmethod(distributed.is_main)
    several_processes = staticmethod(distributed.active)
    rank = staticmethod(distributed.rank)
    world_size = staticmethod(distributed.world_size)
    barrier = staticmethod(distributed.barrier)
    sum_across_ranks = staticmethod(distributed.sum_across_ranks)
    average_gradients = staticmethod(distributed.average_gradients)
    identical_across_ranks = staticmethod(distributed.identical_across_ranks)

    def trained(self, network: nn.Module) -> Callable[[Tensor], Tensor]:
        """What a training step calls to run a network it trains: wrapped for several
        processes (DistributedDataParallel), then compiled when compilation is on."""
        return self.training_pass(distributed.wrap(network))

    @contextlib.contextmanager
    def process_settings(self) -> Iterator[None]:
        """PyTorch's process-wide settings for the run, restored afterwards: deterministic
        kernels or cuDNN's benchmark mode and, with compilation, hook-aware recompilation.

        PyTorch's deterministic mode also fills every new tensor with NaN by default, to expose
        reads of uninitialised memory; that costs about a tenth of a CPU training step and
        changes no result of correct kernels, so it is switched off.

        Compiled code is cached per forward method and, by default, reused for another module
        of the same class whatever forward hooks it has: a student compiled after a teacher of
        its architecture would silently skip the hooks that record its taps. Guarding on hooks
        makes it recompile instead. Each run starts with an empty cache, so that the runs of a
        sweep trained one after another in one process never reach the cache's limit of
        entries per method, past which PyTorch silently runs eagerly (compiled kernels stay
        cached on disk).
        """
        before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                  torch.utils.deterministic.fill_uninitialized_memory, torch.backends.cudnn.benchmark)
        torch.use_deterministic_algorithms(self.deterministic, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = not self.deterministic
        hook_guards = torch._dynamo.config.patch(skip_nnmodule_hook_guards=False) if self.compile \
            else contextlib.nullcontext()
        if self.compile:
            torch._dynamo.reset()
        try:
            with hook_guards:
                yield
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
            torch.utils.deterministic.fill_uninitialized_memory = before[2]
            torch.backends.cudnn.benchmark = before[3]

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def network(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def training_pass(self, network: nn.Module) -> Callable[[Tensor], Tensor]:
        """What a training step calls instead of ``network``: the same module, compiled when
        compilation is on. The module itself stays uncompiled for evaluation, probing and
        checkpoints, so only the training batch shapes are ever compiled (``dynamic=False``:
        kernels specialised to the batch size; the last, smaller batch compiles once more)."""
        if not self.compile:
            return network
        return torch.compile(network, dynamic=False, mode="reduce-overhead" if self.cuda_graphs else None)

    def begin_step(self) -> None:
        """Tells the CUDA-graph replays that a new training step starts, so the previous step's
        outputs may be overwritten."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

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
