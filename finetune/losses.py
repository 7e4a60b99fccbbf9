"""Losses: the metric-learning objectives, registered by name, each declaring the data it fits.

Every loss is an ``nn.Module`` whose ``forward`` takes one :class:`LossInputs` and returns a scalar.
What the training code fills in depends on the data kind:

* ``'labeled'`` (item, label): ``embeddings`` (N, D) and ``labels`` (N,). Losses that work on pairs
  (InfoNCE) get ``anchors`` / ``positives`` instead: the training code pairs items of the same class
  (a class-balanced sampler puts several items of each class in a batch) and passes the class labels
  as ``labels``, so other items of the same class are not counted as negatives.
* ``'pairs'`` (query, doc): ``anchors`` and ``positives`` (N, D); ``labels`` optionally holds group ids
  (rows sharing a query share a group) so that rows of the same group are never negatives of each other.
* ``'text-image'``: as pairs, the text tower's embeddings as ``anchors`` and the image tower's as
  ``positives``; ``logit_scale`` is the CLIP model's own log-temperature when it has one.
* ``'scored'`` (a, b, score in [0, 1]): ``anchors`` (a), ``positives`` (b) and ``scores`` (N,).

Embeddings usually arrive L2-normalized, but no loss relies on it: wherever a cosine is meant the loss
normalizes itself. Similarities are computed in at least float32 (never under autocast's half
precision): a temperature of 0.05 turns bfloat16 rounding of cosines into logit noise of ~0.1.

Losses are registered by name (case-insensitive, with aliases); ``PML:<Name>`` wraps any loss of
pytorch-metric-learning when that package is installed. :func:`build_loss` validates ``loss_options``
against the loss's :attr:`Loss.options` and refuses a loss that does not fit the data kind.

A loss that owns parameters (ArcFace/CosFace class weights, a learnable temperature) exposes them as
ordinary parameters; the training code puts ``loss.parameters()`` in an optimizer group of their own.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import l2_normalize
from .errors import InputError, OptionError, did_you_mean
from .heads import COSINE_CLASSIFIER
from .options import Option, boolean, fraction, one_of, positive_float, positive_int, validate_mapping

LABELED, PAIRS, SCORED, TEXT_IMAGE = 'labeled', 'pairs', 'scored', 'text-image'
#: (query, positive, negative, teacher margin) rows, as finetune.synthesize makes them
MARGIN_TRIPLETS = 'margin-triplets'
#: the built-in data kinds; every registered kind (finetune.data.kinds) is accepted
DATA_KINDS = (LABELED, PAIRS, SCORED, TEXT_IMAGE)

#: the largest logit scale (1 / temperature) a learned temperature may reach, as in CLIP
MAX_LOGIT_SCALE = 100.0

PML_PREFIX = 'PML:'


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


# ---------------------------------------------------------------- helpers

def non_negative_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise OptionError(f'option {name!r}: expected a finite number >= 0, got {value!r} ({type(value).__name__}).')
    return float(value)


@contextlib.contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    try:
        context = torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type autocast does not know: nothing to switch off
        context = contextlib.nullcontext()
    with context:
        yield


def _full(x: Tensor) -> Tensor:
    """`x` in at least float32 (float64 stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _common(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """`a` and `b` in one dtype, at least float32 (bf16 embeddings with fp32 class weights, fp64 tests)."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype), b.to(dtype)


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """(N, M) cosine similarities between the rows of `a` (N, D) and `b` (M, D), in at least float32."""
    a, b = _common(a, b)
    with _no_autocast(a.device):
        return l2_normalize(a, dim=-1) @ l2_normalize(b, dim=-1).t()


def rowwise_cosine(a: Tensor, b: Tensor) -> Tensor:
    """(N,) cosine similarity of row i of `a` with row i of `b`."""
    a, b = _common(a, b)
    with _no_autocast(a.device):
        return (l2_normalize(a, dim=-1) * l2_normalize(b, dim=-1)).sum(dim=-1)


def _zero_like_loss(*tensors: Tensor) -> Tensor:
    """A zero loss that still belongs to the graph (so ``backward`` works and gives zero gradients)."""
    return sum(0.0 * t.sum() for t in tensors)


def _matrix(loss: 'Loss', field: str, value: Tensor) -> Tensor:
    if value.dim() != 2 or value.shape[0] == 0:
        raise InputError(f'{loss.name}: LossInputs.{field} must be a non-empty (N, D) tensor, '
                         f'got shape {tuple(value.shape)}.')
    return value


def _vector(loss: 'Loss', field: str, value: Tensor, n: int) -> Tensor:
    if value.dim() != 1 or value.shape[0] != n:
        raise InputError(f'{loss.name}: LossInputs.{field} must have shape ({n},) to match the embeddings, '
                         f'got {tuple(value.shape)}.')
    return value


def _require(loss: 'Loss', inputs: LossInputs, fields: tuple[str, ...], what: str) -> None:
    missing = [f for f in fields if getattr(inputs, f) is None]
    if missing:
        raise InputError(f'{loss.name} needs LossInputs.{" and LossInputs.".join(fields)} ({what}); '
                         f'missing: {", ".join(missing)}.')


def _pair(loss: 'Loss', inputs: LossInputs) -> tuple[Tensor, Tensor]:
    _require(loss, inputs, ('anchors', 'positives'), 'row i of each is one pair')
    anchors = _matrix(loss, 'anchors', inputs.anchors)
    positives = _matrix(loss, 'positives', inputs.positives)
    if anchors.shape != positives.shape:
        raise InputError(f'{loss.name}: anchors {tuple(anchors.shape)} and positives {tuple(positives.shape)} '
                         f'must have the same shape (row i of each is one pair).')
    return anchors, positives


def _groups(loss: 'Loss', inputs: LossInputs, n: int) -> Tensor | None:
    return None if inputs.labels is None else _vector(loss, 'labels', inputs.labels, n)


def _labeled(loss: 'Loss', inputs: LossInputs) -> tuple[Tensor, Tensor]:
    """(embeddings, labels): labeled data as given; pairs as ``cat(anchors, positives)``, labels twice.

    For pairs without group ids, pair i is its own class: its anchor and positive are each other's only
    positives, every other row a negative.
    """
    if inputs.embeddings is not None:
        _require(loss, inputs, ('embeddings', 'labels'), 'labeled data')
        embeddings = _matrix(loss, 'embeddings', inputs.embeddings)
        return embeddings, _vector(loss, 'labels', inputs.labels, embeddings.shape[0])
    if inputs.anchors is not None or inputs.positives is not None:
        anchors, positives = _pair(loss, inputs)
        n = anchors.shape[0]
        groups = _groups(loss, inputs, n)
        if groups is None:
            groups = torch.arange(n, device=anchors.device)
        return torch.cat([anchors, positives]), torch.cat([groups, groups])
    raise InputError(f'{loss.name} needs LossInputs.embeddings and labels (labeled data) or anchors and '
                     f'positives (pairs).')


def _check_class_labels(loss: 'Loss', labels: Tensor, num_classes: int) -> None:
    # a label out of range is an opaque error on the CPU and a device-side assert on a GPU
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f'{loss.name}: labels must be integer class indices, got dtype {labels.dtype}.')
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise InputError(f'{loss.name}: labels must lie in [0, {num_classes}) (num_classes={num_classes}), '
                         f'got values from {int(labels.min())} to {int(labels.max())}.')


# ---------------------------------------------------------------- base class

class Loss(nn.Module):
    """Base class: ``forward(inputs: LossInputs) -> Tensor`` (a scalar)."""

    #: registry name, filled in by :func:`register_loss`
    name: str = ''
    #: other names it is found under
    aliases: tuple[str, ...] = ()
    #: the data kinds it fits
    data_kinds: tuple[str, ...] = ()
    #: the keys of ``loss_options``
    options: tuple[Option, ...] = ()
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

    @classmethod
    def validate_options(cls, given: dict | None) -> dict[str, Any]:
        """``loss_options`` checked against :attr:`options`, defaults filled in."""
        return validate_mapping(f'loss_options for loss {cls.name!r}', given, cls.options)

    def forward(self, inputs: LossInputs) -> Tensor:
        raise NotImplementedError


# ---------------------------------------------------------------- in-batch contrastive

#: options of the in-batch contrastive losses: GradCache and negatives gathered across processes
CONTRASTIVE_OPTIONS = (
    Option('mini_batch_size', 'int > 0 | None', None,
           'GradCache: embed the batch in chunks of this many rows without a graph, then backpropagate chunk by '
           'chunk; same gradients, the memory of one chunk (None: the whole batch at once)', positive_int(True)),
    Option('gather_across_processes', 'bool', True,
           'under several processes, every query sees the embeddings of all processes as negatives', boolean),
)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def gather_across_processes(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Each tensor concatenated over the processes of the default process group, in rank order; the local part
    keeps its graph. Outside a group of several processes: the tensors unchanged.

    Every process then computes the same global loss, but its backward reaches only its own rows; the local part's
    gradient is multiplied by the number of processes so that DistributedDataParallel's average of the processes'
    gradients equals the gradient of the global loss (what one process would get on the global batch)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return tensors
    world, rank = dist.get_world_size(), dist.get_rank()
    present = [x for x in tensors if x is not None]
    if not present:
        return tensors
    # the processes' row counts may differ (an epoch's short last batch): gather them, pad to the largest
    count = torch.tensor([present[0].shape[0]], device=present[0].device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    most = max(counts)
    out = []
    for x in tensors:
        if x is None:
            out.append(None)
            continue
        local = x.detach().contiguous()
        if local.shape[0] < most:
            local = torch.cat([local, local.new_zeros((most - local.shape[0], *local.shape[1:]))])
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        parts = [part[:n] for part, n in zip(parts, counts)]
        parts[rank] = _ScaleGradient.apply(x, float(world)) if x.requires_grad else x
        out.append(torch.cat(parts))
    return tuple(out)


def in_batch_contrastive(anchors: Tensor, positives: Tensor, scale: Tensor | float, groups: Tensor | None = None,
                         symmetric: bool = True, gather: bool = False) -> Tensor:
    """InfoNCE over a batch: ``logits[i, j] = scale * cos(anchor_i, positive_j)``, target ``j = i``.

    With `groups`, ``logits[i, j]`` for ``j != i`` of the same group are removed (false negatives).
    `symmetric` averages the anchor->positive and positive->anchor cross-entropies. With `gather`, under several
    processes, the batch is that of all processes (:func:`gather_across_processes`); group ids are gathered as
    they are (the training data's ids hold across the whole data set).
    """
    if gather:
        anchors, positives, groups = gather_across_processes(anchors, positives, groups)
    logits = cosine_matrix(anchors, positives) * scale
    n = logits.shape[0]
    targets = torch.arange(n, device=logits.device)
    if groups is not None:
        same = groups[:, None] == groups[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float('-inf'))
    loss = F.cross_entropy(logits, targets)
    if symmetric:  # the mask is symmetric, so the transpose is the positive->anchor problem
        loss = (loss + F.cross_entropy(logits.t(), targets)) / 2
    return loss


class InfoNCELoss(Loss):
    """In-batch contrastive loss (MultipleNegativesRankingLoss): each anchor must pick its own positive
    among all positives of the batch, ``logits = cos / temperature``.

    ``labels`` (group ids) mask rows of the same group out of each other's negatives. For labeled data
    the training code pairs items of the same class as anchor / positive and passes the class labels.
    """

    data_kinds = (PAIRS, TEXT_IMAGE, LABELED, MARGIN_TRIPLETS)
    takes_pairs = True
    options = (
        Option('temperature', 'float > 0', 0.05, 'logits = cosine / temperature (0.05 = scale 20, as MNRL)',
               positive_float),
        Option('symmetric', 'bool', True, 'average the anchor->positive and positive->anchor losses', boolean),
        Option('learnable_temperature', 'bool', False,
               f'learn the temperature (as a log-scale, scale capped at {MAX_LOGIT_SCALE:g})', boolean),
        *CONTRASTIVE_OPTIONS,
    )

    def __init__(self, temperature: float = 0.05, symmetric: bool = True, learnable_temperature: bool = False,
                 mini_batch_size: int | None = None, gather_across_processes: bool = True):
        super().__init__()
        self.mini_batch_size, self.gather = mini_batch_size, gather_across_processes
        self.symmetric = symmetric
        self.learnable_temperature = learnable_temperature
        self.fixed_scale = 1.0 / temperature
        if learnable_temperature:
            self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    @property
    def scale(self) -> Tensor | float:
        if self.learnable_temperature:
            return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return self.fixed_scale

    def forward(self, inputs: LossInputs) -> Tensor:
        anchors, positives = _pair(self, inputs)
        if inputs.negatives is not None:  # hard negatives: more candidates for every anchor
            return hard_negatives_contrastive(anchors, positives, _negatives(self, inputs, anchors), self.scale,
                                              _groups(self, inputs, anchors.shape[0]), self.symmetric, self.gather)
        return in_batch_contrastive(anchors, positives, self.scale, _groups(self, inputs, anchors.shape[0]),
                                    self.symmetric, self.gather)

    def extra_repr(self) -> str:
        scale = float(self.scale)
        return f'scale={scale:.4g}, symmetric={self.symmetric}, learnable_temperature={self.learnable_temperature}'


class CLIPLoss(Loss):
    """CLIP's symmetric InfoNCE. The scale is ``exp(logit_scale)`` of the model when it has one
    (``LossInputs.logit_scale``), else the loss's own learnable log-scale; either is capped at 100.

    The loss's own ``log_scale`` parameter exists either way; with a model that owns ``logit_scale`` it
    simply gets no gradient.
    """

    data_kinds = (TEXT_IMAGE, PAIRS)
    takes_pairs = True
    options = (
        Option('temperature', 'float > 0', 0.07,
               "initial temperature of the loss's own learnable scale (used when the model has no logit_scale)",
               positive_float),
        *CONTRASTIVE_OPTIONS,
    )

    def __init__(self, temperature: float = 0.07, mini_batch_size: int | None = None,
                 gather_across_processes: bool = True):
        super().__init__()
        self.mini_batch_size, self.gather = mini_batch_size, gather_across_processes
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def forward(self, inputs: LossInputs) -> Tensor:
        anchors, positives = _pair(self, inputs)
        log_scale = self.log_scale if inputs.logit_scale is None else inputs.logit_scale
        if log_scale.numel() != 1:
            raise InputError(f'{self.name}: LossInputs.logit_scale must be a scalar, got shape '
                             f'{tuple(log_scale.shape)}.')
        scale = _full(log_scale.reshape(())).exp().clamp(max=MAX_LOGIT_SCALE)
        return in_batch_contrastive(anchors, positives, scale, _groups(self, inputs, anchors.shape[0]), True,
                                    self.gather)


# ---------------------------------------------------------------- triplets

def distance_matrix(x: Tensor, distance: str) -> Tensor:
    """(N, N) pairwise distances: ``'cosine'`` = 1 - cos, ``'euclidean'`` = L2 (zero gradient at 0)."""
    with _no_autocast(x.device):
        x = _full(x)
        if distance == 'cosine':
            xn = l2_normalize(x, dim=-1)
            return 1.0 - xn @ xn.t()
        squared = (x * x).sum(dim=-1)
        d2 = squared[:, None] + squared[None, :] - 2.0 * x @ x.t()
        # sqrt has an infinite slope at 0 (an item with itself, duplicates): clamping there gives it none
        return d2.clamp(min=1e-12).sqrt()


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

    def forward(self, inputs: LossInputs) -> Tensor:
        embeddings, labels = _labeled(self, inputs)
        d = distance_matrix(embeddings, self.distance)
        n = d.shape[0]
        same = labels[:, None] == labels[None, :]
        positive = same & ~torch.eye(n, dtype=torch.bool, device=d.device)
        negative = ~same
        valid = positive.any(dim=1) & negative.any(dim=1)
        if not bool(valid.any()):
            return _zero_like_loss(embeddings)
        m = self.margin
        if self.mining == 'batch_hard':
            hardest_positive = d.masked_fill(~positive, float('-inf')).amax(dim=1)
            hardest_negative = d.masked_fill(~negative, float('inf')).amin(dim=1)
            return F.relu(hardest_positive - hardest_negative + m)[valid].mean()
        if self.mining == 'semi_hard':
            negatives_sorted = d.masked_fill(~negative, float('inf')).sort(dim=1).values  # (N, N), ascending
            count = negative.sum(dim=1, keepdim=True)
            # for each (anchor a, positive p): the first negative of a farther than d[a, p]
            first = torch.searchsorted(negatives_sorted.detach().contiguous(), d.detach().contiguous(), right=True)
            candidate = negatives_sorted.gather(1, first.clamp(max=n - 1))
            semi_hard = (first < count) & (candidate < d + m)
            chosen = torch.where(semi_hard, candidate, negatives_sorted[:, :1])
            pairs = positive & valid[:, None]
            return F.relu(d - chosen + m)[pairs].mean()
        triplets = d[:, :, None] - d[:, None, :] + m  # [a, p, n]
        mask = positive[:, :, None] & negative[:, None, :]
        losses = F.relu(triplets[mask])
        active = losses > 0
        if not bool(active.any()):
            return _zero_like_loss(losses)
        return losses[active].mean()

    def extra_repr(self) -> str:
        return f'margin={self.margin}, distance={self.distance!r}, mining={self.mining!r}'


# ---------------------------------------------------------------- classification-style losses

class NormalizedSoftmaxLoss(Loss):
    """Cross-entropy on the logits of the model's cosine-classifier head (recognite's recipe).

    The head's ``scale`` (``head_options``) is the inverse temperature; :meth:`model_options` says what
    the model needs: ``{'head': 'cosine_classifier', 'head_options': {'num_classes': K}}``.
    """

    data_kinds = (LABELED,)
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

    def forward(self, inputs: LossInputs) -> Tensor:
        if inputs.logits is None:
            raise OptionError(
                f"loss {self.name!r} trains on the logits of a cosine classifier, but the model gave none: build "
                f"the model with model_options={{'head': {COSINE_CLASSIFIER!r}, 'head_options': "
                f"{{'num_classes': K}}}} and call it with return_logits=True (the training code does both).")
        _require(self, inputs, ('labels',), 'class labels')
        logits = inputs.logits
        if logits.dim() != 2:
            raise InputError(f'{self.name}: logits must be (N, K), got shape {tuple(logits.shape)}.')
        labels = _vector(self, 'labels', inputs.labels, logits.shape[0])
        _check_class_labels(self, labels, logits.shape[1])
        with _no_autocast(logits.device):
            return F.cross_entropy(_full(logits), labels, label_smoothing=self.label_smoothing)


class _MarginSoftmaxLoss(Loss):
    """Softmax over ``scale * cos(embedding, class weight)`` with a margin on the target class.

    The class weights (num_classes x embedding_dim) are parameters of the loss, L2-normalized per row in
    forward. The default scale is 30: the papers use 64 for face recognition with thousands of classes
    and huge batches; 30 trains more gently on the small data sets fine-tuning usually sees.
    """

    data_kinds = (LABELED,)
    needs_num_classes = True

    def __init__(self, num_classes: int, embedding_dim: int, margin: float, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=embedding_dim ** -0.5)
        self.num_classes, self.embedding_dim = num_classes, embedding_dim
        self.margin, self.scale = margin, scale

    def target_logit(self, cos_target: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, inputs: LossInputs) -> Tensor:
        _require(self, inputs, ('embeddings', 'labels'), 'labeled data')
        embeddings = _matrix(self, 'embeddings', inputs.embeddings)
        if embeddings.shape[1] != self.embedding_dim:
            raise InputError(f'{self.name}: embeddings have {embeddings.shape[1]} dimensions, the class weights '
                             f'{self.embedding_dim} (embedding_dim).')
        labels = _vector(self, 'labels', inputs.labels, embeddings.shape[0])
        _check_class_labels(self, labels, self.num_classes)
        with _no_autocast(embeddings.device):
            cos = cosine_matrix(embeddings, self.weight)
            index = labels[:, None]
            logits = cos.scatter(1, index, self.target_logit(cos.gather(1, index))) * self.scale
            return F.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, margin={self.margin}, '
                f'scale={self.scale}')


class ArcFaceLoss(_MarginSoftmaxLoss):
    """ArcFace (additive angular margin): the target logit is ``cos(theta + m)``.

    ``theta = arccos(cos)`` with the cosine clamped to [-1 + 1e-7, 1 - 1e-7] (arccos's slope is infinite at
    ±1). Where ``theta + m >= pi``, ``cos(theta + m)`` would rise again as theta grows (a target far from its
    class would be rewarded); there the usual fallback (InsightFace's) ``cos(theta) - m * sin(m)`` is used:
    the linearization of ``cos(theta + m)``, always below ``cos(theta)``. Since ``cos m + m sin m >= 1``, the
    target logit stays decreasing in theta across the switch (it steps down there, by about m²/2).
    """

    options = (
        Option('margin', 'float >= 0', 0.5, 'additive angular margin in radians', non_negative_float),
        Option('scale', 'float > 0', 30.0, 'logits = scale * cosine (the paper: 64)', positive_float),
    )

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.5, scale: float = 30.0):
        super().__init__(num_classes, embedding_dim, margin, scale)

    def target_logit(self, cos_target: Tensor) -> Tensor:
        m = self.margin
        theta = torch.acos(cos_target.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
        return torch.where(theta + m < math.pi, torch.cos(theta + m), cos_target - m * math.sin(m))


class CosFaceLoss(_MarginSoftmaxLoss):
    """CosFace (large margin cosine loss): the target logit is ``cos(theta) - m``."""

    options = (
        Option('margin', 'float >= 0', 0.35, 'additive cosine margin', non_negative_float),
        Option('scale', 'float > 0', 30.0, 'logits = scale * cosine (the paper: 64)', positive_float),
    )

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.35, scale: float = 30.0):
        super().__init__(num_classes, embedding_dim, margin, scale)

    def target_logit(self, cos_target: Tensor) -> Tensor:
        return cos_target - self.margin


# ---------------------------------------------------------------- scored pairs

def _scored(loss: Loss, inputs: LossInputs) -> tuple[Tensor, Tensor]:
    anchors, positives = _pair(loss, inputs)
    _require(loss, inputs, ('scores',), 'one similarity score per pair')
    scores = _vector(loss, 'scores', inputs.scores, anchors.shape[0])
    return rowwise_cosine(anchors, positives), scores


class CoSENTLoss(Loss):
    """CoSENT: ``log(1 + sum over pairs (i, j) with score_i > score_j of exp(scale * (cos_j - cos_i)))``.

    Only the order of the scores matters: the loss asks every pair scored higher to have the higher cosine.
    """

    data_kinds = (SCORED,)
    options = (
        Option('scale', 'float > 0', 20.0, 'multiplies the cosine differences (inverse temperature)', positive_float),
    )

    def __init__(self, scale: float = 20.0):
        super().__init__()
        self.scale = scale

    def forward(self, inputs: LossInputs) -> Tensor:
        cos, scores = _scored(self, inputs)
        cos = cos * self.scale
        differences = cos[None, :] - cos[:, None]  # [i, j] = cos_j - cos_i
        ordered = scores[:, None] > scores[None, :]
        terms = differences.masked_fill(~ordered, float('-inf')).flatten()
        return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)


class CosineSimilarityLoss(Loss):
    """Mean squared error between ``cos(a, b)`` and the score."""

    data_kinds = (SCORED,)

    def forward(self, inputs: LossInputs) -> Tensor:
        cos, scores = _scored(self, inputs)
        return F.mse_loss(cos, scores.to(cos.dtype))


# ---------------------------------------------------------------- hard negatives and teacher margins

def _negatives(loss: Loss, inputs: LossInputs, anchors: Tensor) -> Tensor:
    negatives = _matrix(loss, 'negatives', inputs.negatives)
    if negatives.shape != anchors.shape:
        raise InputError(f'{loss.name}: negatives {tuple(negatives.shape)} and anchors {tuple(anchors.shape)} must '
                         f'have the same shape (row i of each is one triplet).')
    return negatives


def hard_negatives_contrastive(anchors: Tensor, positives: Tensor, negatives: Tensor, scale: Tensor | float,
                               groups: Tensor | None = None, symmetric: bool = True, gather: bool = False) -> Tensor:
    """InfoNCE with hard negatives: anchor i picks its positive among every positive and every hard negative of
    the batch, ``logits[i] = scale * cos(anchor_i, [positives; negatives])``, target i.

    With `groups`, the positives of other rows of the same group are removed (false negatives); negatives stay
    negatives for every anchor. `symmetric` adds the positive->anchor cross-entropy (over the anchors alone)
    and averages the two. `gather`: as in :func:`in_batch_contrastive`, the batch of every process."""
    if gather:
        anchors, positives, negatives, groups = gather_across_processes(anchors, positives, negatives, groups)
    n = anchors.shape[0]
    logits = cosine_matrix(anchors, torch.cat([positives, negatives])) * scale
    if groups is not None:
        same = groups[:, None] == groups[None, :]
        same.fill_diagonal_(False)
        logits = torch.cat([logits[:, :n].masked_fill(same, float('-inf')), logits[:, n:]], dim=1)
    targets = torch.arange(n, device=logits.device)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = (loss + F.cross_entropy(logits[:, :n].t(), targets)) / 2
    return loss


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
    options = (
        Option('scale', 'float > 0', 1.0, "multiplies the student's cosine margin before it is compared with the "
               "teacher's", positive_float),
    )

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, inputs: LossInputs) -> Tensor:
        anchors, positives = _pair(self, inputs)
        negatives = _negatives(self, inputs, anchors)
        _require(self, inputs, ('scores',), "the teacher's margin of each triplet")
        margins = _vector(self, 'scores', inputs.scores, anchors.shape[0])
        student = self.scale * (rowwise_cosine(anchors, positives) - rowwise_cosine(anchors, negatives))
        return F.mse_loss(student, margins.to(student.dtype))

    def extra_repr(self) -> str:
        return f'scale={self.scale}'


# ---------------------------------------------------------------- registry

_LOSSES: dict[str, type[Loss]] = {}  # lower-cased name or alias -> class
_NAMES: list[str] = []  # canonical names, in registration order
_SPELLINGS: list[str] = []  # names and aliases as registered

def _kind_names() -> tuple[str, ...]:
    from .data.kinds import kind_names
    return kind_names()


def register_loss(name: str, cls: type[Loss], aliases: tuple[str, ...] = ()) -> None:
    """Register a :class:`Loss` subclass under `name` (and `aliases`); names are case-insensitive."""
    if not (isinstance(cls, type) and issubclass(cls, Loss)):
        raise OptionError(f'register_loss: {cls!r} is not a subclass of finetune.losses.Loss')
    unknown = [k for k in cls.data_kinds if k not in _kind_names()]
    if unknown or not cls.data_kinds:
        raise OptionError(f'register_loss: {name!r} declares data kinds {cls.data_kinds!r}; '
                          f'each must be one of {", ".join(map(repr, _kind_names()))}.')
    for key in (name, *aliases):
        if key.lower().startswith(PML_PREFIX.lower()):
            raise OptionError(f'register_loss: names starting with {PML_PREFIX!r} are reserved')
        if key.lower() in _LOSSES and _LOSSES[key.lower()] is not cls:
            raise OptionError(f'a loss named {key!r} is already registered')
    for key in (name, *aliases):
        _LOSSES[key.lower()] = cls
        if key not in _SPELLINGS:
            _SPELLINGS.append(key)
    if name not in _NAMES:
        _NAMES.append(name)
    cls.name, cls.aliases = name, tuple(aliases)


register_loss('InfoNCE', InfoNCELoss, aliases=('InfoNCELoss', 'MultipleNegativesRankingLoss', 'MNRL'))
register_loss('CLIPLoss', CLIPLoss, aliases=('CLIP',))
register_loss('TripletMarginLoss', TripletMarginLoss, aliases=('TripletLoss', 'Triplet'))
register_loss('NormalizedSoftmaxLoss', NormalizedSoftmaxLoss, aliases=('NormalizedSoftmax',))
register_loss('ArcFaceLoss', ArcFaceLoss, aliases=('ArcFace',))
register_loss('CosFaceLoss', CosFaceLoss, aliases=('CosFace',))
register_loss('CoSENTLoss', CoSENTLoss, aliases=('CoSENT',))
register_loss('CosineSimilarityLoss', CosineSimilarityLoss)
register_loss('MarginMSELoss', MarginMSELoss, aliases=('MarginMSE',))


def loss_names(include_aliases: bool = False) -> list[str]:
    """The registered loss names (and, with `include_aliases`, their aliases) as users type them."""
    return list(_SPELLINGS if include_aliases else _NAMES)


def _check_data_kind(data_kind: Any) -> str:
    kinds = _kind_names()
    if isinstance(data_kind, str):
        for kind in kinds:
            if data_kind.lower() == kind:
                return kind
    hint = did_you_mean(data_kind, kinds) if isinstance(data_kind, str) else ''
    raise OptionError(f'unknown data kind {data_kind!r}.{hint} Data kinds: {", ".join(map(repr, kinds))}.')


def losses_for(data_kind: str) -> list[str]:
    """The names of the losses that fit `data_kind`."""
    kind = _check_data_kind(data_kind)
    return [name for name in _NAMES if kind in _LOSSES[name.lower()].data_kinds]


def default_loss(data_kind: str) -> str:
    """The loss used for `data_kind` when none is named."""
    from .data.kinds import get_kind
    return get_kind(_check_data_kind(data_kind)).default_loss


def loss_class(name: str) -> type[Loss]:
    """The class registered under `name` (case-insensitive), or a ``PML:<Name>`` adapter.

    Raises OptionError for an unknown name, with the closest names and the full list.
    """
    if not isinstance(name, str):
        raise OptionError(f'a loss name must be a string, got {name!r} ({type(name).__name__}). '
                          f'Available losses: {", ".join(map(repr, _NAMES))}.')
    if name.lower().startswith(PML_PREFIX.lower()):
        return _pml_loss_class(name[len(PML_PREFIX):])
    cls = _LOSSES.get(name.lower())
    if cls is None:
        raise OptionError(f'unknown loss {name!r}.{did_you_mean(name, _SPELLINGS)} Available losses: '
                          f'{", ".join(map(repr, _NAMES))}; or {PML_PREFIX}<Name> for any loss of '
                          f'pytorch-metric-learning.')
    return cls


def required_model_options(name: str, num_classes: int | None = None) -> dict[str, Any]:
    """The ``model_options`` the loss `name` needs (a cosine-classifier head for NormalizedSoftmaxLoss)."""
    return loss_class(name).model_options(num_classes)


def build_loss(name: str, loss_options: dict | None, data_kind: str, num_classes: int | None = None,
               embedding_dim: int | None = None) -> Loss:
    """The loss `name` for `data_kind`, its `loss_options` validated.

    `num_classes` and `embedding_dim` are needed by losses that own class weights (ArcFace, CosFace).
    Raises OptionError for an unknown name or option, a bad value, or a loss that does not fit the data.
    """
    kind = _check_data_kind(data_kind)
    cls = loss_class(name)
    if kind not in cls.data_kinds:
        takes = ', '.join(map(repr, cls.data_kinds))
        fits = ', '.join(map(repr, losses_for(kind)))
        raise OptionError(f'loss {cls.name!r} does not fit {kind!r} data (it takes {takes} data). Losses for '
                          f'{kind!r} data: {fits} (default {default_loss(kind)!r}).')
    options = cls.validate_options(loss_options)
    extra: dict[str, Any] = {}
    if cls.needs_num_classes:
        for what, value in (('num_classes', num_classes), ('embedding_dim', embedding_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise OptionError(f'loss {cls.name!r} owns class weights and needs {what} (a positive integer), '
                                  f'got {value!r}.')
        extra = {'num_classes': num_classes, 'embedding_dim': embedding_dim}
    return cls(**options, **extra)


# ---------------------------------------------------------------- pytorch-metric-learning adapter

_PML_ADAPTERS: dict[type, type[Loss]] = {}
_PML_FILLED = ('num_classes', 'embedding_size')  # passed by build_loss, not loss_options


def _pml_options(target: type) -> tuple[Option, ...]:
    """One Option per constructor argument of `target` and of its bases while they take ``**kwargs``."""
    found: dict[str, Option] = {}
    for klass in target.__mro__:
        if klass in (nn.Module, object):
            break
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        try:
            parameters = list(inspect.signature(init).parameters.values())[1:]
        except (TypeError, ValueError):
            break
        more = False
        for p in parameters:
            if p.kind is p.VAR_KEYWORD:
                more = True
            elif p.kind is not p.VAR_POSITIONAL and p.name not in found and p.name not in _PML_FILLED:
                default = None if p.default is p.empty else p.default
                found[p.name] = Option(p.name, 'any', default,
                                       f'passed to pytorch_metric_learning.losses.{target.__name__}')
        if not more:
            break
    return tuple(found.values())


class _PMLLoss(Loss):
    """A pytorch-metric-learning loss on ``(embeddings, labels)``; pairs become ``cat(anchors, positives)``."""

    data_kinds = (LABELED, PAIRS)
    target: type = nn.Module

    @classmethod
    def validate_options(cls, given: dict | None) -> dict[str, Any]:
        # only the keys given: pytorch-metric-learning fills in its own defaults
        return validate_mapping(f'loss_options for loss {cls.name!r}', given, cls.options, keep_missing=False)

    def __init__(self, num_classes: int | None = None, embedding_dim: int | None = None, **options: Any):
        super().__init__()
        if self.needs_num_classes:
            options.update(num_classes=num_classes, embedding_size=embedding_dim)
        try:
            self.pml = self.target(**options)
        except TypeError as e:
            raise OptionError(f'loss_options for loss {self.name!r}: {e}') from e

    def forward(self, inputs: LossInputs) -> Tensor:
        embeddings, labels = _labeled(self, inputs)
        return self.pml(embeddings, labels)


def _pml_loss_class(loss_name: str) -> type[Loss]:
    try:
        module = importlib.import_module('pytorch_metric_learning.losses')
    except ImportError as e:
        raise OptionError(f'loss {PML_PREFIX}{loss_name} needs pytorch-metric-learning, which is not installed: '
                          f'pip install pytorch-metric-learning') from e
    classes = {n: getattr(module, n) for n in dir(module) if not n.startswith('_')}
    classes = {n: c for n, c in classes.items() if isinstance(c, type) and issubclass(c, nn.Module)}
    by_lower = {n.lower(): c for n, c in classes.items()}
    target = by_lower.get(loss_name.lower())
    if target is None:
        choices = sorted(n for n in classes if n.endswith('Loss'))
        raise OptionError(f'pytorch-metric-learning has no loss {loss_name!r}.{did_you_mean(loss_name, choices)} '
                          f'Its losses: {", ".join(choices)}.')
    if target not in _PML_ADAPTERS:
        options = _pml_options(target)
        try:
            takes_classes = 'num_classes' in inspect.signature(target).parameters
        except (TypeError, ValueError):
            takes_classes = False
        _PML_ADAPTERS[target] = type(f'PML{target.__name__}', (_PMLLoss,), {
            'name': PML_PREFIX + target.__name__, 'target': target, 'options': options,
            'needs_num_classes': takes_classes, '__doc__': f'pytorch_metric_learning.losses.{target.__name__}',
        })
    return _PML_ADAPTERS[target]


__all__ = [
    'LossInputs', 'Loss', 'InfoNCELoss', 'CLIPLoss', 'TripletMarginLoss', 'NormalizedSoftmaxLoss', 'ArcFaceLoss',
    'CosFaceLoss', 'CoSENTLoss', 'CosineSimilarityLoss', 'MarginMSELoss', 'hard_negatives_contrastive', 'DATA_KINDS', 'LABELED', 'PAIRS', 'SCORED', 'TEXT_IMAGE',
    'MAX_LOGIT_SCALE', 'register_loss', 'loss_names', 'loss_class', 'losses_for', 'default_loss', 'build_loss',
    'required_model_options', 'in_batch_contrastive', 'cosine_matrix', 'rowwise_cosine', 'distance_matrix',
]
