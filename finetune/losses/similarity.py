"""Similarities and distances the losses share, always computed in at least float32.

Under autocast a bfloat16 cosine of L2-normalized rows carries rounding of ~4e-3; at a temperature of 0.05 that
is logit noise of ~0.1. So every similarity here leaves autocast and promotes half precision to float32.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor

from ..functional import l2_normalize


@contextlib.contextmanager
def no_autocast(device: torch.device) -> Iterator[None]:
    """Autocast switched off on `device` for the block (nothing to switch off for a device autocast lacks)."""
    try:
        context = torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):
        context = contextlib.nullcontext()
    with context:
        yield


def full_precision(x: Tensor) -> Tensor:
    """`x` in at least float32 (float64 stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _common(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """`a` and `b` in one dtype, at least float32 (bf16 embeddings with fp32 class weights, fp64 tests)."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype), b.to(dtype)


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """(N, M) cosine similarities between the rows of `a` (N, D) and `b` (M, D), in at least float32."""
    a, b = _common(a, b)
    with no_autocast(a.device):
        return l2_normalize(a, dim=-1) @ l2_normalize(b, dim=-1).t()


def rowwise_cosine(a: Tensor, b: Tensor) -> Tensor:
    """(N,) cosine similarity of row i of `a` with row i of `b`."""
    a, b = _common(a, b)
    with no_autocast(a.device):
        return (l2_normalize(a, dim=-1) * l2_normalize(b, dim=-1)).sum(dim=-1)


def distance_matrix(x: Tensor, distance: str) -> Tensor:
    """(N, N) pairwise distances: ``'cosine'`` = 1 - cos, ``'euclidean'`` = L2 (zero gradient at 0)."""
    with no_autocast(x.device):
        x = full_precision(x)
        if distance == 'cosine':
            xn = l2_normalize(x, dim=-1)
            return 1.0 - xn @ xn.t()
        squared = (x * x).sum(dim=-1)
        d2 = squared[:, None] + squared[None, :] - 2.0 * x @ x.t()
        # sqrt has an infinite slope at 0 (an item with itself, duplicates): clamping there gives it none
        return d2.clamp(min=1e-12).sqrt()


def zero_like_loss(*tensors: Tensor) -> Tensor:
    """A zero loss that still belongs to the graph (so ``backward`` works and gives zero gradients)."""
    return sum(0.0 * t.sum() for t in tensors)
