"""Negatives from every process: the batch of a data-parallel run gathered, with gradients that stay right."""
from __future__ import annotations

import torch
from torch import Tensor


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def gather_across_processes(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Each tensor concatenated over the processes of the default process group, in rank order; the local part
    keeps its graph. Outside a group of several processes: the tensors unchanged.

    Every process then computes the same global loss, but its backward reaches only its own rows; the local part's
    gradient is multiplied by the number of processes so that DistributedDataParallel's average of the processes'
    gradients equals the gradient of the global loss (what one process would get on the global batch)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return tensors
    world, rank = dist.get_world_size(), dist.get_rank()
    present = [x for x in tensors if x is not None]
    if not present:
        return tensors
    # the processes' row counts may differ (an epoch's short last batch): gather them, pad to the largest
    count = torch.tensor([present[0].shape[0]], device=present[0].device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    most = max(counts)
    out = []
    for x in tensors:
        if x is None:
            out.append(None)
            continue
        local = x.detach().contiguous()
        if local.shape[0] < most:
            local = torch.cat([local, local.new_zeros((most - local.shape[0], *local.shape[1:]))])
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        parts = [part[:n] for part, n in zip(parts, counts)]
        parts[rank] = _ScaleGradient.apply(x, float(world)) if x.requires_grad else x
        out.append(torch.cat(parts))
    return tuple(out)
