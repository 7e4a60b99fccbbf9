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

from typing import Any, Hashable, Iterator, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..functional import l2_normalize
from .metric_inputs import (Embeddings, _as_embeddings, _as_key_list, _check_ks, _check_positive_int,
                            _check_same_width, _codes, _pick_device)
from .ranking import BLOCK_ELEMENTS, _merge, _scores, _top_block, top_k  # noqa: F401 - top_k re-exported
from .relevance import _CodeRelevance, _Exclusion, _ListedRelevance

#: the per-query metrics reported for every k in ``ks``, in the order they appear in the result
AT_K_METRICS: tuple[str, ...] = ('precision', 'recall', 'f1', 'hit', 'ndcg')
#: the metrics reported once, at K = max(ks)
AT_MAX_K_METRICS: tuple[str, ...] = ('mrr', 'map')
#: the keys of a result that count queries rather than measure them
COUNT_KEYS: tuple[str, ...] = ('num_queries', 'num_skipped')

DEFAULT_KS = (1, 5, 10)


# ---------------------------------------------------------------- public API

def retrieval_metrics(queries: Embeddings, docs: Embeddings, relevant: Sequence[Any],
                      ks: Sequence[int] | int = DEFAULT_KS, exclude: Sequence[Any] | None = None,
                      chunk_size: int = 1024, device: str | torch.device | None = None, *,
                      doc_chunk_size: int | None = None, search: Any = None) -> dict[str, float]:
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
    is float64, else float32. `search` (a :class:`~finetune.evaluation.compact.CompactSearch`) ranks on int8 or
    binary codes instead, its best candidates rescored by the float queries when it says so.

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
                     _pick_device(device, queries, docs), search)


def labeled_retrieval_metrics(embeddings: Embeddings, labels: Sequence[Hashable] | np.ndarray,
                              ks: Sequence[int] | int = DEFAULT_KS, chunk_size: int = 1024, *,
                              doc_chunk_size: int | None = None,
                              device: str | torch.device | None = None, search: Any = None) -> dict[str, float]:
    """Retrieval metrics of a labeled set: each item queries all the others, itself excluded.

    The documents relevant to item i are the other items with the same label (`labels`: one
    hashable per item, a list, tuple, numpy array or 1-D tensor). An item whose label occurs once
    has no relevant document and is skipped (counted in ``'num_skipped'``).

    Returns the dict of :func:`retrieval_metrics` (`search`: as there). Raises InputError for bad embeddings,
    labels of the wrong length or shape, unhashable labels, bad ks or chunk sizes, when no label occurs
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
                     _pick_device(device, embeddings, embeddings), search)


def pair_retrieval_metrics(query_embeddings: Embeddings, doc_embeddings: Embeddings,
                           query_ids: Sequence[Hashable] | np.ndarray,
                           doc_ids: Sequence[Hashable] | np.ndarray,
                           ks: Sequence[int] | int = DEFAULT_KS, chunk_size: int = 1024, *,
                           doc_chunk_size: int | None = None,
                           device: str | torch.device | None = None, search: Any = None) -> dict[str, float]:
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
                     doc_chunk_size, _pick_device(device, queries, docs), search)


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


# ---------------------------------------------------------------- ranking, a chunk of queries at a time
# (_scores and BLOCK_ELEMENTS are looked up here, in this module, where the tests swap them)

def _ranked(queries: torch.Tensor, docs: torch.Tensor, rows: np.ndarray, k: int, exclusion: _Exclusion,
            chunk_size: int, doc_chunk_size: int | None, device: torch.device, search: Any = None
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (query ids, top-k document indices, valid) per chunk of the queries `rows`.

    ``valid`` is False where a slot holds an excluded document (a query with fewer than k
    candidates). At most ``chunk_size x doc_chunk`` scores exist at once. With `search` (a
    :class:`~finetune.evaluation.compact.CompactSearch`) documents are ranked by their codes, and the best
    candidates rescored by the float queries when it says so.
    """
    dtype = torch.float64 if torch.float64 in (queries.dtype, docs.dtype) else torch.float32
    num_docs = docs.shape[0]
    chunk = min(chunk_size, len(rows))
    doc_chunk = doc_chunk_size or max(1, BLOCK_ELEMENTS // chunk)
    doc_chunk = min(doc_chunk, num_docs)
    floats, wanted = queries, k
    if search is None:
        docs = l2_normalize(docs.to(device=device, dtype=dtype), dim=1)
    else:  # the codes' dot products rank as the code search does
        queries, docs = search.prepare(queries, docs, device)
        dtype, k = docs.dtype, search.candidates(k, num_docs)
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
        if search is not None:
            values, indices = search.rescored(floats[torch.from_numpy(ids).to(floats.device)].to(device), values,
                                              indices, wanted)
        yield ids, indices.cpu().numpy(), torch.isfinite(values).cpu().numpy()


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
              device: torch.device, search: Any = None) -> dict[str, float]:
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
                                   device, search):
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
