"""What a loss is given: the :class:`LossInputs` of one batch, and the names of the built-in data kinds.

A leaf module (torch only): the data kinds fill LossInputs in, the losses read them, and neither needs the
other to do so.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

LABELED, PAIRS, SCORED, TEXT_IMAGE = 'labeled', 'pairs', 'scored', 'text-image'
#: (query, positive, negative, teacher margin) rows, as finetune.synthesize makes them
MARGIN_TRIPLETS = 'margin-triplets'
#: the built-in data kinds; every registered kind (finetune.data.kinds) is accepted
DATA_KINDS = (LABELED, PAIRS, SCORED, TEXT_IMAGE)


@dataclass
class LossInputs:
    """What a loss sees of one batch; the fields that a data kind does not use stay ``None``."""

    #: (N, D) embeddings of labeled items
    embeddings: Tensor | None = None
    #: (N, D) first side of pairs (query, text, or `a` of a scored pair)
    anchors: Tensor | None = None
    #: (N, D) second side of pairs (document, image, or `b` of a scored pair); row i belongs to anchor i
    positives: Tensor | None = None
    #: (N,) int64: class labels of labeled items; for pairs optional group ids (same group: not negatives)
    labels: Tensor | None = None
    #: (N,) float: similarity scores of scored pairs, in [0, 1]
    scores: Tensor | None = None
    #: (N, K) logits of the model's cosine-classifier head, already scaled
    logits: Tensor | None = None
    #: scalar log-temperature owned by a CLIP model (logit scale = exp(logit_scale))
    logit_scale: Tensor | None = None
    #: (N, D) a hard negative for each anchor (margin triplets; ``scores`` then holds the teacher's margins)
    negatives: Tensor | None = None
    #: a guide model's embeddings of the same batch, as LossInputs (no gradient), for a loss with a ``guide``
    guide: 'LossInputs | None' = None
    #: (anchor->candidate, positive->anchor) boolean masks of the negatives a guide excluded (see
    #: :mod:`finetune.losses.guided`), set by the loss itself before it computes
    excluded: tuple[Tensor, Tensor] | None = None
