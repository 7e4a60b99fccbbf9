"""Triplet losses: ``relu(d(a, p) - d(a, n) + margin)`` over triplets mined in the batch.

======================  ================  ================================================================
loss                    data kinds        reads (see :mod:`finetune.losses.base`)
======================  ================  ================================================================
``TripletMarginLoss``   labeled, pairs    ``'items'``: embeddings and labels (pairs: both sides, a class per
                                          pair or group)
======================  ================  ================================================================
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..options import Option, non_negative_float, one_of
from .base import Loss
from .inputs import LABELED, PAIRS, LossInputs
from .registry import register_loss
from .similarity import distance_matrix, zero_like_loss


class TripletMarginLoss(Loss):
    """``relu(d(a, p) - d(a, n) + margin)`` over triplets mined in the batch (vectorized).

    * ``batch_hard``: per anchor, its farthest positive and nearest negative; the mean over anchors.
    * ``semi_hard``: per (anchor, positive) pair, the nearest negative that is farther than the positive
      but within the margin (``d_ap < d_an < d_ap + margin``); when there is none, the nearest negative.
      The mean over pairs.
    * ``all``: every valid triplet; the mean over the triplets whose loss is positive. Memory grows as N³.

    Anchors without a positive or a negative in the batch are ignored; with no valid anchor the loss is
    a zero that still has a gradient function. For pairs, ``cat(anchors, positives)`` is used with the
    group ids (or the pair index) as labels.
    """

    data_kinds = (LABELED, PAIRS)
    reads = 'items'
    options = (
        Option('margin', 'float >= 0', 0.2, 'required gap between the positive and the negative distance',
               non_negative_float),
        Option('distance', 'str', 'cosine', "'cosine' (1 - cosine similarity) or 'euclidean'",
               one_of(('cosine', 'euclidean'))),
        Option('mining', 'str', 'batch_hard', "'batch_hard', 'semi_hard' or 'all' triplets of the batch",
               one_of(('batch_hard', 'semi_hard', 'all'))),
    )

    def __init__(self, margin: float = 0.2, distance: str = 'cosine', mining: str = 'batch_hard'):
        super().__init__()
        self.margin, self.distance, self.mining = margin, distance, mining

    def compute(self, inputs: LossInputs) -> Tensor:
        embeddings, labels = inputs.embeddings, inputs.labels
        d = distance_matrix(embeddings, self.distance)
        n = d.shape[0]
        same = labels[:, None] == labels[None, :]
        positive = same & ~torch.eye(n, dtype=torch.bool, device=d.device)
        negative = ~same
        valid = positive.any(dim=1) & negative.any(dim=1)
        if not bool(valid.any()):
            return zero_like_loss(embeddings)
        if self.mining == 'batch_hard':
            hardest_positive = d.masked_fill(~positive, float('-inf')).amax(dim=1)
            hardest_negative = d.masked_fill(~negative, float('inf')).amin(dim=1)
            return F.relu(hardest_positive - hardest_negative + self.margin)[valid]
        if self.mining == 'semi_hard':
            return self._semi_hard(d, positive, negative, valid)
        triplets = d[:, :, None] - d[:, None, :] + self.margin  # [a, p, n]
        losses = F.relu(triplets[positive[:, :, None] & negative[:, None, :]])
        active = losses > 0
        if not bool(active.any()):
            return zero_like_loss(losses)
        return losses[active]

    def _semi_hard(self, d: Tensor, positive: Tensor, negative: Tensor, valid: Tensor) -> Tensor:
        """One loss per (anchor, positive) pair against its semi-hard negative (else its nearest)."""
        n, m = d.shape[0], self.margin
        negatives_sorted = d.masked_fill(~negative, float('inf')).sort(dim=1).values  # (N, N), ascending
        count = negative.sum(dim=1, keepdim=True)
        # for each (anchor a, positive p): the first negative of a farther than d[a, p]
        first = torch.searchsorted(negatives_sorted.detach().contiguous(), d.detach().contiguous(), right=True)
        candidate = negatives_sorted.gather(1, first.clamp(max=n - 1))
        semi_hard = (first < count) & (candidate < d + m)
        chosen = torch.where(semi_hard, candidate, negatives_sorted[:, :1])
        return F.relu(d - chosen + m)[positive & valid[:, None]]

    def extra_repr(self) -> str:
        return f'margin={self.margin}, distance={self.distance!r}, mining={self.mining!r}'


register_loss('TripletMarginLoss', TripletMarginLoss, aliases=('TripletLoss', 'Triplet'))
