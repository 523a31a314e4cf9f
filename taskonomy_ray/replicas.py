"""Data-parallel training's collectives: a process's place among the replicas, and their agreement.

Training alone, each is a no-op, so one loop serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Replica:
    """A process's place in a data-parallel training (rank 0 of 1 when training alone)."""

    rank: int = 0
    world: int = 1


def replica() -> Replica:
    """The data-parallel group this process belongs to: torch.distributed's, when initialised.

    A launcher (Ray Train's TorchTrainer, torchrun) sets up the process group; the loop itself
    only reads it, so the same function trains alone or as one of several replicas.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Replica()
    return Replica(dist.get_rank(), dist.get_world_size())


def collective_device(device: torch.device) -> torch.device:
    """Where the loop's small collectives put their tensors (NCCL takes CUDA tensors only).

    The CPU when the process group's backend takes CPU tensors (gloo), else the training device.
    """
    config = str(torch.distributed.get_backend_config())  # e.g. "cpu:gloo,cuda:gloo"
    if ":" in config:
        types = {part.split(":")[0] for part in config.split(",")}
    else:
        types = set(torch.distributed.Backend.backend_capability.get(config, ()))
    return torch.device("cpu") if "cpu" in types else device


def all_agree(rep: Replica, batch: dict[str, Any], device: torch.device) -> bool:
    """Whether every replica got at least one sample for this step (one small all-reduce)."""
    if rep.world == 1:
        return bool(batch["image"])
    have = torch.tensor([len(batch["image"])], dtype=torch.int64,
                        device=collective_device(device))
    torch.distributed.all_reduce(have, op=torch.distributed.ReduceOp.MIN)
    return bool(have.item() > 0)


def mean_over(loss: torch.Tensor, rep: Replica, device: torch.device) -> float:
    """The step's loss averaged over the replicas (each replica's own when alone)."""
    value = loss.detach().float().reshape(1)
    if rep.world > 1:
        value = value.to(collective_device(device))
        torch.distributed.all_reduce(value)
        value /= rep.world
    return float(value.item())


def gather_rng_states(rep: Replica, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """`rng_replicas`: every replica's random `state` by rank, for rank 0's checkpoint.

    (Alone, the checkpoint's own `rng` is the whole state: nothing to add.)
    """
    if rep.world == 1:
        return {}
    states: list[Any] = [None] * rep.world
    torch.distributed.all_gather_object(states, state)
    return {"rng_replicas": states}


def parallel(net: nn.Module, rep: Replica, device: torch.device) -> nn.Module:
    """`net` for the training step: itself alone, wrapped in DistributedDataParallel otherwise.

    Wrapping broadcasts rank 0's weights and buffers, so replicas start identical (for example
    after each initialised its output bias from its own share of the first batch); afterwards
    gradients are averaged every step, so every replica takes the same optimiser step.
    """
    if rep.world == 1:
        return net
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)
