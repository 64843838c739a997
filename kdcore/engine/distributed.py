"""Training across processes launched by ``torchrun``: one process per device, gradients
averaged with DistributedDataParallel, metrics reduced across processes, files written by
rank 0 only. Without ``torchrun`` every function here is a no-op for a single process."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start() -> None:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPUs)."""
    if launched() and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's value, on every rank."""
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def sum_across_ranks(tensor: Tensor) -> Tensor:
    if active():
        dist.all_reduce(tensor)
    return tensor


def gather(tensor: Tensor) -> Tensor:
    """Every process's ``tensor`` (same shape on all) concatenated along dim 0 in rank order;
    the tensor itself for a single process. Not differentiable."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def wrap(model: nn.Module) -> nn.Module:
    """The network to call in a training step: DistributedDataParallel when several processes
    train together (the teacher is never wrapped: it is not trained there)."""
    if not active():
        return model
    device_ids = [model_device(model).index] if model_device(model).type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Average gradients of parameters outside DistributedDataParallel (a distiller's own)."""
    if not active():
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world_size()


def identical_across_ranks(module: nn.Module) -> bool:
    """Whether every rank holds the same parameters and buffers (compared by a checksum per
    tensor)."""
    if not active():
        return True
    tensors = [*module.parameters(), *module.buffers()]
    checksum = torch.stack([t.detach().double().sum() for t in tensors]).to(model_device(module))
    gathered = [torch.empty_like(checksum) for _ in range(world_size())]
    dist.all_gather(gathered, checksum)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def model_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
