"""Classification-style losses: a softmax over classes, through the model's cosine-classifier head or class
weights the loss owns.

=========================  ===========  ==========================================================
loss                       data kinds   reads (see :mod:`finetune.losses.base`)
=========================  ===========  ==========================================================
``NormalizedSoftmaxLoss``  labeled      ``'logits'``: the head's logits and the class labels
``ArcFaceLoss``            labeled      ``'embeddings'``: embeddings and class labels
``CosFaceLoss``            labeled      ``'embeddings'``: embeddings and class labels
=========================  ===========  ==========================================================
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, OptionError
from ..heads import COSINE_CLASSIFIER
from ..options import Option, fraction, non_negative_float, positive_float
from .base import Loss, check_class_labels
from .inputs import LABELED, LossInputs
from .registry import register_loss
from .similarity import cosine_matrix, full_precision, no_autocast


class NormalizedSoftmaxLoss(Loss):
    """Cross-entropy on the logits of the model's cosine-classifier head (recognite's recipe).

    The head's ``scale`` (``head_options``) is the inverse temperature; :meth:`model_options` says what
    the model needs: ``{'head': 'cosine_classifier', 'head_options': {'num_classes': K}}``.
    """

    data_kinds = (LABELED,)
    reads = 'logits'
    needs_classifier_head = True
    options = (
        Option('label_smoothing', 'float in [0, 1)', 0.0, 'label smoothing of the cross-entropy', fraction),
    )

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    @classmethod
    def model_options(cls, num_classes: int | None = None) -> dict[str, Any]:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise OptionError(f'loss {cls.name!r} trains a cosine classifier and needs num_classes (an integer '
                              f'>= 2), got {num_classes!r}.')
        return {'head': COSINE_CLASSIFIER, 'head_options': {'num_classes': num_classes}}

    def compute(self, inputs: LossInputs) -> Tensor:
        logits, labels = inputs.logits, inputs.labels
        check_class_labels(self, labels, logits.shape[1])
        with no_autocast(logits.device):
            return F.cross_entropy(full_precision(logits), labels, label_smoothing=self.label_smoothing)


class _MarginSoftmaxLoss(Loss):
    """Softmax over ``scale * cos(embedding, class weight)`` with a margin on the target class.

    The class weights (num_classes x embedding_dim) are parameters of the loss, L2-normalized per row in
    forward. The default scale is 30: the papers use 64 for face recognition with thousands of classes
    and huge batches; 30 trains more gently on the small data sets fine-tuning usually sees.
    """

    data_kinds = (LABELED,)
    reads = 'embeddings'
    needs_num_classes = True
    cuts_class_weights = True
    #: the margin when none is given (each subclass its own)
    default_margin: float = 0.0

    def __init__(self, num_classes: int, embedding_dim: int, margin: float | None = None, scale: float = 30.0):
        super().__init__()
        margin = self.default_margin if margin is None else margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=embedding_dim ** -0.5)
        self.num_classes, self.embedding_dim = num_classes, embedding_dim
        self.margin, self.scale = margin, scale

    def target_logit(self, cos_target: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self, inputs: LossInputs) -> Tensor:
        embeddings, labels = inputs.embeddings, inputs.labels
        weight = self.weight[:, :embeddings.shape[1]]  # Matryoshka: the leading dimensions of the class weights too
        if embeddings.shape[1] != self.embedding_dim and self.matryoshka_dims is None:
            raise InputError(f'{self.name}: embeddings have {embeddings.shape[1]} dimensions, the class weights '
                             f'{self.embedding_dim} (embedding_dim).')
        check_class_labels(self, labels, self.num_classes)
        with no_autocast(embeddings.device):
            cos = cosine_matrix(embeddings, weight)
            index = labels[:, None]
            logits = cos.scatter(1, index, self.target_logit(cos.gather(1, index))) * self.scale
            return F.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, margin={self.margin}, '
                f'scale={self.scale}')


def _margin_options(margin: float, meaning: str) -> tuple[Option, ...]:
    return (Option('margin', 'float >= 0', margin, meaning, non_negative_float),
            Option('scale', 'float > 0', 30.0, 'logits = scale * cosine (the paper: 64)', positive_float))


class ArcFaceLoss(_MarginSoftmaxLoss):
    """ArcFace (additive angular margin): the target logit is ``cos(theta + m)``.

    ``theta = arccos(cos)`` with the cosine clamped to [-1 + 1e-7, 1 - 1e-7] (arccos's slope is infinite at
    ±1). Where ``theta + m >= pi``, ``cos(theta + m)`` would rise again as theta grows (a target far from its
    class would be rewarded); there the usual fallback (InsightFace's) ``cos(theta) - m * sin(m)`` is used:
    the linearization of ``cos(theta + m)``, always below ``cos(theta)``. Since ``cos m + m sin m >= 1``, the
    target logit stays decreasing in theta across the switch (it steps down there, by about m²/2).
    """

    default_margin = 0.5
    options = _margin_options(default_margin, 'additive angular margin in radians')

    def target_logit(self, cos_target: Tensor) -> Tensor:
        m = self.margin
        theta = torch.acos(cos_target.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
        return torch.where(theta + m < math.pi, torch.cos(theta + m), cos_target - m * math.sin(m))


class CosFaceLoss(_MarginSoftmaxLoss):
    """CosFace (large margin cosine loss): the target logit is ``cos(theta) - m``."""

    default_margin = 0.35
    options = _margin_options(default_margin, 'additive cosine margin')

    def target_logit(self, cos_target: Tensor) -> Tensor:
        return cos_target - self.margin


register_loss('NormalizedSoftmaxLoss', NormalizedSoftmaxLoss, aliases=('NormalizedSoftmax',))
register_loss('ArcFaceLoss', ArcFaceLoss, aliases=('ArcFace',))
register_loss('CosFaceLoss', CosFaceLoss, aliases=('CosFace',))
