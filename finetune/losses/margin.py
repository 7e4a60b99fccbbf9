"""Margin distillation: a cross-encoder teacher's margins between a positive and a hard negative, learned by the
embedding model.

==================  ================  =================================================================
loss                data kinds        reads (see :mod:`finetune.losses.base`)
==================  ================  =================================================================
``MarginMSELoss``   margin-triplets   ``'triplets'``: anchors, positives, negatives and the teacher's
                                      margins as scores
==================  ================  =================================================================
"""
from __future__ import annotations

from torch import Tensor

from ..options import Option, positive_float
from .base import Loss
from .inputs import MARGIN_TRIPLETS, LossInputs
from .registry import register_loss
from .similarity import rowwise_cosine


class MarginMSELoss(Loss):
    """Margin-MSE (Hofstätter et al. 2020): the student's margin ``scale * (cos(q, p) - cos(q, n))`` is
    regressed onto the teacher's margin (``scores``: the cross-encoder's score of (q, p) minus its score of
    (q, n)) by mean squared error.

    The student learns how much better the positive is, not only that it is: a negative the teacher finds
    nearly as relevant (a false negative) is asked for a small margin, not pushed away. With
    :func:`finetune.synthesize`'s default cross-encoder scores in [0, 1], margins are in [0, 1], the range of
    cosine margins, so ``scale=1`` fits; for raw logits (``activation='none'``) raise `scale`.
    """

    data_kinds = (MARGIN_TRIPLETS,)
    reads = 'triplets'
    options = (
        Option('scale', 'float > 0', 1.0, "multiplies the student's cosine margin before it is compared with the "
               "teacher's", positive_float),
    )

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def compute(self, inputs: LossInputs) -> Tensor:
        student = self.scale * (rowwise_cosine(inputs.anchors, inputs.positives)
                                - rowwise_cosine(inputs.anchors, inputs.negatives))
        return (student - inputs.scores.to(student.dtype)) ** 2

    def extra_repr(self) -> str:
        return f'scale={self.scale}'


register_loss('MarginMSELoss', MarginMSELoss, aliases=('MarginMSE',))
