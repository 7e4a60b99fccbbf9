"""Retrieval examples and the embedding map of a run report, from the embeddings its evaluations computed.

An evaluation of the run (before and after training) records what each side encoded: ``[(side, items,
embeddings), ...]`` (see :attr:`finetune.evaluation.Evaluation.recordings`). From two such recordings of the same
data this module finds the queries that improved most and that got worse (by the reciprocal rank of their first
relevant document), their top-k neighbours each way with the hits marked, and a 2-D PCA map of the embeddings.
Everything here is plain numbers and indices; :mod:`.items` turns items into what a page shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: queries whose ranks are compared (a sample of larger evaluations), and rows of the similarity matrix at once
MAX_QUERIES, CHUNK = 2000, 512
#: points on the embedding map, and coloured groups on it
MAX_POINTS, MAX_GROUPS = 1500, 10


@dataclass
class RetrievalView:
    """What an evaluation ranks: query and document items, their embeddings before and after, and for each query
    the document indices that are relevant. `same_items`: the queries are the documents (labeled data: each item
    queries the others, never itself)."""

    queries: list
    docs: list
    before: tuple[np.ndarray, np.ndarray]
    after: tuple[np.ndarray, np.ndarray]
    relevant: list[set[int]]
    same_items: bool
    groups: list | None = None


def _key(item: Any) -> Any:
    return item if isinstance(item, (str, int, float, tuple)) else id(item)


def retrieval_view(data, before: list, after: list) -> RetrievalView | None:
    """The :class:`RetrievalView` of eval `data` from two recordings (each ``[(side, items, embeddings), ...]``),
    or None when the data is not ranked (scored pairs) or a recording misses a side."""
    if 'spearman' in str(getattr(data.data_kind, 'best_metric', '')):
        return None
    one_sided = data.data_kind.sides == 1
    need = ('a',) if one_sided else ('a', 'b')
    got_b, got_a = {side: (items, emb) for side, items, emb in before}, {side: (items, emb) for side, items, emb
                                                                          in after}
    if any(side not in got_b or side not in got_a for side in need):
        return None
    if one_sided:
        items = got_a['a'][0]
        names = list(getattr(data, 'label_names', None) or [])
        groups = [names[g] if isinstance(g, int) and 0 <= g < len(names) else g for g in data.groups]
        if len(groups) != len(items):
            return None
        by_group: dict[Any, set[int]] = {}
        for i, g in enumerate(groups):
            by_group.setdefault(g, set()).add(i)
        relevant = [by_group[g] - {i} for i, g in enumerate(groups)]
        return RetrievalView(items, items, (got_b['a'][1], got_b['a'][1]), (got_a['a'][1], got_a['a'][1]),
                             relevant, True, groups)
    queries, docs = got_a['a'][0], got_a['b'][0]
    q_index = {_key(q): i for i, q in enumerate(queries)}
    d_index = {_key(d): i for i, d in enumerate(docs)}
    relevant = [set() for _ in queries]
    for q, d in zip(data.a, data.b):
        qi, di = q_index.get(_key(q)), d_index.get(_key(d))
        if qi is not None and di is not None:
            relevant[qi].add(di)
    return RetrievalView(queries, docs, (got_b['a'][1], got_b['b'][1]), (got_a['a'][1], got_a['b'][1]), relevant,
                         False)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _ranks(q: np.ndarray, d: np.ndarray, rows: np.ndarray, view: RetrievalView, k: int):
    """For the query indices `rows`: the rank (from 1) of the first relevant document, and the top-`k` documents
    with their cosine similarity."""
    q, d = _unit(q), _unit(d)
    first = np.empty(len(rows), dtype=np.int64)
    top = np.empty((len(rows), k), dtype=np.int64)
    top_sim = np.empty((len(rows), k), dtype=np.float32)
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        sims = q[chunk] @ d.T
        if view.same_items:
            sims[np.arange(len(chunk)), chunk] = -np.inf
        best = np.full(len(chunk), -np.inf, dtype=np.float32)
        for j, i in enumerate(chunk):
            hits = list(view.relevant[i])
            if hits:
                best[j] = sims[j, hits].max()
        first[start:start + len(chunk)] = (sims > best[:, None]).sum(axis=1) + 1
        order = np.argsort(-sims, axis=1)[:, :k]
        top[start:start + len(chunk)] = order
        top_sim[start:start + len(chunk)] = np.take_along_axis(sims, order, axis=1)
    return first, top, top_sim


def examples(view: RetrievalView, count: int = 4, k: int = 5, seed: int = 0) -> dict[str, Any]:
    """Up to `count` queries that improved most and `count` that got worse (reciprocal rank of the first relevant
    document, after minus before), each with its top-`k` documents before and after (index, similarity, hit).
    Also the share of queries that improved, stayed and got worse over the queries compared."""
    n = len(view.queries)
    rows = np.array([i for i in range(n) if view.relevant[i]], dtype=np.int64)
    if len(rows) > MAX_QUERIES:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_QUERIES, replace=False))
    k = min(k, len(view.docs) - (1 if view.same_items else 0))
    if len(rows) == 0 or k < 1:
        return {'improved': [], 'worse': [], 'compared': 0}
    before = _ranks(*view.before, rows, view, k)
    after = _ranks(*view.after, rows, view, k)
    delta = 1.0 / after[0] - 1.0 / before[0]

    def entry(j: int) -> dict[str, Any]:
        i = int(rows[j])
        side = {}
        for name, (first, top, sims) in (('before', before), ('after', after)):
            side[name] = [{'doc': int(t), 'score': float(s), 'hit': int(t) in view.relevant[i]}
                          for t, s in zip(top[j], sims[j])]
            side[f'rank_{name}'] = int(first[j])
        return {'query': i, 'change': float(delta[j]), **side}

    order = np.argsort(-delta, kind='stable')
    improved = [entry(int(j)) for j in order[:count] if delta[j] > 0]
    worse = [entry(int(j)) for j in order[::-1][:count] if delta[j] < 0]
    return {'improved': improved, 'worse': worse, 'compared': int(len(rows)),
            'better_share': float((delta > 0).mean()), 'worse_share': float((delta < 0).mean())}


def _pca2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    out = x @ vt[:2].T
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out


def embedding_map(view: RetrievalView, seed: int = 0) -> dict[str, Any]:
    """A 2-D PCA map of the eval embeddings before and after, each fitted on its own embeddings: for labeled data
    the items coloured by their label (the `MAX_GROUPS` largest labels; the others grey); for pairs a few queries
    (circles) with their relevant documents (triangles) in one colour each, other documents grey. Points that
    share a colour should lie together. Returns JSON-able lists: x/y before and after, colour index (-1 grey),
    marker ('o' query or item, '^' document) and the legend."""
    rng = np.random.default_rng(seed)
    if view.same_items:
        counts: dict[Any, int] = {}
        for g in view.groups:
            counts[g] = counts.get(g, 0) + 1
        shown = sorted(counts, key=lambda g: -counts[g])[:MAX_GROUPS]
        colour_of = {g: c for c, g in enumerate(shown)}
        idx = np.arange(len(view.queries))
        if len(idx) > MAX_POINTS:
            idx = np.sort(rng.choice(idx, MAX_POINTS, replace=False))
        colours = [colour_of.get(view.groups[i], -1) for i in idx]
        pick = (lambda emb: emb[0][idx])
        markers, legend = ['o'] * len(idx), [str(g)[:40] for g in shown]
    else:
        with_hits = [i for i in range(len(view.queries)) if view.relevant[i]]
        chosen = sorted(rng.choice(with_hits, min(MAX_GROUPS, len(with_hits)), replace=False).tolist()) \
            if with_hits else []
        colour_doc = {d: c for c, q in enumerate(chosen) for d in view.relevant[q]}
        others = [d for d in range(len(view.docs)) if d not in colour_doc]
        room = max(0, MAX_POINTS - len(chosen) - len(colour_doc))
        if len(others) > room:
            others = sorted(rng.choice(others, room, replace=False).tolist())
        docs = list(colour_doc) + others
        colours = list(range(len(chosen))) + [colour_doc.get(d, -1) for d in docs]
        markers = ['o'] * len(chosen) + ['^'] * len(docs)

        def pick(emb):
            return np.concatenate([emb[0][chosen], emb[1][docs]]) if chosen else emb[1][docs]
        legend = [str(view.queries[q])[:40] for q in chosen]
    out = {'colours': colours, 'markers': markers, 'legend': legend}
    for name, emb in (('before', view.before), ('after', view.after)):
        xy = _pca2(_unit(pick(emb)))
        out[name] = [[round(float(a), 4), round(float(b), 4)] for a, b in xy]
    return out
