"""Losses on scored pairs: (a, b, score in [0, 1]) rows, the cosine of a and b against the score.

==========================  ===========  ========================================================
loss                        data kinds   reads (see :mod:`finetune.losses.base`)
==========================  ===========  ========================================================
``CoSENTLoss``              scored       ``'scored'``: anchors (a), positives (b) and scores
``CosineSimilarityLoss``    scored       ``'scored'``: anchors (a), positives (b) and scores
==========================  ===========  ========================================================
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..options import Option, positive_float
from .base import Loss
from .inputs import SCORED, LossInputs
from .registry import register_loss
from .similarity import rowwise_cosine


class CoSENTLoss(Loss):
    """CoSENT: ``log(1 + sum over pairs (i, j) with score_i > score_j of exp(scale * (cos_j - cos_i)))``.

    Only the order of the scores matters: the loss asks every pair scored higher to have the higher cosine.
    """

    data_kinds = (SCORED,)
    reads = 'scored'
    options = (
        Option('scale', 'float > 0', 20.0, 'multiplies the cosine differences (inverse temperature)', positive_float),
    )

    def __init__(self, scale: float = 20.0):
        super().__init__()
        self.scale = scale

    def compute(self, inputs: LossInputs) -> Tensor:
        cos = rowwise_cosine(inputs.anchors, inputs.positives) * self.scale
        differences = cos[None, :] - cos[:, None]  # [i, j] = cos_j - cos_i
        ordered = inputs.scores[:, None] > inputs.scores[None, :]
        terms = differences.masked_fill(~ordered, float('-inf')).flatten()
        return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)


class CosineSimilarityLoss(Loss):
    """Mean squared error between ``cos(a, b)`` and the score."""

    data_kinds = (SCORED,)
    reads = 'scored'

    def compute(self, inputs: LossInputs) -> Tensor:
        cos = rowwise_cosine(inputs.anchors, inputs.positives)
        return (cos - inputs.scores.to(cos.dtype)) ** 2


register_loss('CoSENTLoss', CoSENTLoss, aliases=('CoSENT',))
register_loss('CosineSimilarityLoss', CosineSimilarityLoss)
