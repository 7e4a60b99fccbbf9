"""False negatives kept out of an in-batch softmax by a guide model (GISTEmbed, Solatorio 2024).

With ``loss_options={'guide': <model name or model>, 'guide_margin': 0.0}`` (InfoNCE, CLIPLoss), the training
code embeds every batch a second time with the guide, without gradients and at the run's precision, and hands
those embeddings to the loss as ``LossInputs.guide``. For anchor ``i`` with guide similarity ``s_ii`` to its own
positive, every candidate ``j`` (another row's positive, or a hard negative) with guide similarity
``s_ij > s_ii - guide_margin`` is taken out of anchor i's softmax (its logit set to -inf): the guide thinks it
is as close to the anchor as the positive, so it is likely a positive that merely sits in another row. The
positive->anchor direction of a symmetric loss is masked alike (anchor ``i`` out of positive ``j``'s softmax
when ``s_ij > s_jj - margin``). A larger margin masks more.

The loss counts what it masks: :meth:`GuidedLoss.guide_counts` gives (masked, negatives seen) since the last
:meth:`GuidedLoss.reset_guide_counts`, and :meth:`GuidedLoss.epoch_note` the line the trainer logs at the end of
each epoch (on the main process: its own batches).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from ..errors import OptionError
from ..options import Option
from ..validators import number
from .inputs import LossInputs
from .similarity import cosine_matrix


def _guide(name: str, value: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip()):
        return value
    if isinstance(value, torch.nn.Module):
        return value
    raise OptionError(f'option {name!r}: expected a model name (as build_model takes it) or a built model '
                      f'(finetune.build_model / finetune.load), got {value!r} ({type(value).__name__}).')


def _margin(name: str, value: Any) -> float:
    return number(f'option {name!r}', value, 'a finite number (0: mask what the guide scores above the positive)')


#: the options of a loss that takes a guide
GUIDE_OPTIONS = (
    Option('guide', 'str | model | None', None,
           'GISTEmbed: a model (name or object) that embeds each batch without gradients; negatives it scores '
           'above the positive (minus guide_margin) are masked out of the softmax', _guide),
    Option('guide_margin', 'float', 0.0, 'mask candidates the guide scores above (positive - guide_margin)',
           _margin),
)


def guide_masks(guide: LossInputs, margin: float, negatives: bool = True) -> tuple[Tensor, Tensor]:
    """``(forward, backward)``: boolean masks, True for a candidate to take out. `forward` (N, N [+ M]) is over
    anchor i's candidates (every positive, then, with `negatives`, every hard negative of the guide's inputs);
    `backward` (N, N) over positive j's candidates (every anchor). A row's own positive is never masked."""
    sims = cosine_matrix(guide.anchors, guide.positives)
    threshold = (sims.diagonal() - margin)[:, None]
    own = torch.eye(sims.shape[0], dtype=torch.bool, device=sims.device)
    forward = (sims > threshold) & ~own
    if negatives and guide.negatives is not None:
        forward = torch.cat([forward, cosine_matrix(guide.anchors, guide.negatives) > threshold], dim=1)
    return forward, (sims.t() > threshold) & ~own


class GuidedLoss:
    """What a loss with ``guide`` / ``guide_margin`` options adds (a mixin before :class:`~finetune.losses.Loss`):
    the guide kept out of the module's children (its weights are neither trained nor saved with the loss), the
    masks made once per batch in :meth:`prepare`, and the counts."""

    def init_guide(self, guide: Any, guide_margin: float) -> None:
        self.__dict__['guide'] = guide  # not a submodule: no parameters, no state_dict, no .to() of the loss
        self.guide_margin = float(guide_margin)
        self.reset_guide_counts()

    def reset_guide_counts(self) -> None:
        """Start counting masked negatives again."""
        self.__dict__['_guide_counts'] = None

    def guide_counts(self) -> tuple[int, int]:
        """(negatives masked, negatives seen) since the last :meth:`reset_guide_counts`, in both directions of a
        symmetric loss; negatives already removed as the same group are not counted."""
        counts = self.__dict__.get('_guide_counts')
        return (0, 0) if counts is None else (int(counts[0]), int(counts[1]))

    def epoch_note(self) -> str | None:
        """The line the trainer logs after an epoch (then the counts start again), or None without a guide."""
        if self.__dict__.get('guide') is None:
            return None
        masked, seen = self.guide_counts()
        self.reset_guide_counts()
        share = masked / seen if seen else 0.0
        return f'guide: masked {masked:,} of {seen:,} in-batch and hard negatives ({share:.1%}) as false negatives'

    def prepare(self, inputs: LossInputs) -> LossInputs:
        if self.__dict__.get('guide') is None:
            return inputs
        if inputs.guide is None:
            raise OptionError(f"loss {self.name!r} has a guide but was given no guide embeddings "
                              f"(LossInputs.guide): the training code embeds each batch with the guide; a loss "
                              f"called directly needs LossInputs(guide=LossInputs(anchors=..., positives=...)).")
        if inputs.negatives is not None and inputs.guide.negatives is None:
            raise OptionError(f'loss {self.name!r}: the batch has hard negatives but the guide embeddings '
                              f'(LossInputs.guide) have none; give the guide the same rows.')
        forward, backward = guide_masks(inputs.guide, self.guide_margin, inputs.negatives is not None)
        self._count(inputs, forward, backward)
        return dataclasses.replace(inputs, excluded=(forward, backward))

    def _count(self, inputs: LossInputs, forward: Tensor, backward: Tensor) -> None:
        n = forward.shape[0]
        open_ = torch.ones_like(forward)
        if inputs.labels is not None:  # same-group rows are no negatives in the first place
            groups = inputs.labels.to(forward.device)
            open_[:, :n] = groups[:, None] != groups[None, :]
        open_[:, :n].fill_diagonal_(False)
        masked = (forward & open_).sum()
        seen = open_.sum()
        if getattr(self, 'symmetric', True):
            square = open_[:, :n]
            masked = masked + (backward & square.t()).sum()
            seen = seen + square.sum()
        counts = torch.stack([masked, seen]).detach()
        before = self.__dict__.get('_guide_counts')
        self.__dict__['_guide_counts'] = counts if before is None else before + counts.to(before.device)


def masked_logits(logits: Tensor, mask: Tensor | None) -> Tensor:
    """`logits` with the entries of `mask` (a guide's) set to -inf; as they are without one."""
    return logits if mask is None else logits.masked_fill(mask, float('-inf'))
