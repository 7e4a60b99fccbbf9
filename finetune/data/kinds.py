"""Data kinds as objects: one class per kind, one registry of kinds.

A kind knows everything the rest of the library asks about data of its shape: the row it hands to the
DataLoader, how rows become a batch, the batch sampler, how a batch becomes the loss's inputs, how the data
is evaluated, its default loss and its one-line description. Training and evaluation only ever call these
methods, so a new kind (say, query / positive / negative / teacher margin for distillation) is one new
subclass passed to :func:`register_kind`, and nothing else changes.

Built-in kinds (Jina Finetuner's layouts):

* ``labeled``: ``item, label``; items of one label are positives of each other;
* ``pairs``: ``query, doc``; rows sharing a query share a group;
* ``scored``: ``a, b, score`` with the score in [0, 1];
* ``text-image``: a text beside an image; pairs across two modalities, each side embedded by its tower;
* ``margin-triplets``: ``query, positive, negative, margin`` (what :func:`finetune.synthesize` makes), the margin
  a teacher's score of the positive minus its score of the negative.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..errors import InputError
from .kind_registry import KINDS_BY_NAME as _KINDS
from .kind_registry import kind_names, lookup_kind  # noqa: F401  (kind_names: re-exported, read it from here)
from .split import rows_by_group, rows_within_classes
from .training_data import TrainingData, group_ids

#: embed(side, batch_part, logits=False): the side's model applied to one part of a batch ('a' or 'b')
Embed = Callable[..., Any]


def unique_items(items: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """Distinct items (first occurrence order) and, for each input, the index of its distinct item."""
    index: dict[Any, int] = {}
    distinct: list[Any] = []
    where = []
    for item in items:
        key = item if isinstance(item, (str, int, float, tuple)) else id(item)
        if key not in index:
            index[key] = len(distinct)
            distinct.append(item)
        where.append(index[key])
    return distinct, where


def _key(item: Any) -> Any:
    return item if isinstance(item, (str, int, float)) else id(item)


class DataKind:
    """Base class of a data kind; subclasses set the class attributes and override what differs.

    The defaults describe two-sided rows ``(a, b, group)`` whose sides are embedded separately and compared
    in-batch (pairs); :class:`LabeledKind` and :class:`ScoredKind` override them.
    """

    #: the kind's name, as users pass it to ``data_kind=`` and losses list it in ``data_kinds``
    name: str = ''
    #: what one row holds, for messages
    columns: tuple[str, ...] = ()
    #: the loss ``fit`` uses when none is named (a family may name another, see the plugin contract)
    default_loss: str = ''
    #: how many sides of a row a model embeds (1: items; 2: a and b)
    sides: int = 2
    #: the metrics shown in the one-line before / after summary, when present
    summary_metrics: tuple[str, ...] = ('ndcg@10', 'mrr@10', 'hit@1')
    #: the metric model selection maximizes by default ('{k}': the largest of the ks evaluated)
    best_metric: str = 'ndcg@{k}'

    # -------------------------------------------------------------- rows and batches
    def read_rows(self, rows: Sequence[Sequence[Any]], header: Sequence[str] | None, source: str,
                  lines: list[int] | None) -> TrainingData | None:
        """`rows` read as data of this kind, for a kind with a layout of its own (``data_kind=`` names it);
        None for the built-in layouts, which the loader detects itself. Raises InputError."""
        return None

    def row(self, data: TrainingData, i: int) -> tuple:
        """Row `i` as the DataLoader sees it."""
        return data.a[i], data.b[i], data.groups[i]

    def collate(self, rows: Sequence[tuple], preprocess_a: Callable, preprocess_b: Callable | None) -> dict:
        """Rows -> a batch of model inputs (runs in DataLoader workers)."""
        a, b, groups = zip(*rows)
        return {'a': preprocess_a(list(a)), 'b': preprocess_b(list(b)),
                'groups': torch.tensor(groups, dtype=torch.long)}

    def batch_size_of(self, batch: dict) -> int:
        """How many rows `batch` holds."""
        first = batch.get('groups', batch.get('scores'))
        return int(first.shape[0]) if first is not None else 0

    def batch_sampler(self, data: TrainingData, batch_size: int, seed: int, items_per_class: int):
        """The batch sampler of `data`: here, batches that never hold a query or a document twice, so that
        no in-batch negative is in fact a positive."""
        from ..samplers import NoDuplicatesBatchSampler
        keys = [(('a', _key(x)), ('b', _key(y))) for x, y in zip(data.a, data.b)]
        return NoDuplicatesBatchSampler(keys, batch_size, seed=seed)

    # -------------------------------------------------------------- loss
    #: the model inputs of a batch that :meth:`loss_inputs` embeds without logits, as (side, batch key); training
    #: embeds those of one backbone together (:meth:`finetune.backbone.Backbone.join_batches`)
    embedded: tuple[tuple[str, str], ...] = (('a', 'a'), ('b', 'b'))

    def loss_inputs(self, embed: Embed, batch: dict, loss: Any, logit_scale: Any = None):
        """The :class:`~finetune.losses.LossInputs` of `batch`; `embed(side, x, logits=False)` embeds a side."""
        from ..losses.inputs import LossInputs
        return LossInputs(anchors=embed('a', batch['a']), positives=embed('b', batch['b']),
                          labels=batch.get('groups'), scores=batch.get('scores'), logit_scale=logit_scale)

    # -------------------------------------------------------------- evaluation
    def check_measurable(self, data: TrainingData) -> None:
        """InputError for evaluation data on which every ranking is perfect, so every metric would be 1.0."""
        if len(unique_items(data.b)[0]) < 2:
            raise InputError(f'{data.source}: evaluation data with one distinct document: every query finds it '
                             f'first, so the metrics are 1.0 whatever the model. Give at least 2 documents.')

    def evaluate(self, side_a, side_b, data: TrainingData, batch_size: int, ks: Sequence[int], search=None) -> dict:
        """Each distinct query ranks the distinct documents; its paired documents are relevant. `search`: a
        compact-code search (:mod:`finetune.evaluation.compact`) in place of the float ranking."""
        from ..evaluation.metrics import retrieval_metrics
        queries, query_of = unique_items(data.a)
        docs, doc_of = unique_items(data.b)
        relevant: list[set[int]] = [set() for _ in queries]
        for q, d in zip(query_of, doc_of):
            relevant[q].add(d)
        q_emb = side_a.encode(queries, batch_size=batch_size)
        d_emb = side_b.encode(docs, batch_size=batch_size)
        return retrieval_metrics(q_emb, d_emb, relevant, ks=ks, search=search)

    def validation_rows(self, data: TrainingData, share: float, seed: int) -> list[int]:
        """The rows of `data` to hold out as validation data (``fit(validation_split=share)``): about `share` of
        them, a query's rows together (see :mod:`finetune.data.split`)."""
        return rows_by_group(data.groups, len(data), share, seed)

    # -------------------------------------------------------------- description
    def describe(self, data: TrainingData) -> str:
        """One line: what `data` is, as detected."""
        mods = '/'.join(data.modalities)
        return (f'{data.source}: {len(data):,} {self.name} rows ({mods}), {len(set(data.groups)):,} distinct '
                f'queries')

    def __repr__(self) -> str:
        return f'<data kind {self.name!r}>'


def pairs_within(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) of items with the same label: consecutive members of each label, disjoint."""
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    n = labels.numel()
    starts = torch.ones(n, dtype=torch.bool, device=labels.device)
    starts[1:] = sorted_labels[1:] != sorted_labels[:-1]
    group_start = torch.cummax(torch.where(starts, torch.arange(n, device=labels.device), 0), dim=0).values
    rank = torch.arange(n, device=labels.device) - group_start
    first = (rank % 2 == 0)
    first[-1] = False
    first &= torch.cat([sorted_labels[1:] == sorted_labels[:-1], sorted_labels.new_zeros(1, dtype=torch.bool)])
    i = order[first.nonzero().squeeze(1)]
    j = order[first.nonzero().squeeze(1) + 1]
    return i, j


class LabeledKind(DataKind):
    """``(item, label)`` rows: items of one label are positives of each other."""

    name = 'labeled'
    columns = ('item', 'label')
    default_loss = 'TripletMarginLoss'
    best_metric = 'map@{k}'
    sides = 1
    summary_metrics = ('ndcg@10', 'mrr@10', 'hit@1')

    def row(self, data, i):
        return data.a[i], data.groups[i]

    def collate(self, rows, preprocess_a, preprocess_b):
        items, groups = zip(*rows)
        return {'a': preprocess_a(list(items)), 'groups': torch.tensor(groups, dtype=torch.long)}

    def batch_sampler(self, data, batch_size, seed, items_per_class):
        """Class-balanced batches: several items of each class, so every item has a positive."""
        from ..samplers import ClassBalancedBatchSampler
        return ClassBalancedBatchSampler(data.groups, batch_size, items_per_class=items_per_class, seed=seed)

    embedded = (('a', 'a'),)

    def loss_inputs(self, embed, batch, loss, logit_scale=None):
        """Embeddings and labels; a classifier loss also gets the head's logits, and an in-batch contrastive
        loss (which takes anchor / positive rows) gets items of one class paired up."""
        from ..losses.inputs import LossInputs
        labels = batch['groups']
        needs_logits = getattr(loss, 'needs_classifier_head', False)
        out = embed('a', batch['a'], logits=needs_logits)
        embeddings, logits = out if needs_logits else (out, None)
        if getattr(loss, 'takes_pairs', False):
            i, j = pairs_within(labels)
            return LossInputs(anchors=embeddings[i], positives=embeddings[j], labels=labels[i],
                              logit_scale=logit_scale)
        return LossInputs(embeddings=embeddings, labels=labels, logits=logits, logit_scale=logit_scale)

    def check_measurable(self, data):
        if len(data) == 1:  # one row reads as (item, label) as well as a (query, doc) pair: say what either needs
            raise InputError(f'{data.source}: evaluation data of a single row ({repr(data.a[0])[:80]}, '
                             f'{repr(data.label_names[0])[:80]}): every ranking is perfect, so the metrics would be '
                             f'1.0 whatever the model. (query, doc) pairs need at least 2 documents, (item, label) '
                             f'rows at least 2 classes.')
        if len(set(data.groups)) < 2:
            label = data.label_names[0]
            pairs = f' Read as (query, doc) pairs, it has one document ({label!r}); pairs need at least 2 ' \
                'documents.' if isinstance(label, str) else ''
            raise InputError(f'{data.source}: evaluation data of one class ({label!r}): every item is relevant to '
                             f'every other, so precision and nDCG are 1.0 whatever the model. Give items of at least 2 '
                             f'classes.{pairs}')

    def evaluate(self, side_a, side_b, data, batch_size, ks, search=None):
        """Each item queries all the others (itself excluded); items of its label are relevant."""
        from ..evaluation.metrics import labeled_retrieval_metrics
        return labeled_retrieval_metrics(side_a.encode(data.a, batch_size=batch_size), data.groups, ks=ks,
                                         search=search)

    def validation_rows(self, data, share, seed):
        """`share` of each class's items, where that is at least 2 items (see :mod:`finetune.data.split`)."""
        return rows_within_classes(data.groups, share, seed)

    def describe(self, data):
        mods = '/'.join(data.modalities)
        return f'{data.source}: {len(data):,} labeled {mods} items in {len(set(data.groups)):,} classes'


class PairsKind(DataKind):
    """``(query, doc)`` rows of one modality: rows sharing a query share a group."""

    name = 'pairs'
    columns = ('query', 'doc')
    default_loss = 'InfoNCE'


class TextImageKind(DataKind):
    """A text beside an image: pairs across two modalities, the text first."""

    name = 'text-image'
    columns = ('text', 'image')
    default_loss = 'CLIPLoss'


class ScoredKind(DataKind):
    """``(a, b, score)`` rows, the score a similarity in [0, 1]."""

    name = 'scored'
    columns = ('a', 'b', 'score')
    default_loss = 'CoSENTLoss'
    summary_metrics = ('spearman',)
    best_metric = 'spearman'

    def row(self, data, i):
        return data.a[i], data.b[i], data.scores[i]

    def collate(self, rows, preprocess_a, preprocess_b):
        a, b, scores = zip(*rows)
        return {'a': preprocess_a(list(a)), 'b': preprocess_b(list(b)),
                'scores': torch.tensor(scores, dtype=torch.float32)}

    def batch_sampler(self, data, batch_size, seed, items_per_class):
        """Plain shuffled batches: a scored pair says how similar its sides are, in-batch pairs say nothing."""
        from ..samplers import ShuffledBatchSampler
        return ShuffledBatchSampler(len(data), batch_size, seed)

    def check_measurable(self, data):
        if len(set(data.scores)) < 2:
            raise InputError(f'{data.source}: every pair has the score {data.scores[0]}; a correlation with one '
                             f'value is undefined. Give pairs of different scores.')

    def evaluate(self, side_a, side_b, data, batch_size, ks):
        """Spearman (average ranks for ties) and Pearson correlation of the pairs' cosine with their score."""
        from ..evaluation.metrics import scored_metrics
        a = side_a.encode(data.a, batch_size=batch_size)
        b = side_b.encode(data.b, batch_size=batch_size)
        return scored_metrics(a, b, data.scores)

    def describe(self, data):
        mods = '/'.join(data.modalities)
        return (f'{data.source}: {len(data):,} scored {mods} pairs (score {min(data.scores):.2f}..'
                f'{max(data.scores):.2f})')


class MarginTripletsKind(DataKind):
    """``(query, positive, negative, margin)`` rows: a hard negative per row and the teacher's margin (its score of
    the positive minus its score of the negative). Rows sharing a query share a group. Trains with
    ``MarginMSELoss`` by default, or with ``InfoNCE`` using the negatives as hard negatives."""

    name = 'margin-triplets'
    columns = ('query', 'positive', 'negative', 'margin')
    default_loss = 'MarginMSELoss'

    def read_rows(self, rows, header, source, lines):
        """Rows of 4 cells in the order of :attr:`columns`, or, with a `header`, cells picked by column name
        (other columns, such as the teacher's scores, are ignored)."""
        names = [str(h).strip().lower() for h in header] if header else list(self.columns)
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise InputError(f'{source}: {self.name} data needs the columns {", ".join(self.columns)}; missing '
                             f'{", ".join(missing)} (columns: {", ".join(names)}).')
        at = [names.index(c) for c in self.columns]
        queries, positives, negatives, margins = [], [], [], []
        for i, row in enumerate(rows):
            where = f'{source}, line {lines[i]}' if lines else f'{source}, row {i}'
            if len(row) != len(names):
                raise InputError(f'{where}: {len(row)} columns, expected {len(names)} ({", ".join(names)}).')
            query, positive, negative, margin = (row[j] for j in at)
            for column, value in (('query', query), ('positive', positive), ('negative', negative)):
                if not isinstance(value, str) or not value.strip():
                    raise InputError(f'{where}: {column} {value!r} is not a non-empty text.')
            queries.append(query)
            positives.append(positive)
            negatives.append(negative)
            margins.append(_margin(margin, where))
        groups, distinct = group_ids(queries)
        return TrainingData(self.name, queries, positives, groups, margins, distinct, source, lines,
                            {'negative': negatives})

    def row(self, data, i):
        return data.a[i], data.b[i], data.extra['negative'][i], data.scores[i], data.groups[i]

    def collate(self, rows, preprocess_a, preprocess_b):
        a, b, c, margins, groups = zip(*rows)
        return {'a': preprocess_a(list(a)), 'b': preprocess_b(list(b)), 'c': preprocess_b(list(c)),
                'scores': torch.tensor(margins, dtype=torch.float32), 'groups': torch.tensor(groups, dtype=torch.long)}

    def batch_sampler(self, data, batch_size, seed, items_per_class):
        """Batches in which no query and no document (positive or negative) appears twice, so that no in-batch
        candidate of InfoNCE is a copy of an anchor's positive."""
        from ..samplers import NoDuplicatesBatchSampler
        keys = [(('a', _key(q)), ('b', _key(p)), ('b', _key(n)))
                for q, p, n in zip(data.a, data.b, data.extra['negative'])]
        return NoDuplicatesBatchSampler(keys, batch_size, seed=seed)

    embedded = (('a', 'a'), ('b', 'b'), ('b', 'c'))

    def loss_inputs(self, embed, batch, loss, logit_scale=None):
        from ..losses.inputs import LossInputs
        return LossInputs(anchors=embed('a', batch['a']), positives=embed('b', batch['b']),
                          negatives=embed('b', batch['c']), scores=batch['scores'], labels=batch['groups'],
                          logit_scale=logit_scale)

    def _documents(self, data):
        return unique_items(list(data.b) + list(data.extra['negative']))

    def check_measurable(self, data):
        if len(self._documents(data)[0]) < 2:
            raise InputError(f'{data.source}: evaluation data with one distinct document: the metrics would be 1.0 '
                             f'whatever the model.')

    def evaluate(self, side_a, side_b, data, batch_size, ks, search=None):
        """Each distinct query ranks every distinct positive and negative; its positive is relevant."""
        from ..evaluation.metrics import retrieval_metrics
        queries, query_of = unique_items(data.a)
        docs, doc_of = self._documents(data)
        relevant: list[set[int]] = [set() for _ in queries]
        for q, d in zip(query_of, doc_of[:len(data.b)]):
            relevant[q].add(d)
        return retrieval_metrics(side_a.encode(queries, batch_size=batch_size),
                                 side_b.encode(docs, batch_size=batch_size), relevant, ks=ks, search=search)

    def describe(self, data):
        margins = data.scores
        return (f'{data.source}: {len(data):,} margin triplets (query, positive, hard negative) of '
                f'{len(set(data.groups)):,} queries, teacher margins {min(margins):.3f}..{max(margins):.3f}')


def _margin(value: Any, where: str) -> float:
    import math
    try:
        margin = float(value)
    except (TypeError, ValueError):
        margin = math.nan
    if isinstance(value, bool) or not math.isfinite(margin):
        raise InputError(f'{where}: margin {value!r} is not a finite number (the teacher\'s score of the positive '
                         f'minus its score of the negative).')
    return margin


# ---------------------------------------------------------------- the registry (its dict: .kind_registry)
def register_kind(kind: DataKind) -> DataKind:
    """Make `kind` (an instance of a :class:`DataKind` subclass) known by its name; returns it.

    Raises InputError for a kind without a name, default loss or columns, or a name taken by another kind."""
    if not isinstance(kind, DataKind) or not kind.name or not kind.default_loss or not kind.columns:
        raise InputError(f'register_kind: {kind!r} must be a DataKind instance with a name, columns and a '
                         f'default loss.')
    if kind.name in _KINDS and type(_KINDS[kind.name]) is not type(kind):
        raise InputError(f'register_kind: a data kind named {kind.name!r} is already registered '
                         f'({type(_KINDS[kind.name]).__name__}).')
    _KINDS[kind.name] = kind
    return kind


def get_kind(name: str | DataKind) -> DataKind:
    """The registered kind called `name` (a kind passes through); InputError with the closest names."""
    if isinstance(name, DataKind):
        return name
    return lookup_kind(name)


for _kind in (LabeledKind(), PairsKind(), ScoredKind(), TextImageKind(), MarginTripletsKind()):
    register_kind(_kind)
