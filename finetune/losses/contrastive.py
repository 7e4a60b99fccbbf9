"""In-batch contrastive losses: each anchor picks its own positive among the batch's candidates.

==================  ================================  =============================================
loss                data kinds                        reads (see :mod:`finetune.losses.base`)
==================  ================================  =============================================
``InfoNCE``         pairs, text-image, labeled,       anchors, positives; labels as group ids;
                    margin-triplets                   negatives as hard negatives when given
``CLIPLoss``        text-image, pairs                 anchors, positives; the model's logit_scale
==================  ================================  =============================================

Both take ``mini_batch_size`` (GradCache: the training code embeds the batch in chunks) and
``gather_across_processes`` (negatives from every process of a data-parallel run), and ``guide`` /
``guide_margin`` (false negatives masked by a guide model, :mod:`~finetune.losses.guided`).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..options import Option, boolean, positive_float, positive_int
from .base import Loss
from .distributed import gather_across_processes
from .guided import GUIDE_OPTIONS, GuidedLoss, masked_logits
from .inputs import LABELED, MARGIN_TRIPLETS, PAIRS, TEXT_IMAGE, LossInputs
from .registry import register_loss
from .similarity import cosine_matrix, full_precision

#: the largest logit scale (1 / temperature) a learned temperature may reach, as in CLIP
MAX_LOGIT_SCALE = 100.0

#: options of the in-batch contrastive losses: GradCache and negatives gathered across processes
CONTRASTIVE_OPTIONS = (
    Option('mini_batch_size', 'int > 0 | None', None,
           'GradCache: embed the batch in chunks of this many rows without a graph, then backpropagate chunk by '
           'chunk; same gradients, the memory of one chunk (None: the whole batch at once)', positive_int(True)),
    Option('gather_across_processes', 'bool', True,
           'under several processes, every query sees the embeddings of all processes as negatives', boolean),
)


def clamp_log_scale(log_scale: Tensor) -> Tensor:
    """A learned log logit-scale kept in [0, ln MAX_LOGIT_SCALE] as open_clip keeps it: a parameter (a leaf that
    requires a gradient) is clamped in place, so that at the bound it still gets a gradient and can come back
    (a clamp of the value would give it none and hold it there); any other tensor is clamped by value."""
    top = math.log(MAX_LOGIT_SCALE)
    if log_scale.is_leaf and log_scale.requires_grad:
        with torch.no_grad():
            log_scale.clamp_(0.0, top)
        return log_scale
    return log_scale.clamp(0.0, top)


def _mask_same_group(logits: Tensor, groups: Tensor | None) -> Tensor:
    """`logits` (N, N) with the other rows of each row's group removed (they are not its negatives)."""
    if groups is None:
        return logits
    same = groups[:, None] == groups[None, :]
    same.fill_diagonal_(False)
    return logits.masked_fill(same, float('-inf'))


def in_batch_contrastive(anchors: Tensor, positives: Tensor, scale: Tensor | float, groups: Tensor | None = None,
                         symmetric: bool = True, gather: bool = False,
                         excluded: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """InfoNCE over a batch: ``logits[i, j] = scale * cos(anchor_i, positive_j)``, target ``j = i``.

    With `groups`, ``logits[i, j]`` for ``j != i`` of the same group are removed (false negatives).
    `symmetric` averages the anchor->positive and positive->anchor cross-entropies. With `gather`, under several
    processes, the batch is that of all processes (:func:`gather_across_processes`); group ids are gathered as
    they are (the training data's ids hold across the whole data set). `excluded`: a guide's (anchor->positive,
    positive->anchor) masks of false negatives (:func:`~finetune.losses.guided.guide_masks`), set to -inf.
    """
    if gather:
        anchors, positives, groups = gather_across_processes(anchors, positives, groups)
    forward, backward = excluded if excluded is not None else (None, None)
    logits = _mask_same_group(cosine_matrix(anchors, positives) * scale, groups)
    targets = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(masked_logits(logits, forward), targets)
    if symmetric:  # the group mask is symmetric, so the transpose is the positive->anchor problem
        loss = (loss + F.cross_entropy(masked_logits(logits.t(), backward), targets)) / 2
    return loss


def hard_negatives_contrastive(anchors: Tensor, positives: Tensor, negatives: Tensor, scale: Tensor | float,
                               groups: Tensor | None = None, symmetric: bool = True, gather: bool = False,
                               excluded: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """InfoNCE with hard negatives: anchor i picks its positive among every positive and every hard negative of
    the batch, ``logits[i] = scale * cos(anchor_i, [positives; negatives])``, target i.

    With `groups`, the positives of other rows of the same group are removed (false negatives); negatives stay
    negatives for every anchor. `symmetric` adds the positive->anchor cross-entropy (over the anchors alone)
    and averages the two. `gather` and `excluded`: as in :func:`in_batch_contrastive` (the forward mask covers
    the positives, then the negatives)."""
    if gather:
        anchors, positives, negatives, groups = gather_across_processes(anchors, positives, negatives, groups)
    n = anchors.shape[0]
    logits = cosine_matrix(anchors, torch.cat([positives, negatives])) * scale
    logits = torch.cat([_mask_same_group(logits[:, :n], groups), logits[:, n:]], dim=1)
    forward, backward = excluded if excluded is not None else (None, None)
    targets = torch.arange(n, device=logits.device)
    loss = F.cross_entropy(masked_logits(logits, forward), targets)
    if symmetric:
        loss = (loss + F.cross_entropy(masked_logits(logits[:, :n].t(), backward), targets)) / 2
    return loss


class InfoNCELoss(GuidedLoss, Loss):
    """In-batch contrastive loss (MultipleNegativesRankingLoss): each anchor must pick its own positive
    among all positives of the batch, ``logits = cos / temperature``.

    ``labels`` (group ids) mask rows of the same group out of each other's negatives. For labeled data
    the training code pairs items of the same class as anchor / positive and passes the class labels. With
    ``negatives`` (margin triplets' hard negatives) every anchor also sees every negative of the batch. With a
    ``guide`` (GISTEmbed, :mod:`~finetune.losses.guided`), negatives the guide scores above the positive are masked.
    """

    data_kinds = (PAIRS, TEXT_IMAGE, LABELED, MARGIN_TRIPLETS)
    reads = 'pairs'
    takes_pairs = True
    options = (
        Option('temperature', 'float > 0', 0.05, 'logits = cosine / temperature (0.05 = scale 20, as MNRL)',
               positive_float),
        Option('symmetric', 'bool', True, 'average the anchor->positive and positive->anchor losses', boolean),
        Option('learnable_temperature', 'bool', False,
               f'learn the temperature (as a log-scale, scale capped at {MAX_LOGIT_SCALE:g})', boolean),
        *CONTRASTIVE_OPTIONS,
        *GUIDE_OPTIONS,
    )

    def __init__(self, temperature: float = 0.05, symmetric: bool = True, learnable_temperature: bool = False,
                 mini_batch_size: int | None = None, gather_across_processes: bool = True, guide: Any = None,
                 guide_margin: float = 0.0):
        super().__init__()
        self.init_guide(guide, guide_margin)
        self.mini_batch_size, self.gather = mini_batch_size, gather_across_processes
        self.symmetric = symmetric
        self.learnable_temperature = learnable_temperature
        self.fixed_scale = 1.0 / temperature
        if learnable_temperature:
            self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    @property
    def scale(self) -> Tensor | float:
        if self.learnable_temperature:
            return clamp_log_scale(self.log_scale).exp()
        return self.fixed_scale

    def compute(self, inputs: LossInputs) -> Tensor:
        if inputs.negatives is not None:  # hard negatives: more candidates for every anchor
            return hard_negatives_contrastive(inputs.anchors, inputs.positives, inputs.negatives, self.scale,
                                              inputs.labels, self.symmetric, excluded=inputs.excluded)
        return in_batch_contrastive(inputs.anchors, inputs.positives, self.scale, inputs.labels, self.symmetric,
                                    excluded=inputs.excluded)

    def extra_repr(self) -> str:
        scale = float(self.scale)
        return f'scale={scale:.4g}, symmetric={self.symmetric}, learnable_temperature={self.learnable_temperature}'


class CLIPLoss(GuidedLoss, Loss):
    """CLIP's symmetric InfoNCE. The scale is ``exp(logit_scale)`` of the model when it has one
    (``LossInputs.logit_scale``), else the loss's own learnable log-scale; either is capped at 100.

    The loss's own ``log_scale`` parameter exists either way; with a model that owns ``logit_scale`` it
    simply gets no gradient. ``guide``: as for InfoNCE (a CLIP model embeds the batch's texts and images).
    """

    data_kinds = (TEXT_IMAGE, PAIRS)
    reads = 'pairs'
    takes_pairs = True
    options = (
        Option('temperature', 'float > 0', 0.07,
               "initial temperature of the loss's own learnable scale (used when the model has no logit_scale)",
               positive_float),
        *CONTRASTIVE_OPTIONS,
        *GUIDE_OPTIONS,
    )

    def __init__(self, temperature: float = 0.07, mini_batch_size: int | None = None,
                 gather_across_processes: bool = True, guide: Any = None, guide_margin: float = 0.0):
        super().__init__()
        self.init_guide(guide, guide_margin)
        self.mini_batch_size, self.gather = mini_batch_size, gather_across_processes
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def compute(self, inputs: LossInputs) -> Tensor:
        log_scale = self.log_scale if inputs.logit_scale is None else inputs.logit_scale
        if log_scale.numel() != 1:
            raise InputError(f'{self.name}: LossInputs.logit_scale must be a scalar, got shape '
                             f'{tuple(log_scale.shape)}.')
        scale = full_precision(clamp_log_scale(log_scale).reshape(())).exp()
        return in_batch_contrastive(inputs.anchors, inputs.positives, scale, inputs.labels, excluded=inputs.excluded)


register_loss('InfoNCE', InfoNCELoss, aliases=('InfoNCELoss', 'MultipleNegativesRankingLoss', 'MNRL'))
register_loss('CLIPLoss', CLIPLoss, aliases=('CLIP',))
