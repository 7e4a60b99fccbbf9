"""PointNet++ (Qi et al., NeurIPS 2017), single-scale grouping, written for batches of point clouds.

Every step works on the whole batch at once: farthest-point sampling loops only over the centroids it
picks (each pick depends on the previous ones), never over the points or the clouds; ball query is a
masked top-k over a distance matrix; grouping is one gather; the shared MLPs are matrix products over
all (cloud, centroid, neighbour) rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def square_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(B, S, P)`` between ``a (B, S, 3)`` and ``b (B, P, 3)``, in float32
    even under autocast: a radius of 0.2 is too fine for bf16's three significant digits."""
    with torch.autocast(a.device.type, enabled=False):
        a, b = a.float(), b.float()
        d = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(1) - 2 * a @ b.transpose(1, 2)
    return d.clamp_min_(0)


@torch.no_grad()
def farthest_point_sample(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """Indices ``(B, n)`` of `n` points of each cloud ``xyz (B, P, 3)``, each the farthest from those chosen
    before it. The first is point 0 (the preprocessing puts points in random order), so it is deterministic."""
    b, p, _ = xyz.shape
    if not 0 < n <= p:
        raise ValueError(f'farthest_point_sample: cannot pick {n} of {p} points.')
    planes = xyz.float().permute(2, 0, 1).contiguous()  # (3, B, P): each step streams three flat rows
    if torch.jit.is_tracing():  # an ONNX export: the same picks without out= buffers, sizes taken from the input
        return _traceable_farthest_point_sample(planes, n)
    picked = torch.zeros(b, n, dtype=torch.long, device=xyz.device)
    nearest = torch.full((b, p), math.inf, device=xyz.device)
    farthest = torch.zeros(b, 1, dtype=torch.long, device=xyz.device)
    dist, diff = torch.empty_like(nearest), torch.empty_like(nearest)
    for i in range(n):
        picked[:, i:i + 1] = farthest
        torch.sub(planes[0], planes[0].gather(1, farthest), out=dist)
        dist.mul_(dist)
        for axis in (1, 2):
            torch.sub(planes[axis], planes[axis].gather(1, farthest), out=diff)
            dist.addcmul_(diff, diff)
        torch.minimum(nearest, dist, out=nearest)
        farthest = nearest.argmax(-1, keepdim=True)
    return picked


def _traceable_farthest_point_sample(planes: torch.Tensor, n: int) -> torch.Tensor:
    """:func:`farthest_point_sample` of ``planes (3, B, P)`` in operations a graph export records, with the batch
    size left dynamic (the loop over the `n` picks is unrolled, as `n` follows the fixed number of points)."""
    nearest = torch.full_like(planes[0], math.inf)
    farthest = torch.zeros_like(planes[0, :, :1], dtype=torch.long)
    picked = []
    for _ in range(n):
        picked.append(farthest)
        dist = sum((planes[axis] - planes[axis].gather(1, farthest)) ** 2 for axis in range(3))
        nearest = torch.minimum(nearest, dist)
        farthest = nearest.argmax(-1, keepdim=True)
    return torch.cat(picked, dim=1)


@torch.no_grad()
def ball_query(xyz: torch.Tensor, centres: torch.Tensor, radius: float, k: int,
               centre_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Indices ``(B, S, k)``: for each centre, the first `k` points of the cloud (in index order) within
    `radius`; a ball holding fewer repeats its first point. `centre_idx` ``(B, S)``, the centres' own
    indices in the cloud, puts each centre in its ball even where rounding says otherwise (coordinates far
    from the origin)."""
    p = xyz.shape[1]
    k = min(k, p)
    d = square_distance(centres, xyz)  # (B, S, P)
    if centre_idx is not None:
        d.scatter_(2, centre_idx.unsqueeze(-1), 0.0)
    order = torch.arange(p, device=xyz.device, dtype=d.dtype)
    key = torch.where(d <= radius * radius, order, order + p)  # points outside the ball sort last
    idx = key.topk(k, dim=-1, largest=False, sorted=True).values.long()
    return torch.where(idx >= p, idx[..., :1], idx)


def gather_points(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``values (B, P, C)`` at ``idx (B, ...)`` -> ``(B, ..., C)``."""
    b, c = values.shape[0], values.shape[-1]
    flat = idx.reshape(b, -1, 1).expand(-1, -1, c)
    return values.gather(1, flat).reshape(*idx.shape, c)


class SharedMLP(nn.Module):
    """Linear -> BatchNorm -> ReLU layers applied to every row of a ``(..., C)`` tensor alike."""

    def __init__(self, in_dim: int, widths: tuple[int, ...]):
        super().__init__()
        layers = []
        for width in widths:
            layers += [nn.Linear(in_dim, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            in_dim = width
        self.layers = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor, skip_first_linear: bool = False) -> torch.Tensor:
        """`x` ``(..., in_dim)``; or, with `skip_first_linear`, ``(..., width)`` already through the first
        Linear (see :class:`SetAbstraction`)."""
        shape = x.shape[:-1]
        layers = self.layers[1:] if skip_first_linear else self.layers
        return layers(x.reshape(-1, x.shape[-1])).reshape(*shape, self.out_dim)


class SetAbstraction(nn.Module):
    """Sample centroids (1 in `stride` points) by farthest-point sampling, group the neighbours within
    `radius` (at most `k`), run the shared MLP on each neighbour's offset and features, max over the group."""

    def __init__(self, stride: int, radius: float, k: int, in_dim: int, widths: tuple[int, ...]):
        super().__init__()
        self.stride, self.radius, self.k = stride, radius, k
        self.mlp = SharedMLP(in_dim + 3, widths)
        self.out_dim = self.mlp.out_dim

    def forward(self, xyz: torch.Tensor, features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(1, math.ceil(xyz.shape[1] / self.stride))
        centre_idx = farthest_point_sample(xyz, n)
        centres = gather_points(xyz, centre_idx)  # (B, S, 3)
        idx = ball_query(xyz, centres, self.radius, self.k, centre_idx)  # (B, S, k)
        if features is None:
            grouped = gather_points(xyz, idx) - centres.unsqueeze(2)  # offsets, (B, S, k, 3)
            out = self.mlp(grouped)
        else:
            # The first Linear is bias-free, so W [x_j - c; f_j] = W [x_j; f_j] - W_xyz c: apply it once per
            # point and per centre, then gather, instead of once per (centre, neighbour) row (k x S / P
            # times fewer rows; the same numbers up to rounding).
            weight = self.mlp.layers[0].weight  # (width, 3 + C)
            per_point = torch.cat([xyz, features], dim=-1) @ weight.t()  # (B, P, width)
            per_centre = centres @ weight[:, :3].t()  # (B, S, width)
            out = self.mlp(gather_points(per_point, idx) - per_centre.unsqueeze(2), skip_first_linear=True)
        return centres, out.max(dim=2).values  # max, not amax: its backward is a cheap scatter


@dataclass(frozen=True)
class Variant:
    """Widths of a PointNet++ variant: two set abstractions, then the global MLP ending at hidden_dim."""

    sa1: tuple[int, ...]
    sa2: tuple[int, ...]
    global_mlp: tuple[int, ...]
    k1: int
    k2: int
    radius1: float = 0.2
    radius2: float = 0.4
    stride1: int = 4
    stride2: int = 4


VARIANTS = {
    # the paper's SSG classification network (512 and 128 centroids out of 2048 points)
    'base': Variant(sa1=(64, 64, 128), sa2=(128, 128, 256), global_mlp=(256, 512), k1=32, k2=64),
    'small': Variant(sa1=(32, 32, 64), sa2=(64, 64, 128), global_mlp=(128, 256), k1=16, k2=32),
}


class PointNet2(nn.Module):
    """PointNet++ up to the global set: ``(B, P, 3)`` -> tokens ``(B, S, hidden_dim)`` (one per second-level
    centroid, before the final max), and the embedding head that follows the max."""

    def __init__(self, variant: Variant, hidden_dim: int, embed_dim: int, dropout: float):
        super().__init__()
        self.sa1 = SetAbstraction(variant.stride1, variant.radius1, variant.k1, 0, variant.sa1)
        self.sa2 = SetAbstraction(variant.stride2, variant.radius2, variant.k2, self.sa1.out_dim, variant.sa2)
        self.global_mlp = SharedMLP(self.sa2.out_dim + 3, variant.global_mlp + (hidden_dim,))
        self.head = nn.Sequential(nn.Linear(hidden_dim, hidden_dim // 2), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden_dim // 2, embed_dim))

    def tokens(self, xyz: torch.Tensor) -> torch.Tensor:
        centres, features = self.sa1(xyz, None)
        centres, features = self.sa2(centres, features)
        return self.global_mlp(torch.cat([centres, features], dim=-1))
