"""Retrieval metrics for embeddings: precision, recall, F1, hit rate and nDCG at k, MRR and MAP.

Plain torch and numpy; nothing here knows about models. Hand it query and document embeddings and
which documents are relevant to which query; documents are ranked per query by cosine similarity,
highest first, ties going to the lower document index.

Memory stays bounded however many queries and documents there are: queries are scored in chunks of
``chunk_size`` against chunks of documents, and only the best ``max(ks)`` documents of each query
are kept (merged across document chunks), so no queries x documents matrix is ever built. One score
block holds at most ``chunk_size x doc_chunk_size`` numbers; by default about 33 million.

Definitions (per query, then averaged over the queries that have at least one relevant document).
A query's *candidates* are all documents except those excluded for it; ``k`` is clipped to their
number. With ``hits@k`` relevant documents among the first ``k`` and ``R`` relevant documents:

* ``precision@k`` = hits@k / k, ``recall@k`` = hits@k / R, ``f1@k`` = their harmonic mean
  (= 2 hits@k / (k + R)), ``hit@k`` = 1 when hits@k > 0;
* ``ndcg@k`` = DCG@k / ideal DCG@k with DCG = sum of gain_i / log2(i + 1) over ranks i = 1..k; the
  gain is 1 for a relevant document, or its graded relevance; the ideal ranking puts the largest
  gains first;
* ``mrr@K`` = 1 / rank of the first relevant document within the top K (0 if none), K = max(ks);
* ``map@K`` = sum over relevant ranks i <= K of precision@i, divided by min(R, K).
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Hashable, Iterator, Mapping, Sequence, Union

import numpy as np
import torch

from ..functional import l2_normalize
from ..errors import InputError

Embeddings = Union[torch.Tensor, np.ndarray]

#: the per-query metrics reported for every k in ``ks``, in the order they appear in the result
AT_K_METRICS: tuple[str, ...] = ('precision', 'recall', 'f1', 'hit', 'ndcg')
#: the metrics reported once, at K = max(ks)
AT_MAX_K_METRICS: tuple[str, ...] = ('mrr', 'map')
#: the keys of a result that count queries rather than measure them
COUNT_KEYS: tuple[str, ...] = ('num_queries', 'num_skipped')
#: the most scores one block (query chunk x document chunk) holds when ``doc_chunk_size`` is None
BLOCK_ELEMENTS = 1 << 25

DEFAULT_KS = (1, 5, 10)


# ---------------------------------------------------------------- public API

def retrieval_metrics(queries: Embeddings, docs: Embeddings, relevant: Sequence[Any],
                      ks: Sequence[int] | int = DEFAULT_KS, exclude: Sequence[Any] | None = None,
                      chunk_size: int = 1024, device: str | torch.device | None = None, *,
                      doc_chunk_size: int | None = None) -> dict[str, float]:
    """Rank `docs` for every query by cosine similarity and score the rankings against `relevant`.

    `queries` is (Q, D) and `docs` (M, D), torch tensors or numpy arrays (normalized here).
    ``relevant[q]`` names the documents relevant to query q: a set, list or array of document
    indices, a single index, None (none), or a dict ``{doc_index: relevance}`` of graded relevances
    (numbers >= 0; 0 means not relevant) which nDCG uses as gains. ``exclude[q]`` (optional; same
    forms, without grades) removes documents from query q's ranking, e.g. the query's own item;
    an excluded document is not counted as relevant either.

    Queries are scored `chunk_size` at a time against `doc_chunk_size` documents at a time (None:
    as many as keep one block under :data:`BLOCK_ELEMENTS` scores), on `device` (None: the device
    of whichever input is a tensor off the CPU, else the CPU). Scores are float64 when either input
    is float64, else float32.

    Returns ``{'precision@k', 'recall@k', 'f1@k', 'hit@k', 'ndcg@k'}`` for every k in `ks` (k larger
    than the number of documents is clipped), ``'mrr@K'`` and ``'map@K'`` for K = max(ks), each a
    float averaged over the queries with at least one relevant document, plus ``'num_queries'``
    (how many were averaged) and ``'num_skipped'`` (queries without a relevant document), ints.

    Raises InputError for embeddings that are not 2-D, empty, of different widths or hold NaN or
    infinity; for `relevant` / `exclude` of the wrong length or with indices outside [0, M); for ks
    or chunk sizes that are not positive integers; and when no query has a relevant document.
    """
    ks = _check_ks(ks)
    chunk_size = _check_positive_int('chunk_size', chunk_size)
    doc_chunk_size = _check_positive_int('doc_chunk_size', doc_chunk_size, allow_none=True)
    queries = _as_embeddings(queries, 'queries')
    docs = _as_embeddings(docs, 'docs')
    _check_same_width(queries, 'queries', docs, 'docs')
    num_queries, num_docs = queries.shape[0], docs.shape[0]
    exclusion = _Exclusion.from_lists(exclude, num_queries, num_docs)
    relevance = _ListedRelevance(relevant, num_queries, num_docs, exclusion)
    return _evaluate(queries, docs, relevance, exclusion, ks, chunk_size, doc_chunk_size,
                     _pick_device(device, queries, docs))


def labeled_retrieval_metrics(embeddings: Embeddings, labels: Sequence[Hashable] | np.ndarray,
                              ks: Sequence[int] | int = DEFAULT_KS, chunk_size: int = 1024, *,
                              doc_chunk_size: int | None = None,
                              device: str | torch.device | None = None) -> dict[str, float]:
    """Retrieval metrics of a labeled set: each item queries all the others, itself excluded.

    The documents relevant to item i are the other items with the same label (`labels`: one
    hashable per item, a list, tuple, numpy array or 1-D tensor). An item whose label occurs once
    has no relevant document and is skipped (counted in ``'num_skipped'``).

    Returns the dict of :func:`retrieval_metrics`. Raises InputError for bad embeddings, labels of
    the wrong length or shape, unhashable labels, bad ks or chunk sizes, when no label occurs
    twice, and when every item has the same label (every ranking would be perfect).
    """
    ks = _check_ks(ks)
    chunk_size = _check_positive_int('chunk_size', chunk_size)
    doc_chunk_size = _check_positive_int('doc_chunk_size', doc_chunk_size, allow_none=True)
    embeddings = _as_embeddings(embeddings, 'embeddings')
    count = embeddings.shape[0]
    codes = _codes({}, _as_key_list(labels, 'labels', count, 'embeddings'), 'labels', grow=True)
    exclusion = _Exclusion.self_only(count)
    relevance = _CodeRelevance(codes, codes, self_excluded=True)
    if relevance.num_relevant.max() == 0:
        raise InputError(f'labels: every one of the {count} labels occurs only once, so no item has '
                         f'another item of its label to find; label at least two items alike.')
    if count > 1 and len(np.unique(codes)) == 1:
        raise InputError(f'labels: all {count} items share one label, so every item is relevant to every '
                         f'other and every metric is 1.0 whatever the embeddings; give at least 2 labels.')
    return _evaluate(embeddings, embeddings, relevance, exclusion, ks, chunk_size, doc_chunk_size,
                     _pick_device(device, embeddings, embeddings))


def pair_retrieval_metrics(query_embeddings: Embeddings, doc_embeddings: Embeddings,
                           query_ids: Sequence[Hashable] | np.ndarray,
                           doc_ids: Sequence[Hashable] | np.ndarray,
                           ks: Sequence[int] | int = DEFAULT_KS, chunk_size: int = 1024, *,
                           doc_chunk_size: int | None = None,
                           device: str | torch.device | None = None) -> dict[str, float]:
    """Retrieval metrics of query -> document pairs grouped by key.

    Document j is relevant to query i when ``doc_ids[j] == query_ids[i]`` (any hashable keys). A
    query whose key no document has is skipped (counted in ``'num_skipped'``).

    Returns the dict of :func:`retrieval_metrics`. Raises InputError for bad embeddings, id lists
    whose lengths differ from the embeddings', unhashable ids, bad ks or chunk sizes, and when no
    query shares a key with any document.
    """
    ks = _check_ks(ks)
    chunk_size = _check_positive_int('chunk_size', chunk_size)
    doc_chunk_size = _check_positive_int('doc_chunk_size', doc_chunk_size, allow_none=True)
    queries = _as_embeddings(query_embeddings, 'query_embeddings')
    docs = _as_embeddings(doc_embeddings, 'doc_embeddings')
    _check_same_width(queries, 'query_embeddings', docs, 'doc_embeddings')
    table: dict[Hashable, int] = {}
    doc_codes = _codes(table, _as_key_list(doc_ids, 'doc_ids', docs.shape[0], 'doc_embeddings'),
                       'doc_ids', grow=True)
    query_codes = _codes(table, _as_key_list(query_ids, 'query_ids', queries.shape[0],
                                             'query_embeddings'), 'query_ids', grow=False)
    relevance = _CodeRelevance(query_codes, doc_codes, self_excluded=False)
    return _evaluate(queries, docs, relevance, _Exclusion.none(queries.shape[0]), ks, chunk_size,
                     doc_chunk_size, _pick_device(device, queries, docs))


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values`, tied values sharing the mean of their ranks (as ``scipy.stats.rankdata``)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind='stable')
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0  # ranks first+1 .. first+count, averaged
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, counts)
    return ranks


def scored_metrics(a: Embeddings, b: Embeddings, scores: Sequence[float]) -> dict[str, float]:
    """Spearman and Pearson correlation between the cosine similarity of each pair (``a[i]``, ``b[i]``) and
    ``scores[i]``; ties get average ranks, so the result does not depend on the order of the rows.

    Returns ``{'spearman', 'pearson', 'num_pairs'}``. Raises InputError for inputs of different lengths or
    widths, non-finite values, or fewer than 2 pairs."""
    a = _as_embeddings(a, 'a').double()
    b = _as_embeddings(b, 'b').double()
    _check_same_width(a, 'a', b, 'b')
    scores = np.asarray(scores, dtype=np.float64)
    if not (len(a) == len(b) == len(scores)):
        raise InputError(f'a, b and scores must have one row per pair, got {len(a)}, {len(b)} and {len(scores)}.')
    if len(scores) < 2 or not np.isfinite(scores).all():
        raise InputError(f'scores: expected at least 2 finite numbers, got {len(scores)} '
                         f'({int((~np.isfinite(scores)).sum())} not finite).')
    cos = (l2_normalize(a) * l2_normalize(b)).sum(dim=1).numpy()

    def corr(x: np.ndarray, y: np.ndarray) -> float:
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            return float('nan')  # a constant side: undefined
        return float(np.corrcoef(x, y)[0, 1])
    return {'spearman': corr(average_ranks(cos), average_ranks(scores)), 'pearson': corr(cos, scores),
            'num_pairs': len(scores)}


# ---------------------------------------------------------------- validation

def _check_positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
        raise InputError(f'{name}: expected a positive integer{" or None" if allow_none else ""}, '
                         f'got {value!r} ({type(value).__name__}).')
    return int(value)


def _check_ks(ks: Any) -> tuple[int, ...]:
    """`ks` as sorted distinct positive ints; a single int is one k. Raises InputError."""
    if isinstance(ks, Integral) and not isinstance(ks, bool):
        ks = (ks,)
    if isinstance(ks, (str, bytes)) or not hasattr(ks, '__iter__'):
        raise InputError(f'ks: expected a list of positive integers such as (1, 5, 10), got {ks!r}.')
    values = list(ks)
    if not values:
        raise InputError('ks is empty: expected at least one positive integer, e.g. (1, 5, 10).')
    for k in values:
        if isinstance(k, bool) or not isinstance(k, Integral) or k <= 0:
            raise InputError(f'ks: expected positive integers such as (1, 5, 10), got {k!r} '
                             f'({type(k).__name__}) in {values!r}.')
    return tuple(sorted({int(k) for k in values}))


def _as_embeddings(value: Any, name: str) -> torch.Tensor:
    """`value` as a 2-D, non-empty, finite tensor on its own device (numpy becomes a CPU tensor).

    Raises InputError naming `name` for anything else.
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as error:
            raise InputError(f'{name}: expected a (N, D) torch tensor or numpy array of embeddings, got '
                             f'{type(value).__name__} ({error}).') from None
        if array.dtype.kind not in 'biuf':
            raise InputError(f'{name}: expected a (N, D) numeric array of embeddings, got dtype '
                             f'{array.dtype} ({type(value).__name__}).')
        if array.dtype.kind in 'biu' or array.dtype == np.float16:
            array = array.astype(np.float32)
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # torch warns about tensors over read-only memory
            array = array.copy()
        tensor = torch.from_numpy(array)
    if tensor.is_complex():
        raise InputError(f'{name}: expected real-valued embeddings, got dtype {tensor.dtype}.')
    if tensor.ndim != 2:
        hint = ' For a single embedding, pass x[None] (shape (1, D)).' if tensor.ndim == 1 else ''
        raise InputError(f'{name}: expected a 2-D (N, D) array with one embedding per row, got shape '
                         f'{tuple(tensor.shape)}.{hint}')
    if tensor.shape[0] == 0:
        raise InputError(f'{name} is empty: expected at least one embedding (shape (N, D) with N >= 1), '
                         f'got shape {tuple(tensor.shape)}.')
    if tensor.shape[1] == 0:
        raise InputError(f'{name}: embeddings of width 0 (shape {tuple(tensor.shape)}); expected D >= 1.')
    if not tensor.is_floating_point():
        tensor = tensor.float()
    finite = torch.isfinite(tensor).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        what = 'NaN' if bool(torch.isnan(tensor[row]).any()) else 'an infinite value'
        bad = int((~finite).sum())
        raise InputError(f'{name} contains NaN or infinity: row {row} holds {what} ({bad} bad row'
                         f'{"s" if bad != 1 else ""} of {tensor.shape[0]}). Embeddings must be finite; '
                         f'check the model output or the data for those items.')
    return tensor


def _check_same_width(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise InputError(f'{a_name} have width D={a.shape[1]} but {b_name} have D={b.shape[1]}: both must '
                         f'be embeddings of the same space (shapes {tuple(a.shape)} and {tuple(b.shape)}).')


def _pick_device(device: Any, *tensors: torch.Tensor) -> torch.device:
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise InputError(f"device: expected a torch device such as 'cpu' or 'cuda:0', got {device!r} "
                             f'({error}).') from None
    for tensor in tensors:
        if tensor.device.type != 'cpu':
            return tensor.device
    return torch.device('cpu')


def _is_index(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _index_list(value: Any, what: str, num_docs: int) -> list[int]:
    """Document indices named by one element of `relevant` / `exclude` (int, iterable or None)."""
    if value is None:
        return []
    if _is_index(value):
        items = [value]
    elif isinstance(value, (str, bytes, Mapping)) or not hasattr(value, '__iter__'):
        raise InputError(f'{what}: expected document indices (a set, list or array of ints, or one int), '
                         f'got {value!r} ({type(value).__name__}).')
    else:
        items = list(value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else value)
    for item in items:
        _check_doc_index(item, what, num_docs)
    return [int(i) for i in items]


def _check_doc_index(item: Any, what: str, num_docs: int) -> None:
    if not _is_index(item):
        raise InputError(f'{what}: document indices must be integers, got {item!r} ({type(item).__name__}).')
    if not 0 <= item < num_docs:
        raise InputError(f'{what}: document index {item} is out of range; there are {num_docs} documents '
                         f'(valid indices 0..{num_docs - 1}).')


def _check_length(values: Any, name: str, expected: int, of: str) -> list:
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, '__len__'):
        raise InputError(f'{name}: expected a list with one entry per row of {of} ({expected}), got '
                         f'{type(values).__name__}.')
    if len(values) != expected:
        raise InputError(f'{name} has {len(values)} entries but {of} has {expected} rows: expected one entry '
                         f'per row.')
    return list(values)


def _as_key_list(values: Any, name: str, expected: int, of: str) -> list:
    """Labels or ids as a plain list of hashables, one per row of `of`. Raises InputError."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise InputError(f'{name}: expected one label per item (a 1-D sequence), got an array of shape '
                             f'{values.shape}.')
        values = values.tolist()
    return _check_length(values, name, expected, of)


def _codes(table: dict[Hashable, int], keys: list, name: str, grow: bool) -> np.ndarray:
    """Each key's integer code in `table` (new keys added when `grow`, else coded -1)."""
    codes = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        try:
            code = table.get(key)
        except TypeError:
            raise InputError(f'{name}[{i}] = {key!r} is not hashable; labels and ids must be hashable, such '
                             f'as ints or strings.') from None
        if code is None:
            if grow:
                code = table[key] = len(table)
            else:
                code = -1
        codes[i] = code
    return codes


# ---------------------------------------------------------------- relevance and exclusion

def _gather_ranges(ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For CSR row pointers: (positions of rows' entries, local row of each, rank within its row)."""
    starts = ptr[rows]
    counts = ptr[rows + 1] - starts
    total = int(counts.sum())
    first = np.cumsum(counts) - counts           # where each row's entries begin in the output
    within = np.arange(total, dtype=np.int64) - np.repeat(first, counts)
    positions = np.repeat(starts, counts) + within
    local = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
    return positions, local, within


class _Exclusion:
    """Documents dropped from each query's ranking, as CSR arrays (sorted, distinct per query)."""

    def __init__(self, ptr: np.ndarray, idx: np.ndarray):
        self.ptr, self.idx = ptr, idx
        self.counts = np.diff(ptr)

    @classmethod
    def none(cls, num_queries: int) -> '_Exclusion':
        return cls(np.zeros(num_queries + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @classmethod
    def self_only(cls, count: int) -> '_Exclusion':
        return cls(np.arange(count + 1, dtype=np.int64), np.arange(count, dtype=np.int64))

    @classmethod
    def from_lists(cls, exclude: Sequence[Any] | None, num_queries: int, num_docs: int) -> '_Exclusion':
        if exclude is None:
            return cls.none(num_queries)
        exclude = _check_length(exclude, 'exclude', num_queries, 'queries')
        sets = [sorted(set(_index_list(e, f'exclude[{q}]', num_docs))) for q, e in enumerate(exclude)]
        ptr = np.zeros(num_queries + 1, dtype=np.int64)
        ptr[1:] = np.cumsum([len(s) for s in sets])
        idx = np.fromiter((i for s in sets for i in s), dtype=np.int64, count=int(ptr[-1]))
        return cls(ptr, idx)

    def contains(self, q: int) -> set[int]:
        return set(self.idx[self.ptr[q]:self.ptr[q + 1]].tolist())

    def pairs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(local row, document index) of every excluded pair of the query chunk `rows`."""
        positions, local, _ = _gather_ranges(self.ptr, rows)
        return local, self.idx[positions]


class _ListedRelevance:
    """Relevance given per query (sets, lists or graded dicts), held as CSR arrays of positive gains."""

    def __init__(self, relevant: Sequence[Any], num_queries: int, num_docs: int, exclusion: _Exclusion):
        relevant = _check_length(relevant, 'relevant', num_queries, 'queries')
        self.num_docs = num_docs
        counts = np.zeros(num_queries, dtype=np.int64)
        docs: list[int] = []
        gains: list[float] = []
        for q, entry in enumerate(relevant):
            graded = self._graded(entry, f'relevant[{q}]', num_docs)
            excluded = exclusion.contains(q) if exclusion.counts[q] else ()
            kept = sorted((d, g) for d, g in graded.items() if g > 0 and d not in excluded)
            counts[q] = len(kept)
            docs += [d for d, _ in kept]
            gains += [g for _, g in kept]
        self.ptr = np.zeros(num_queries + 1, dtype=np.int64)
        self.ptr[1:] = np.cumsum(counts)
        self.idx = np.asarray(docs, dtype=np.int64)          # ascending within each query
        self.gain = np.asarray(gains, dtype=np.float64)
        self.num_relevant = counts
        owner = np.repeat(np.arange(num_queries), counts)
        self.gain_desc = self.gain[np.lexsort((-self.gain, owner))]   # largest first within each query

    @staticmethod
    def _graded(entry: Any, what: str, num_docs: int) -> dict[int, float]:
        if not isinstance(entry, Mapping):
            return {d: 1.0 for d in _index_list(entry, what, num_docs)}
        graded = {}
        for doc, grade in entry.items():
            _check_doc_index(doc, what, num_docs)
            if isinstance(grade, bool) or not isinstance(grade, Real) or not math.isfinite(grade) or grade < 0:
                raise InputError(f'{what}[{doc}]: a graded relevance must be a finite number >= 0 (0: not '
                                 f'relevant), got {grade!r}.')
            graded[int(doc)] = float(grade)
        return graded

    def gains(self, rows: np.ndarray, top: np.ndarray) -> np.ndarray:
        positions, local, _ = _gather_ranges(self.ptr, rows)
        keys = local * self.num_docs + self.idx[positions]     # sorted: rows ascend, docs ascend in a row
        wanted = np.arange(len(rows), dtype=np.int64)[:, None] * self.num_docs + top
        if not len(keys):
            return np.zeros(top.shape)
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        found = keys[at] == wanted
        return np.where(found, self.gain[positions][at], 0.0)

    def ideal(self, rows: np.ndarray, k: int) -> np.ndarray:
        positions, local, within = _gather_ranges(self.ptr, rows)
        keep = within < k
        out = np.zeros((len(rows), k))
        out[local[keep], within[keep]] = self.gain_desc[positions[keep]]
        return out


class _CodeRelevance:
    """Binary relevance by equal codes: document j is relevant to query i when their codes match."""

    def __init__(self, query_codes: np.ndarray, doc_codes: np.ndarray, self_excluded: bool):
        self.query_codes, self.doc_codes = query_codes, doc_codes
        per_code = np.bincount(doc_codes, minlength=int(max(doc_codes.max(), query_codes.max())) + 1)
        self.num_relevant = np.where(query_codes >= 0, per_code[np.maximum(query_codes, 0)], 0)
        if self_excluded:  # the query is its own document, with its own code, and it is left out
            self.num_relevant = self.num_relevant - 1

    def gains(self, rows: np.ndarray, top: np.ndarray) -> np.ndarray:
        return (self.doc_codes[top] == self.query_codes[rows][:, None]).astype(np.float64)

    def ideal(self, rows: np.ndarray, k: int) -> np.ndarray:
        return (np.arange(k)[None, :] < self.num_relevant[rows][:, None]).astype(np.float64)


# ---------------------------------------------------------------- ranking

def _scores(queries: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """Scores of `queries` (c, D) against normalized `docs` (m, D), one (c, m) block: each row is the
    cosine similarity times the query's norm, which ranks documents as the cosine does."""
    return queries @ docs.T


def _order(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by value descending, ties by index ascending."""
    indices, perm = indices.sort(dim=1)
    values = values.gather(1, perm)
    values, perm = values.sort(dim=1, descending=True, stable=True)
    return values, indices.gather(1, perm)


def _top_block(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (value, column) per row of `scores`, ordered, ties going to the lower column.

    torch.topk picks arbitrarily among values tied at the cut; rows where that happens are redone
    by taking everything above the cut and the lowest columns at it.
    """
    values, indices = torch.topk(scores, k, dim=1, largest=True, sorted=False)
    cut = values.min(dim=1, keepdim=True).values
    crowded = (scores >= cut).sum(dim=1) > k
    if bool(crowded.any()):
        rows = crowded.nonzero().squeeze(1)
        sub, sub_cut = scores[rows], cut[rows]
        above = sub > sub_cut
        tied = sub == sub_cut
        room = k - above.sum(dim=1, keepdim=True)
        keep = above | (tied & (tied.cumsum(dim=1) <= room))
        columns = keep.nonzero()[:, 1].view(-1, k)
        indices[rows] = columns
        values[rows] = sub.gather(1, columns)
    return _order(values, indices)


def _merge(best: tuple[torch.Tensor, torch.Tensor] | None, new: tuple[torch.Tensor, torch.Tensor],
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two ordered top lists; `best` holds only lower document indices than `new`."""
    if best is None:
        return new
    values = torch.cat([best[0], new[0]], dim=1)
    indices = torch.cat([best[1], new[1]], dim=1)
    values, perm = values.sort(dim=1, descending=True, stable=True)  # stable: earlier = lower index
    return values[:, :k], indices.gather(1, perm[:, :k])


def _ranked(queries: torch.Tensor, docs: torch.Tensor, rows: np.ndarray, k: int, exclusion: _Exclusion,
            chunk_size: int, doc_chunk_size: int | None, device: torch.device
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (query ids, top-k document indices, valid) per chunk of the queries `rows`.

    ``valid`` is False where a slot holds an excluded document (a query with fewer than k
    candidates). At most ``chunk_size x doc_chunk`` scores exist at once.
    """
    dtype = torch.float64 if torch.float64 in (queries.dtype, docs.dtype) else torch.float32
    num_docs = docs.shape[0]
    chunk = min(chunk_size, len(rows))
    doc_chunk = doc_chunk_size or max(1, BLOCK_ELEMENTS // chunk)
    doc_chunk = min(doc_chunk, num_docs)
    docs = l2_normalize(docs.to(device=device, dtype=dtype), dim=1)
    for start in range(0, len(rows), chunk):
        ids = rows[start:start + chunk]
        # only the documents are normalized: a query's norm scales all its scores alike and so
        # leaves its ranking as it is (and integer-valued queries keep exact ties exact)
        q = queries[torch.from_numpy(ids).to(queries.device)].to(device=device, dtype=dtype)
        local, excluded = exclusion.pairs(ids)
        local_t = torch.from_numpy(local).to(device)
        excluded_t = torch.from_numpy(excluded).to(device)
        best = None
        for d0 in range(0, num_docs, doc_chunk):
            d1 = min(num_docs, d0 + doc_chunk)
            block = _scores(q, docs[d0:d1])
            if len(local):
                inside = (excluded_t >= d0) & (excluded_t < d1)
                block[local_t[inside], excluded_t[inside] - d0] = float('-inf')
            values, indices = _top_block(block, min(k, d1 - d0))
            best = _merge(best, (values, indices + d0), k)
            del block
        values, indices = best
        yield ids, indices.cpu().numpy(), torch.isfinite(values).cpu().numpy()


def top_k(queries: Embeddings, docs: Embeddings, k: int, *, docs_normalized: bool = False,
          doc_chunk_size: int | None = None, device: str | torch.device | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """The `k` documents of highest cosine similarity for each query, exactly, in bounded memory.

    `queries` (Q, D) are scored against chunks of `doc_chunk_size` documents of `docs` (M, D) at a time (None: as
    many as keep one block under :data:`BLOCK_ELEMENTS` scores) and the best k kept per query, so no Q x M
    matrix is made. With `docs_normalized` the documents are used as they are (no normalized copy of a large
    corpus is made; they must have unit length). Returns ``(cosines, indices)``, each (Q, min(k, M)), best first,
    ties going to the lower document index. Raises InputError for bad embeddings or k."""
    k = _check_positive_int('k', k)
    doc_chunk_size = _check_positive_int('doc_chunk_size', doc_chunk_size, allow_none=True)
    queries = _as_embeddings(queries, 'queries')
    docs = _as_embeddings(docs, 'docs') if not docs_normalized else torch.as_tensor(docs)
    _check_same_width(queries, 'queries', docs, 'docs')
    device = _pick_device(device, queries, docs)
    k = min(k, docs.shape[0])
    dtype = torch.float64 if torch.float64 in (queries.dtype, docs.dtype) else torch.float32
    q = l2_normalize(queries.to(device=device, dtype=dtype), dim=1)
    if not docs_normalized:
        docs = l2_normalize(docs.to(dtype=dtype), dim=1)
    doc_chunk = min(doc_chunk_size or max(1, BLOCK_ELEMENTS // max(1, q.shape[0])), docs.shape[0])
    best = None
    for d0 in range(0, docs.shape[0], doc_chunk):
        block = _scores(q, docs[d0:d0 + doc_chunk].to(device=device, dtype=dtype))
        values, indices = _top_block(block, min(k, block.shape[1]))
        best = _merge(best, (values, indices + d0), k)
        del block
    return best[0].cpu().numpy(), best[1].cpu().numpy()


# ---------------------------------------------------------------- metrics

def _metric_names(ks: tuple[int, ...]) -> list[str]:
    names = [f'{metric}@{k}' for metric in AT_K_METRICS for k in ks]
    return names + [f'{metric}@{ks[-1]}' for metric in AT_MAX_K_METRICS]


def _chunk_metrics(gains: np.ndarray, ideal: np.ndarray, num_relevant: np.ndarray, candidates: np.ndarray,
                   ks: tuple[int, ...], k_max: int) -> list[np.ndarray]:
    """Per-query values of every metric (in :func:`_metric_names` order) for one chunk.

    `gains` / `ideal` are (c, k_max): the gain at each rank and the ideal gains, largest first;
    every query has num_relevant >= 1 and candidates >= num_relevant.
    """
    relevant = gains > 0
    hits = np.cumsum(relevant, axis=1)
    discount = 1.0 / np.log2(np.arange(2, k_max + 2))
    dcg = np.cumsum(gains * discount, axis=1)
    idcg = np.cumsum(ideal * discount, axis=1)
    rows = np.arange(len(gains))
    per_k: dict[str, list[np.ndarray]] = {metric: [] for metric in AT_K_METRICS}
    for k in ks:
        cut = np.minimum(k, candidates) - 1        # the last rank counted, 0-based; k clipped
        found = hits[rows, cut]
        per_k['precision'].append(found / (cut + 1))
        per_k['recall'].append(found / num_relevant)
        per_k['f1'].append(2.0 * found / (cut + 1 + num_relevant))
        per_k['hit'].append((found > 0).astype(np.float64))
        per_k['ndcg'].append(dcg[rows, cut] / idcg[rows, cut])
    first = np.argmax(relevant, axis=1)
    mrr = np.where(relevant.any(axis=1), 1.0 / (first + 1), 0.0)
    precision_at = hits / np.arange(1, k_max + 1)
    average_precision = (precision_at * relevant).sum(axis=1) / np.minimum(num_relevant, k_max)
    return [v for metric in AT_K_METRICS for v in per_k[metric]] + [mrr, average_precision]


def _evaluate(queries: torch.Tensor, docs: torch.Tensor, relevance: Any, exclusion: _Exclusion,
              ks: tuple[int, ...], chunk_size: int, doc_chunk_size: int | None,
              device: torch.device) -> dict[str, float]:
    """Rank, score and average; the per-query values are kept (Q x metrics) so that the averages do
    not depend on the chunk sizes."""
    num_queries, num_docs = queries.shape[0], docs.shape[0]
    evaluated = np.flatnonzero(relevance.num_relevant > 0)
    if not len(evaluated):
        raise InputError(f'none of the {num_queries} queries has a relevant document (after exclusions), so '
                         f'there is nothing to evaluate; check relevant / ids / labels.')
    k_max = min(ks[-1], num_docs)
    names = _metric_names(ks)
    values = np.empty((len(names), len(evaluated)))
    done = 0
    for ids, top, valid in _ranked(queries, docs, evaluated, k_max, exclusion, chunk_size, doc_chunk_size,
                                   device):
        gains = np.where(valid, relevance.gains(ids, top), 0.0)
        candidates = num_docs - exclusion.counts[ids]
        chunk = _chunk_metrics(gains, relevance.ideal(ids, k_max), relevance.num_relevant[ids], candidates,
                               ks, k_max)
        values[:, done:done + len(ids)] = np.stack(chunk)
        done += len(ids)
    result: dict[str, float] = {name: float(v) for name, v in zip(names, values.mean(axis=1))}
    result['num_queries'] = int(len(evaluated))
    result['num_skipped'] = int(num_queries - len(evaluated))
    return result
