"""What the ranks of a training run share: gradients outside DDP, counts and positions. Each is a no-op
(or the rank's own value) when the run is not distributed."""

from __future__ import annotations


def sync_grads(params, world: int) -> None:
    """Average gradients of parameters outside the DDP module across ranks (zeros where a rank has none)."""
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def reduce_sum(values: list[float], device: str) -> list[float]:
    """Sum counts over the ranks (each rank's own figure when not distributed)."""
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64 if device == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather(obj, world: int) -> list:
    import torch.distributed as dist

    if world == 1 or not dist.is_available() or not dist.is_initialized():
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out
