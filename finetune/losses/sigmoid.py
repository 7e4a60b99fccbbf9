"""SigLIP's sigmoid loss (Zhai et al., 2023): every (anchor, candidate) pair of a batch is one binary decision,
"do these belong together?", so no softmax over the batch is needed.

``logits[i, j] = exp(log_scale) * cos(anchor_i, positive_j) + bias`` with a learned log-scale (initial scale
10) and a learned bias (initial -10, so that the many negative pairs start near their target); the loss is
``-sum(log sigmoid(y_ij * logits_ij)) / N`` with ``y_ij = +1`` for a pair's own positive (and, with group ids,
the positives of its group) and ``-1`` for every other candidate (hard negatives included).

Under several processes, each process scores its own anchors against the positives of every process (a local
``(n, N)`` block, not the global ``(N, N)`` matrix): the positives are all-gathered with gradients that return
to the process owning them (:func:`~finetune.losses.distributed.gather_with_gradients`), so that the average of
the processes' gradients is the gradient of the global loss (equal batch sizes on the processes). open_clip
passes the text embeddings neighbour to neighbour instead; the sums are the same, the all-gather holds the
other processes' positives in memory at once (N x D, small beside the model).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..options import Option, boolean, positive_float
from ..validators import number
from .base import Loss
from .contrastive import CONTRASTIVE_OPTIONS, clamp_log_scale
from .distributed import gather_with_gradients
from .inputs import LABELED, MARGIN_TRIPLETS, PAIRS, TEXT_IMAGE, LossInputs
from .registry import register_loss
from .similarity import cosine_matrix


def _finite(name: str, value) -> float:
    return number(f'option {name!r}', value, 'a finite number')


def sigmoid_pairs_loss(anchors: Tensor, candidates: Tensor, scale: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
    """``-sum(log sigmoid(targets * (scale * cos(anchors, candidates) + bias))) / len(anchors)``; `targets`
    (n, M) holds +1 for pairs that belong together and -1 for the others."""
    logits = cosine_matrix(anchors, candidates) * scale + bias
    return -F.logsigmoid(targets.to(logits.dtype) * logits).sum() / anchors.shape[0]


class SigLIPLoss(Loss):
    """SigLIP's pairwise sigmoid loss with a learned temperature and bias (see the module docstring).

    Reads anchors and positives (text and image of text-image pairs); ``labels`` (group ids) make the other
    rows of a group positives too; ``negatives`` (margin triplets' hard negatives) are extra candidates, each
    a negative of every anchor. The model's own ``logit_scale`` (a CLIP model's softmax temperature) is not
    used: the loss learns its own scale and bias, the log-scale kept in [0, ln 100] as open_clip does.
    """

    data_kinds = (TEXT_IMAGE, PAIRS, LABELED, MARGIN_TRIPLETS)
    reads = 'pairs'
    takes_pairs = True
    options = (
        Option('temperature', 'float > 0', 0.1, 'initial temperature: logit scale 1 / temperature (SigLIP: 10)',
               positive_float),
        Option('bias', 'float', -10.0, 'initial logit bias (SigLIP: -10)', _finite),
        Option('learnable_bias', 'bool', True, 'learn the bias (else it stays at its initial value)', boolean),
        *CONTRASTIVE_OPTIONS,
    )

    def __init__(self, temperature: float = 0.1, bias: float = -10.0, learnable_bias: bool = True,
                 mini_batch_size: int | None = None, gather_across_processes: bool = True):
        super().__init__()
        self.mini_batch_size = mini_batch_size
        self.exchange = gather_across_processes  # its own exchange (the base's gather would be the N x N loss)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.logit_bias = nn.Parameter(torch.tensor(float(bias)), requires_grad=learnable_bias)

    def compute(self, inputs: LossInputs) -> Tensor:
        anchors, positives, negatives, groups = inputs.anchors, inputs.positives, inputs.negatives, inputs.labels
        n = anchors.shape[0]
        start = 0
        if self.exchange:
            (positives, negatives, all_groups), start = gather_with_gradients(positives, negatives, groups)
        else:
            all_groups = groups
        columns = torch.arange(positives.shape[0], device=anchors.device)
        rows = torch.arange(start, start + n, device=anchors.device)
        same = rows[:, None] == columns[None, :]
        if groups is not None:
            same = same | (groups[:, None].to(all_groups.device) == all_groups[None, :])
        targets = same.to(torch.int8) * 2 - 1
        candidates = positives
        if negatives is not None:
            candidates = torch.cat([positives, negatives])
            targets = torch.cat([targets, targets.new_full((n, negatives.shape[0]), -1)], dim=1)
        scale = clamp_log_scale(self.log_scale).float().exp()
        return sigmoid_pairs_loss(anchors, candidates, scale, self.logit_bias.float(), targets)

    def extra_repr(self) -> str:
        return f'scale={float(self.log_scale.exp()):.4g}, bias={float(self.logit_bias):.4g}'


register_loss('SigLIPLoss', SigLIPLoss, aliases=('SigLIP', 'SigmoidLoss'))
