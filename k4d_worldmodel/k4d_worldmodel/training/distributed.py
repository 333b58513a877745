# Copyright 2026 k4d developers. Apache-2.0.
"""What the trainers (``train.py``, ``vae.py``) need from ``torch.distributed`` beyond the DDP wrapper itself:
who this process is, decisions every rank must take alike, and the check that the replicas stayed identical.
All are no-ops in one process."""
from __future__ import annotations

import torch


def dist_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised ``torch.distributed`` group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag OR-ed over every process (a no-op in one process): loops that stop on a clock or on a bad loss
    must stop at the same step on every rank, or the others wait forever in the next gradient all-reduce."""
    import torch.distributed as dist

    if dist_world()[1] == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


@torch.no_grad()
def replica_spread(module: torch.nn.Module, device: torch.device) -> float:
    """Largest difference between the processes' copies of ``module``'s parameters (0.0 in one process): each
    parameter's sum and sum of squares are gathered from every rank. Data-parallel replicas must agree exactly."""
    import torch.distributed as dist

    if dist_world()[1] == 1:
        return 0.0
    v = torch.stack([torch.stack([p.double().sum(), (p.double() ** 2).sum()]) for p in module.parameters()]).to(device)
    lo, hi = v.clone(), v.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return float((hi - lo).abs().max())


def check_replicas(module: torch.nn.Module, device: torch.device, what: str, step: int) -> float:
    """``replica_spread`` of ``module``; RuntimeError naming ``what`` and ``step`` when the copies differ."""
    spread = replica_spread(module, device)
    if spread > 0.0:
        raise RuntimeError(f"{what}: the {dist_world()[1]} processes' weights differ by {spread:g} after step "
                           f"{step}: the gradients were not synchronised")
    return spread
