"""The base of every loss: it checks the :class:`LossInputs` once, gathers negatives across processes and
reduces, so that a subclass fills in one method, :meth:`Loss.compute`.

A subclass says what it reads (:attr:`Loss.reads`) and gets it checked and shaped:

==============  ========================================================================================
``reads``       what :meth:`Loss.compute` is given (a :class:`LossInputs`)
==============  ========================================================================================
``'pairs'``     ``anchors``, ``positives`` (N, D) of one shape; ``labels`` (N,) group ids or None;
                ``negatives`` (N, D) or None
``'items'``     ``embeddings`` (M, D) and ``labels`` (M,): labeled data as given, pairs as
                ``cat(anchors, positives)`` with the group ids (or the pair index) twice
``'embeddings'``  ``embeddings`` (N, D) and ``labels`` (N,) of labeled data (no pairs)
``'logits'``    ``logits`` (N, K) of the model's classifier head and ``labels`` (N,)
``'scored'``    ``anchors``, ``positives`` (N, D) and ``scores`` (N,)
``'triplets'``  ``anchors``, ``positives``, ``negatives`` (N, D) and ``scores`` (N,) (teacher margins)
``None``        the inputs unchecked (a loss that checks for itself)
==============  ========================================================================================

With :attr:`Loss.gather` set (the in-batch contrastive losses' ``gather_across_processes`` option), the rows of
every process are gathered before ``compute`` (see :func:`~finetune.losses.distributed.gather_across_processes`).
``compute`` returns a scalar, or one loss per row / pair / triplet, which the base averages.

Matryoshka (every loss, ``loss_options={'matryoshka_dims': [384, 256, 128, 64]}``, optional
``'matryoshka_weights'``): the loss is the weighted sum of the loss computed on the leading ``d`` dimensions of
every embedding, each re-normalized, for each ``d``; the model is embedded once, so the extra dimensions cost
only loss computations (GradCache and gathered negatives work as they do without).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError, OptionError
from ..heads import COSINE_CLASSIFIER
from ..options import Option, validate_mapping
from ..validators import is_number
from .distributed import gather_across_processes
from .inputs import LossInputs


class Loss(nn.Module):
    """Base class: ``forward(inputs: LossInputs) -> Tensor`` (a scalar). A subclass sets :attr:`reads` and
    implements :meth:`compute`; one that overrides ``forward`` itself works as before."""

    #: registry name, filled in by :func:`~finetune.losses.register_loss`
    name: str = ''
    #: other names it is found under
    aliases: tuple[str, ...] = ()
    #: the data kinds it fits
    data_kinds: tuple[str, ...] = ()
    #: the keys of ``loss_options``
    options: tuple[Option, ...] = ()
    #: what :meth:`compute` reads of the inputs (see the module's table); None: unchecked
    reads: str | None = None
    #: gather the rows of every process before :meth:`compute` (in-batch negatives from all processes)
    gather: bool = False
    #: trains on the logits of the model's cosine-classifier head (see :meth:`model_options`)
    needs_classifier_head: bool = False
    #: its constructor takes ``num_classes`` and ``embedding_dim`` (it owns class weights)
    needs_num_classes: bool = False
    #: it compares (anchor, positive) rows in-batch: on labeled data, items of one class are paired up for it
    takes_pairs: bool = False

    @classmethod
    def model_options(cls, num_classes: int | None = None) -> dict[str, Any]:
        """The ``model_options`` a model needs for this loss (``{}`` for most losses)."""
        return {}

    #: a loss that owns class weights cuts them to the leading dimensions with the embeddings (Matryoshka)
    cuts_class_weights: bool = False
    #: Matryoshka: the leading dimensions the loss is also computed on (None: the full embedding only)
    matryoshka_dims: tuple[int, ...] | None = None
    matryoshka_weights: tuple[float, ...] | None = None

    @classmethod
    def validate_options(cls, given: dict | None) -> dict[str, Any]:
        """``loss_options`` checked against :attr:`options` and the Matryoshka options, defaults filled in."""
        return validate_mapping(f'loss_options for loss {cls.name!r}', given, (*cls.options, *MATRYOSHKA_OPTIONS))

    def set_matryoshka(self, dims: Sequence[int] | None, weights: Sequence[float] | None = None,
                       embedding_dim: int | None = None) -> None:
        """Compute the loss over the leading `dims` of the embeddings (each weighted by `weights`, default 1).
        Raises OptionError for dimensions beyond `embedding_dim`, weights that do not match, or a loss that cannot
        truncate what it reads (a classifier head's logits)."""
        if dims is None:
            if weights is not None:
                raise OptionError(f"loss_options for loss {self.name!r}: 'matryoshka_weights' needs "
                                  f"'matryoshka_dims'.")
            return
        if self.reads in (None, 'logits'):
            raise OptionError(
                f"loss_options for loss {self.name!r}: 'matryoshka_dims' truncates the embeddings a loss reads, but "
                f"{self.name} reads {'logits of the model classifier head' if self.reads else 'its inputs itself'}; "
                f"use a loss on embeddings (ArcFaceLoss or CosFaceLoss hold their own class weights).")
        if self.needs_num_classes and not self.cuts_class_weights:
            raise OptionError(f"loss_options for loss {self.name!r}: 'matryoshka_dims' cuts the embeddings, but "
                              f'{self.name} holds class weights of the full size it cannot cut; use ArcFaceLoss or '
                              f'CosFaceLoss, which cut theirs.')
        too_wide = [d for d in dims if embedding_dim is not None and d > embedding_dim]
        if too_wide:
            raise OptionError(f"loss_options 'matryoshka_dims': {too_wide[0]} is more than the model's "
                              f'{embedding_dim} dimensions; expected sizes up to {embedding_dim}.')
        if weights is not None and len(weights) != len(dims):
            raise OptionError(f"loss_options 'matryoshka_weights': {len(weights)} weights for {len(dims)} "
                              f'matryoshka_dims; give one weight per dimension.')
        order = sorted(range(len(dims)), key=lambda i: -dims[i])
        self.matryoshka_dims = tuple(dims[i] for i in order)
        self.matryoshka_weights = tuple(float(weights[i]) if weights is not None else 1.0 for i in order)

    def forward(self, inputs: LossInputs) -> Tensor:
        """The loss of one batch: the inputs checked (InputError naming the field), gathered, computed, reduced
        (with Matryoshka dimensions, the weighted sum over them)."""
        checked = self.check_inputs(inputs)
        if self.gather:
            anchors, positives, negatives, labels = gather_across_processes(
                checked.anchors, checked.positives, checked.negatives, checked.labels)
            guide = checked.guide
            if guide is not None:  # a guide's embeddings (no gradient) of every process, in the same order
                g_anchors, g_positives, g_negatives = gather_across_processes(guide.anchors, guide.positives,
                                                                              guide.negatives)
                guide = dataclasses.replace(guide, anchors=g_anchors, positives=g_positives, negatives=g_negatives)
            checked = dataclasses.replace(checked, anchors=anchors, positives=positives, negatives=negatives,
                                          labels=labels, guide=guide)
        checked = self.prepare(checked)
        if self.matryoshka_dims is None:
            return self.reduce(self.compute(checked))
        return sum(weight * self.reduce(self.compute(truncated(checked, dim)))
                   for dim, weight in zip(self.matryoshka_dims, self.matryoshka_weights))

    def check_inputs(self, inputs: LossInputs) -> LossInputs:
        """`inputs` checked and shaped for :attr:`reads`; raises InputError (OptionError for a model without
        the classifier head a 'logits' loss needs)."""
        if self.reads is None:
            return inputs
        try:
            reader = _READERS[self.reads]
        except KeyError:
            raise OptionError(f'{type(self).__name__}.reads: expected one of {", ".join(map(repr, _READERS))} or '
                              f'None, got {self.reads!r}.') from None
        return reader(self, inputs)

    def prepare(self, inputs: LossInputs) -> LossInputs:
        """Checked and gathered `inputs` made ready once per batch, before :meth:`compute` (once per Matryoshka
        dimension): what does not depend on the embeddings' size (a guide's masks). Default: as they are."""
        return inputs

    def compute(self, inputs: LossInputs) -> Tensor:
        """The loss of checked inputs: a scalar, or one value per row that :meth:`reduce` averages."""
        raise NotImplementedError(f'{type(self).__name__} implements neither compute() nor forward()')

    def reduce(self, losses: Tensor) -> Tensor:
        """The scalar loss: the mean of per-row losses, a scalar as it is."""
        return losses if losses.dim() == 0 else losses.mean()


def truncated(inputs: LossInputs, dim: int) -> LossInputs:
    """`inputs` with every embedding cut to its leading `dim` dimensions and L2-normalized again."""
    from ..functional import l2_normalize
    cut = {name: l2_normalize(getattr(inputs, name)[:, :dim], dim=-1)
           for name in ('embeddings', 'anchors', 'positives', 'negatives') if getattr(inputs, name) is not None}
    return dataclasses.replace(inputs, **cut)


def _dims(name: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value or \
            any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value) or len(set(value)) < len(value):
        raise OptionError(f"option {name!r}: expected a list of distinct positive dimensions such as "
                          f'[384, 256, 128, 64], got {value!r}.')
    return tuple(value)


def _weights(name: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value or \
            any(not is_number(v) or v <= 0 for v in value):
        raise OptionError(f"option {name!r}: expected a list of positive numbers, one per matryoshka_dims entry, "
                          f'got {value!r}.')
    return tuple(float(v) for v in value)


#: the options every loss takes besides its own
MATRYOSHKA_OPTIONS = (
    Option('matryoshka_dims', 'list[int] | None', None,
           'Matryoshka: the loss summed over these leading dimensions of the embeddings, each re-normalized '
           '(e.g. [384, 256, 128, 64])', _dims),
    Option('matryoshka_weights', 'list[float] | None', None, 'the weight of each of matryoshka_dims (default 1)',
           _weights),
)


# ---------------------------------------------------------------- checks, each written once

def matrix(loss: Loss, field: str, value: Tensor) -> Tensor:
    """`value` if it is a non-empty (N, D) tensor; InputError naming the loss and the field."""
    if value.dim() != 2 or value.shape[0] == 0:
        raise InputError(f'{loss.name}: LossInputs.{field} must be a non-empty (N, D) tensor, '
                         f'got shape {tuple(value.shape)}.')
    return value


def vector(loss: Loss, field: str, value: Tensor, n: int) -> Tensor:
    """`value` if it has shape (n,); InputError naming the loss and the field."""
    if value.dim() != 1 or value.shape[0] != n:
        raise InputError(f'{loss.name}: LossInputs.{field} must have shape ({n},) to match the embeddings, '
                         f'got {tuple(value.shape)}.')
    return value


def require(loss: Loss, inputs: LossInputs, fields: tuple[str, ...], what: str) -> None:
    """InputError naming the missing `fields` of `inputs` (`what`: what they are for)."""
    missing = [f for f in fields if getattr(inputs, f) is None]
    if missing:
        raise InputError(f'{loss.name} needs LossInputs.{" and LossInputs.".join(fields)} ({what}); '
                         f'missing: {", ".join(missing)}.')


def check_class_labels(loss: Loss, labels: Tensor, num_classes: int) -> None:
    """InputError unless `labels` are integer class indices in [0, num_classes) (out of range is an opaque
    error on the CPU and a device-side assert on a GPU)."""
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f'{loss.name}: labels must be integer class indices, got dtype {labels.dtype}.')
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise InputError(f'{loss.name}: labels must lie in [0, {num_classes}) (num_classes={num_classes}), '
                         f'got values from {int(labels.min())} to {int(labels.max())}.')


def _pair(loss: Loss, inputs: LossInputs) -> tuple[Tensor, Tensor]:
    require(loss, inputs, ('anchors', 'positives'), 'row i of each is one pair')
    anchors = matrix(loss, 'anchors', inputs.anchors)
    positives = matrix(loss, 'positives', inputs.positives)
    if anchors.shape != positives.shape:
        raise InputError(f'{loss.name}: anchors {tuple(anchors.shape)} and positives {tuple(positives.shape)} '
                         f'must have the same shape (row i of each is one pair).')
    return anchors, positives


def _negatives(loss: Loss, inputs: LossInputs, anchors: Tensor) -> Tensor:
    negatives = matrix(loss, 'negatives', inputs.negatives)
    if negatives.shape != anchors.shape:
        raise InputError(f'{loss.name}: negatives {tuple(negatives.shape)} and anchors {tuple(anchors.shape)} must '
                         f'have the same shape (row i of each is one triplet).')
    return negatives


def _read_pairs(loss: Loss, inputs: LossInputs) -> LossInputs:
    anchors, positives = _pair(loss, inputs)
    n = anchors.shape[0]
    negatives = None if inputs.negatives is None else _negatives(loss, inputs, anchors)
    groups = None if inputs.labels is None else vector(loss, 'labels', inputs.labels, n)
    return dataclasses.replace(inputs, anchors=anchors, positives=positives, negatives=negatives, labels=groups)


def _read_items(loss: Loss, inputs: LossInputs) -> LossInputs:
    """Labeled data as given; pairs as ``cat(anchors, positives)``, labels twice. For pairs without group ids,
    pair i is its own class: its anchor and positive are each other's only positives."""
    if inputs.embeddings is not None:
        return _read_embeddings(loss, inputs)
    if inputs.anchors is not None or inputs.positives is not None:
        anchors, positives = _pair(loss, inputs)
        n = anchors.shape[0]
        groups = torch.arange(n, device=anchors.device) if inputs.labels is None else \
            vector(loss, 'labels', inputs.labels, n)
        return LossInputs(embeddings=torch.cat([anchors, positives]), labels=torch.cat([groups, groups]))
    raise InputError(f'{loss.name} needs LossInputs.embeddings and labels (labeled data) or anchors and '
                     f'positives (pairs).')


def _read_embeddings(loss: Loss, inputs: LossInputs) -> LossInputs:
    require(loss, inputs, ('embeddings', 'labels'), 'labeled data')
    embeddings = matrix(loss, 'embeddings', inputs.embeddings)
    return dataclasses.replace(inputs, embeddings=embeddings,
                               labels=vector(loss, 'labels', inputs.labels, embeddings.shape[0]))


def _read_logits(loss: Loss, inputs: LossInputs) -> LossInputs:
    if inputs.logits is None:
        raise OptionError(
            f"loss {loss.name!r} trains on the logits of a cosine classifier, but the model gave none: build "
            f"the model with model_options={{'head': {COSINE_CLASSIFIER!r}, 'head_options': "
            f"{{'num_classes': K}}}} and call it with return_logits=True (the training code does both).")
    require(loss, inputs, ('labels',), 'class labels')
    if inputs.logits.dim() != 2:
        raise InputError(f'{loss.name}: logits must be (N, K), got shape {tuple(inputs.logits.shape)}.')
    return dataclasses.replace(inputs, labels=vector(loss, 'labels', inputs.labels, inputs.logits.shape[0]))


def _read_scored(loss: Loss, inputs: LossInputs) -> LossInputs:
    anchors, positives = _pair(loss, inputs)
    require(loss, inputs, ('scores',), 'one similarity score per pair')
    return dataclasses.replace(inputs, anchors=anchors, positives=positives,
                               scores=vector(loss, 'scores', inputs.scores, anchors.shape[0]))


def _read_triplets(loss: Loss, inputs: LossInputs) -> LossInputs:
    anchors, positives = _pair(loss, inputs)
    negatives = _negatives(loss, inputs, anchors)
    require(loss, inputs, ('scores',), "the teacher's margin of each triplet")
    return dataclasses.replace(inputs, anchors=anchors, positives=positives, negatives=negatives,
                               scores=vector(loss, 'scores', inputs.scores, anchors.shape[0]))


_READERS: dict[str, Callable[[Loss, LossInputs], LossInputs]] = {
    'pairs': _read_pairs, 'items': _read_items, 'embeddings': _read_embeddings, 'logits': _read_logits,
    'scored': _read_scored, 'triplets': _read_triplets,
}
