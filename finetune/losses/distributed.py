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


def _row_counts(first: Tensor, world: int) -> list[int]:
    """Every process's row count (an epoch's short last batch makes them differ), in rank order."""
    import torch.distributed as dist
    count = torch.tensor([first.shape[0]], device=first.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    return [int(c) for c in counts]


def _padded(x: Tensor, rows: int) -> Tensor:
    """`x` with zero rows appended up to `rows` (all_gather needs one shape on every process)."""
    return x if x.shape[0] == rows else torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))])


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
    counts = _row_counts(present[0], world)  # padded to the largest, cut back after the gather
    most = max(counts)
    out = []
    for x in tensors:
        if x is None:
            out.append(None)
            continue
        local = _padded(x.detach().contiguous(), most)
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        parts = [part[:n] for part, n in zip(parts, counts)]
        parts[rank] = _ScaleGradient.apply(x, float(world)) if x.requires_grad else x
        out.append(torch.cat(parts))
    return tuple(out)


def gather_with_gradients(*tensors: Tensor | None) -> tuple[tuple[Tensor | None, ...], int]:
    """Each tensor concatenated over the processes of the default process group, in rank order, and where this
    process's rows start. Unlike :func:`gather_across_processes`, the gradient of every gathered copy travels back
    to the process that owns the rows (summed there: ``torch.distributed.nn``'s all-gather), so that a loss each
    process computes on its own rows against everyone's (SigLIP's) gets, after DistributedDataParallel's average,
    the gradient of the mean of those losses. Outside a group of several processes: the tensors unchanged, 0."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return tensors, 0
    present = [x for x in tensors if x is not None]
    if not present:
        return tensors, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    counts = _row_counts(present[0], world)
    most = max(counts)
    out = []
    for x in tensors:
        if x is None:
            out.append(None)
            continue
        padded = _padded(x, most)
        if x.requires_grad:
            from torch.distributed.nn.functional import all_gather
            parts = list(all_gather(padded.contiguous()))
        else:
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded.contiguous())
        out.append(torch.cat([part[:n] for part, n in zip(parts, counts)]))
    return tuple(out), sum(counts[:rank])
