"""Data-parallel training under torchrun: process group set-up, roles and the few collective calls we need.

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op, so the same
training code runs on one process, on N CPU processes (gloo) or on N GPUs (nccl).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job. rank 0 is the one that evaluates, saves and reports."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs."""
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistributedContext, torch.device]:
    """Joins the torchrun job if there is one; on CUDA each process takes the GPU of its local rank.

    Returns:
        The context and the device this process should train on.

    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(), device
    context = DistributedContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Rank 0 validates, calibrates and exports while the others wait in a collective: give a
        # large validation set time instead of the 10-30 min default.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return context, device


def broadcast_from_main(value: Any, context: DistributedContext) -> Any:
    """Rank 0's value on every rank (e.g. the early-stopping decision), so all ranks stop together."""
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def parameters_in_sync(model: torch.nn.Module, context: DistributedContext) -> bool:
    """Whether every rank holds the same weights: what DDP's gradient all-reduce guarantees.

    A cheap self-check recorded in the report; it fails if gradients were not averaged (e.g. a
    model trained outside the DDP wrapper), since the ranks saw different data.
    """
    if not context.enabled:
        return True
    # On the parameters' own device: gloo gathers CPU tensors, nccl CUDA ones.
    checksum = torch.stack([parameter.detach().double().sum() for parameter in model.parameters()])
    gathered = [torch.zeros_like(checksum) for _ in range(context.world_size)]
    dist.all_gather(gathered, checksum)
    return all(torch.equal(other, gathered[0]) for other in gathered)


def barrier(context: DistributedContext) -> None:
    """Waits for every rank."""
    if context.enabled:
        dist.barrier()


def shutdown_distributed(context: DistributedContext) -> None:
    """Leaves the process group cleanly (avoids torch's destroy-at-exit warning)."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
