"""Process-group helpers for runs launched by ``torchrun`` (one process when not launched so)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size == 1:
        return DistInfo(device=device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), world_size, local_rank, device)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over all processes (identity in a single process)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def sync_batchnorm(model: nn.Module, info: DistInfo) -> nn.Module:
    """``model`` with its BatchNorms synchronised across the processes (unchanged in a single process).

    PyTorch's SyncBatchNorm runs on GPUs only, so several CPU processes get a clear error instead of a
    failure at the first forward pass.
    """
    if not info.enabled:
        return model
    if info.device.type not in ("cuda", "xpu"):
        raise ValueError(
            f"--sync-bn needs GPUs: PyTorch's SyncBatchNorm does not run on {info.device.type} tensors; "
            "drop --sync-bn for CPU runs"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
