"""Small tensor functions shared by the model, the losses and the metrics."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """`x` divided by its L2 norm along `dim`: a unit vector for every non-zero vector, however small or
    large its norm (``F.normalize`` alone leaves vectors of norm below its eps, 1e-12, short of unit length).

    Each vector is first divided by its largest absolute entry, which does not change its direction; that
    factor is detached, so the gradient is exactly that of ``x / ||x||``. An all-zero vector stays all-zero.
    """
    scale = x.detach().abs().amax(dim=dim, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return F.normalize(x / scale, dim=dim)
