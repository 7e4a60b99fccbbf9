"""Retrieval metrics: hand-computed examples, a brute-force reference, chunking, bounded memory, errors."""
from __future__ import annotations

import math
import re
import tracemalloc

import numpy as np
import pytest
import torch
from rich.console import Console

import finetune.evaluation.metrics as evaluation
from finetune.errors import InputError
from finetune.evaluation import (format_metrics_table, labeled_retrieval_metrics, pair_retrieval_metrics,
                                 retrieval_metrics)


def _at(*degrees: float) -> np.ndarray:
    """Unit vectors in the plane at the given angles."""
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def _log2(x: float) -> float:
    return math.log2(x)


def _mean(values) -> float:
    return sum(values) / len(values)


# ---------------------------------------------------------------- a hand-placed example

# Six documents on the unit circle and three queries whose rankings follow from the angles alone.
DOCS = _at(0, 30, 60, 90, 135, 180)
QUERIES = _at(0, 100, 200, 45)
# q0 at 0 deg:   cosines 1, .87, .5, 0, -.71, -1            -> ranking d0 d1 d2 d3 d4 d5
# q1 at 100 deg: angles to the docs 100 70 40 10 35 80      -> ranking d3 d4 d2 d1 d5 d0
# q2 at 200 deg: angles 160 170 140 110 65 20               -> ranking d5 d4 d3 d2 d0 d1
RANKINGS = [[0, 1, 2, 3, 4, 5], [3, 4, 2, 1, 5, 0], [5, 4, 3, 2, 0, 1]]
# q3 has no relevant document and must be skipped
RELEVANT = [{1, 3}, [3], {0, 1, 2}, set()]


def test_the_hand_placed_rankings_are_what_the_comments_say():
    scores = QUERIES[:3] @ DOCS.T
    assert np.argsort(-scores, axis=1).tolist() == RANKINGS


def test_every_metric_on_a_hand_computed_example():
    result = retrieval_metrics(QUERIES, DOCS, RELEVANT, ks=(1, 2, 4))
    # relevant ranks (1-based): q0 -> 2, 4 (of R=2); q1 -> 1 (R=1); q2 -> 4, 5, 6 (R=3)
    # hits within the top k:   k=1: 0 1 0   k=2: 1 1 0   k=4: 2 1 1
    expected = {
        'precision@1': _mean([0, 1, 0]),
        'precision@2': _mean([1 / 2, 1 / 2, 0]),
        'precision@4': _mean([2 / 4, 1 / 4, 1 / 4]),
        'recall@1': _mean([0, 1, 0]),
        'recall@2': _mean([1 / 2, 1, 0]),
        'recall@4': _mean([2 / 2, 1, 1 / 3]),
        # f1 = 2PR / (P + R), per query:
        'f1@1': _mean([0, 1, 0]),
        'f1@2': _mean([2 * .5 * .5 / (.5 + .5), 2 * .5 * 1 / (.5 + 1), 0]),
        'f1@4': _mean([2 * .5 * 1 / (.5 + 1), 2 * .25 * 1 / (.25 + 1), 2 * .25 * (1 / 3) / (.25 + 1 / 3)]),
        'hit@1': _mean([0, 1, 0]),
        'hit@2': _mean([1, 1, 0]),
        'hit@4': _mean([1, 1, 1]),
        # DCG = sum over relevant ranks r of 1 / log2(r + 1); the ideal puts all R relevant first
        'ndcg@1': _mean([0, 1, 0]),
        'ndcg@2': _mean([(1 / _log2(3)) / (1 + 1 / _log2(3)), 1, 0]),
        'ndcg@4': _mean([(1 / _log2(3) + 1 / _log2(5)) / (1 + 1 / _log2(3)),
                         1,
                         (1 / _log2(5)) / (1 + 1 / _log2(3) + 1 / _log2(4))]),
        # first relevant rank within the top 4: 2, 1, 4
        'mrr@4': _mean([1 / 2, 1, 1 / 4]),
        # AP@4 = sum of precision at each relevant rank <= 4, over min(R, 4)
        'map@4': _mean([(1 / 2 + 2 / 4) / 2, 1 / 1, (1 / 4) / 3]),
    }
    assert result['num_queries'] == 3 and result['num_skipped'] == 1
    assert isinstance(result['num_queries'], int) and isinstance(result['num_skipped'], int)
    assert set(result) == set(expected) | {'num_queries', 'num_skipped'}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-12), key
    assert all(isinstance(result[key], float) for key in expected)


def test_keys_follow_ks_and_max_k():
    result = retrieval_metrics(QUERIES, DOCS, RELEVANT, ks=[5, 1])
    assert list(result) == ['precision@1', 'precision@5', 'recall@1', 'recall@5', 'f1@1', 'f1@5', 'hit@1',
                            'hit@5', 'ndcg@1', 'ndcg@5', 'mrr@5', 'map@5', 'num_queries', 'num_skipped']
    assert set(retrieval_metrics(QUERIES, DOCS, RELEVANT)) >= {'precision@10', 'mrr@10', 'map@10', 'ndcg@5'}


def test_graded_ndcg():
    # q0 ranks d0 d1 d2 d3 d4 d5; grades: d1 = 3, d3 = 1, d5 = 2, and d0 = 0 (listed but not relevant)
    relevant = [{1: 3, 3: 1, 5: 2, 0: 0}]
    result = retrieval_metrics(QUERIES[:1], DOCS, relevant, ks=(1, 2, 4, 6))
    ideal = [3, 2, 1]                                   # the gains sorted, largest first
    idcg = lambda k: sum(g / _log2(r + 2) for r, g in enumerate(ideal[:k]))  # noqa: E731
    gains = [0, 3, 0, 1, 0, 2]                          # gain at each rank of the ranking
    dcg = lambda k: sum(g / _log2(r + 2) for r, g in enumerate(gains[:k]))  # noqa: E731
    assert result['ndcg@1'] == 0.0
    assert result['ndcg@2'] == pytest.approx((3 / _log2(3)) / (3 + 2 / _log2(3)), abs=1e-12)
    assert result['ndcg@4'] == pytest.approx(dcg(4) / idcg(4), abs=1e-12)
    assert result['ndcg@6'] == pytest.approx((3 / _log2(3) + 1 / _log2(5) + 2 / _log2(7))
                                             / (3 + 2 / _log2(3) + 1 / _log2(4)), abs=1e-12)
    # the other metrics see the graded set as binary: relevant = grade > 0 (d1, d3, d5)
    assert result['precision@1'] == 0.0                 # d0 has grade 0
    assert result['recall@4'] == pytest.approx(2 / 3)
    assert result['mrr@6'] == pytest.approx(1 / 2)
    assert result['map@6'] == pytest.approx((1 / 2 + 2 / 4 + 3 / 6) / 3)
    # the same set without grades gives binary nDCG
    binary = retrieval_metrics(QUERIES[:1], DOCS, [{1, 3, 5}], ks=(4,))
    assert binary['ndcg@4'] == pytest.approx((1 / _log2(3) + 1 / _log2(5)) / (1 + 1 / _log2(3) + 1 / _log2(4)))


def test_exclusion_drops_documents_from_the_ranking():
    # q0 ranks d0 d1 d2 d3 d4 d5; relevant d1, d3
    plain = retrieval_metrics(QUERIES[:1], DOCS, [{1, 3}], ks=(1, 4))
    assert plain['precision@1'] == 0.0 and plain['mrr@4'] == pytest.approx(1 / 2)
    # without d0: d1 d2 d3 d4 d5 -> relevant at ranks 1 and 3
    result = retrieval_metrics(QUERIES[:1], DOCS, [{1, 3}], ks=(1, 4), exclude=[[0]])
    assert result['precision@1'] == 1.0
    assert result['mrr@4'] == 1.0
    assert result['map@4'] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert result['precision@4'] == pytest.approx(2 / 4)
    # a single index works as well as a list
    assert retrieval_metrics(QUERIES[:1], DOCS, [{1, 3}], ks=(1, 4), exclude=[0]) == result
    # an excluded relevant document no longer counts as relevant: without d1, only d3 at rank 3 remains
    result = retrieval_metrics(QUERIES[:1], DOCS, [{1, 3}], ks=(4,), exclude=[{1}])
    assert result['recall@4'] == 1.0
    assert result['mrr@4'] == pytest.approx(1 / 3)
    # excluding every relevant document leaves the query without one: skipped
    with pytest.raises(InputError, match='none of the 1 queries'):
        retrieval_metrics(QUERIES[:1], DOCS, [{1, 3}], exclude=[{1, 3}])
    result = retrieval_metrics(QUERIES[:2], DOCS, [{1, 3}, {3}], ks=(1,), exclude=[{1, 3}, None])
    assert (result['num_queries'], result['num_skipped']) == (1, 1)


def test_k_larger_than_the_candidates_is_clipped():
    # M = 6 < k = 10: precision@10 counts 6 ranks
    result = retrieval_metrics(QUERIES[:1], DOCS, [{1, 3}], ks=(10,))
    assert result['precision@10'] == pytest.approx(2 / 6)
    assert result['recall@10'] == 1.0 and result['hit@10'] == 1.0
    assert result['mrr@10'] == pytest.approx(1 / 2)
    # 3 of the 6 documents excluded: candidates d1 d3 d5, the relevant d1 d3 first
    result = retrieval_metrics(QUERIES[:1], DOCS, [{1, 3}], ks=(1, 4), exclude=[{0, 2, 4}])
    assert result['precision@4'] == pytest.approx(2 / 3)
    assert result['precision@1'] == 1.0 and result['ndcg@4'] == pytest.approx(1.0)
    assert result['map@4'] == pytest.approx(1.0)


@pytest.mark.parametrize('chunk_size, doc_chunk_size', [(1, None), (2, 1), (3, 2), (1024, 4), (7, 5)])
def test_ties_go_to_the_lower_document_index(chunk_size, doc_chunk_size):
    # exact ties: the query (1, 0) scores 1 against d2, d5 and exactly 0 against d0, d1, d3, d4
    docs = np.array([[0, 1], [0, -1], [1, 0], [0, 2], [0, -3], [4, 0]], dtype=np.float32)
    queries = np.array([[1, 0], [1, 0], [2, 0]], dtype=np.float32)
    # ranking: d2 d5 d0 d1 d3 d4; relevant d0 -> rank 3; relevant d4 -> rank 6; relevant d5 -> rank 2
    result = retrieval_metrics(queries, docs, [{0}, {4}, {5}], ks=(1, 2, 3, 5), chunk_size=chunk_size,
                               doc_chunk_size=doc_chunk_size)
    assert result['hit@2'] == pytest.approx(1 / 3)
    assert result['hit@3'] == pytest.approx(2 / 3)
    assert result['hit@5'] == pytest.approx(2 / 3)     # d4 is last, not among the first 5
    assert result['mrr@5'] == pytest.approx((1 / 3 + 0 + 1 / 2) / 3)


def test_torch_and_numpy_inputs_agree():
    from_numpy = retrieval_metrics(QUERIES, DOCS, RELEVANT, ks=(1, 2, 4))
    from_torch = retrieval_metrics(torch.from_numpy(QUERIES), torch.from_numpy(DOCS).float(), RELEVANT,
                                   ks=(1, 2, 4), device='cpu')
    assert from_torch == pytest.approx(from_numpy)
    # relevance as numpy ints and arrays, scaled embeddings (cosine ignores norms), a tensor needing grad
    relevant = [np.array([1, 3]), np.int64(3), (0, 1, 2), None]
    scaled = torch.from_numpy(DOCS * np.array([[1.], [2.], [.5], [3.], [7.], [.1]])).requires_grad_()
    assert retrieval_metrics(QUERIES * 5, scaled, relevant, ks=(1, 2, 4)) == pytest.approx(from_numpy)


# ---------------------------------------------------------------- labeled and pair data

def test_labeled_perfect_clusters():
    rng = np.random.default_rng(0)
    centers = np.eye(3) * 10
    embeddings = np.concatenate([centers[c] + rng.normal(scale=.1, size=(4, 3)) for c in range(3)])
    labels = ['a'] * 4 + ['b'] * 4 + ['c'] * 4
    result = labeled_retrieval_metrics(embeddings, labels, ks=(1, 3, 6))
    assert (result['num_queries'], result['num_skipped']) == (12, 0)
    for key in ('hit@1', 'precision@1', 'precision@3', 'recall@3', 'ndcg@3', 'ndcg@6', 'mrr@6', 'map@6'):
        assert result[key] == pytest.approx(1.0), key
    # each item has 3 others of its label: precision@6 = 3 / 6
    assert result['precision@6'] == pytest.approx(.5)
    # a label seen once is skipped; labels may be a numpy array or a tensor
    with_singleton = labeled_retrieval_metrics(np.concatenate([embeddings, [[1., 1., 1.]]]),
                                               np.array(labels + ['lonely']), ks=(1, 3, 6))
    assert (with_singleton['num_queries'], with_singleton['num_skipped']) == (12, 1)
    assert with_singleton['map@6'] == pytest.approx(1.0)
    codes = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    assert labeled_retrieval_metrics(torch.from_numpy(embeddings), codes, ks=(1, 3, 6)) == pytest.approx(result)


def test_labeled_shuffled_known_values():
    # items at 0, 10, 90 and 100 degrees labelled A B A B; each item's nearest other has the other label
    embeddings = _at(0, 10, 90, 100)
    labels = ['A', 'B', 'A', 'B']
    # item0: others by angle 10 (B) 90 (A) 100 (B) -> its A at rank 2
    # item1: 10 (A) 80 (A) 90 (B)                  -> its B at rank 3
    # item2: 10 (B) 80 (B) 90 (A)                  -> its A at rank 3
    # item3: 10 (A) 90 (B) 100 (A)                 -> its B at rank 2
    result = labeled_retrieval_metrics(embeddings, labels, ks=(1, 2, 3))
    assert result['hit@1'] == 0.0
    assert result['hit@2'] == pytest.approx(.5)
    assert result['hit@3'] == 1.0
    assert result['mrr@3'] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    assert result['map@3'] == pytest.approx(result['mrr@3'])  # one relevant item each
    assert result['precision@3'] == pytest.approx(1 / 3)
    assert result['ndcg@3'] == pytest.approx((1 / _log2(3) + 1 / _log2(4) + 1 / _log2(4) + 1 / _log2(3)) / 4)
    assert result['num_queries'] == 4
    # k = 10 > the 3 other items: clipped to 3, and the item itself (same label) never fills a slot
    wide = labeled_retrieval_metrics(embeddings, labels, ks=(10,))
    assert wide['precision@10'] == pytest.approx(1 / 3)
    assert wide['mrr@10'] == pytest.approx(result['mrr@3'])
    assert wide['map@10'] == pytest.approx(result['map@3'])
    assert wide['ndcg@10'] == pytest.approx(result['ndcg@3'])


def test_labeled_matches_retrieval_metrics_with_self_excluded():
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(60, 5))
    labels = rng.integers(0, 8, size=60)
    relevant = [{j for j in range(60) if labels[j] == labels[i] and j != i} for i in range(60)]
    direct = retrieval_metrics(embeddings, embeddings, relevant, ks=(1, 5, 10), exclude=list(range(60)))
    assert labeled_retrieval_metrics(embeddings, labels, ks=(1, 5, 10)) == pytest.approx(direct, abs=1e-12)


def test_pair_retrieval_metrics():
    # q0 ranks d0 d1 d2 d3 d4 d5, q1 ranks d3 d4 d2 d1 d5 d0, q2 ranks d5 d4 d3 d2 d0 d1
    doc_ids = ['x', 'y', 'x', 'y', 'z', 'w']
    query_ids = ['y', 'x', 'w', 'nobody']
    result = pair_retrieval_metrics(QUERIES, DOCS, query_ids, doc_ids, ks=(1, 2))
    # q0 (y): d1 d3 at ranks 2, 4; q1 (x): d0 d2 at ranks 6, 3; q2 (w): d5 at rank 1; q3 skipped
    assert (result['num_queries'], result['num_skipped']) == (3, 1)
    assert result['hit@1'] == pytest.approx(1 / 3)
    assert result['hit@2'] == pytest.approx(2 / 3)
    assert result['mrr@2'] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert result['recall@2'] == pytest.approx((1 / 2 + 0 + 1) / 3)
    relevant = [{1, 3}, {0, 2}, {5}, set()]
    assert result == pytest.approx(retrieval_metrics(QUERIES, DOCS, relevant, ks=(1, 2)))


# ---------------------------------------------------------------- a brute-force reference

def _reference(queries, docs, relevant, ks, exclude=None):
    """Every metric from a full sort of all scores, one query at a time (definitions in the module)."""
    queries = np.asarray(queries, dtype=np.float64)
    docs = np.asarray(docs, dtype=np.float64)
    docs = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    # cosine = this / the query's norm, which is the same for all of a query's documents; leaving it
    # out keeps the lattice problem's ties exact
    scores = queries @ docs.T
    k_max = max(ks)
    names = [f'{m}@{k}' for m in ('precision', 'recall', 'f1', 'hit', 'ndcg') for k in ks]
    names += [f'mrr@{k_max}', f'map@{k_max}']
    per_query = {name: [] for name in names}
    skipped = 0
    for q in range(len(queries)):
        dropped = set() if exclude is None or exclude[q] is None else set(np.atleast_1d(exclude[q]).tolist())
        grades = relevant[q] if isinstance(relevant[q], dict) else {d: 1.0 for d in relevant[q]}
        grades = {d: g for d, g in grades.items() if g > 0 and d not in dropped}
        if not grades:
            skipped += 1
            continue
        order = np.lexsort((np.arange(len(docs)), -scores[q]))       # score descending, then index
        ranking = [d for d in order.tolist() if d not in dropped]
        gains = [grades.get(d, 0.0) for d in ranking]
        ideal = sorted(grades.values(), reverse=True)
        num_relevant = len(grades)
        for k_asked in ks:
            k = min(k_asked, len(ranking))
            found = sum(g > 0 for g in gains[:k])
            precision, recall = found / k, found / num_relevant
            per_query[f'precision@{k_asked}'].append(precision)
            per_query[f'recall@{k_asked}'].append(recall)
            per_query[f'f1@{k_asked}'].append(0.0 if found == 0 else 2 * precision * recall / (precision + recall))
            per_query[f'hit@{k_asked}'].append(float(found > 0))
            dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
            per_query[f'ndcg@{k_asked}'].append(dcg / idcg)
        top = gains[:k_max]
        first = next((i for i, g in enumerate(top) if g > 0), None)
        per_query[f'mrr@{k_max}'].append(0.0 if first is None else 1 / (first + 1))
        hits, total = 0, 0.0
        for i, g in enumerate(top):
            if g > 0:
                hits += 1
                total += hits / (i + 1)
        per_query[f'map@{k_max}'].append(total / min(num_relevant, k_max))
    result = {name: float(np.mean(values)) for name, values in per_query.items()}
    result.update(num_queries=len(queries) - skipped, num_skipped=skipped)
    return result


def _random_problem(seed: int, num_queries: int = 257, num_docs: int = 1000, dim: int = 16):
    """Embeddings, then relevance: some of each query's nearest documents plus random ones, sets for
    some queries and graded dicts for others, a few queries with none, and exclusions."""
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(num_queries, dim))
    docs = rng.normal(size=(num_docs, dim))
    near = np.argsort(-(queries @ (docs / np.linalg.norm(docs, axis=1, keepdims=True)).T), axis=1)[:, :30]
    relevant, exclude = [], []
    for q in range(num_queries):
        chosen = set(rng.choice(near[q], size=rng.integers(0, 6), replace=False).tolist())
        chosen |= set(rng.choice(num_docs, size=rng.integers(0, 3), replace=False).tolist())
        relevant.append({d: float(rng.integers(0, 4)) for d in chosen} if q % 3 == 0 else chosen)
        exclude.append(None if q % 4 else rng.choice(near[q], size=2, replace=False))
    return queries, docs, relevant, exclude


def _lattice_problem(seed: int, num_queries: int = 257, num_docs: int = 1000, dim: int = 16):
    """Scores with many exact ties: documents of +-1 entries (all the same norm) and small integer
    queries, so that every score is a multiple of 1/4 in float32 as in float64."""
    rng = np.random.default_rng(seed)
    docs = rng.choice([-1.0, 1.0], size=(num_docs, dim)).astype(np.float32)
    docs[num_docs // 2:num_docs // 2 + 40] = docs[:40]          # duplicate documents
    queries = rng.integers(-2, 3, size=(num_queries, dim)).astype(np.float32)
    queries[queries.sum(axis=1) == 0, 0] += 1                   # (no zero query)
    relevant = [set(rng.choice(num_docs, size=rng.integers(0, 40), replace=False).tolist())
                for _ in range(num_queries)]
    exclude = [rng.choice(num_docs, size=3, replace=False) if q % 5 == 0 else None for q in range(num_queries)]
    return queries, docs, relevant, exclude


@pytest.mark.parametrize('problem', [_random_problem, _lattice_problem])
def test_agrees_with_a_brute_force_reference(problem):
    queries, docs, relevant, exclude = problem(seed=3)
    ks = (1, 3, 5, 10, 20)
    result = retrieval_metrics(queries, docs, relevant, ks=ks, exclude=exclude, chunk_size=50)
    expected = _reference(queries, docs, relevant, ks, exclude)
    assert result.keys() == expected.keys()
    assert 0 < result['num_skipped'] < result['num_queries']
    for key in expected:
        assert result[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
    assert 0.05 < result['hit@10'] < 1                  # a problem with something to measure


@pytest.mark.parametrize('problem', [_random_problem, _lattice_problem])
def test_results_do_not_depend_on_chunking(problem, monkeypatch):
    queries, docs, relevant, exclude = problem(seed=5)
    ks = (1, 5, 10)
    run = lambda **kw: retrieval_metrics(queries, docs, relevant, ks=ks, exclude=exclude, **kw)  # noqa: E731
    reference = run(chunk_size=10000)
    for chunk_size in (1, 7, 64):
        assert run(chunk_size=chunk_size) == reference, chunk_size
    # documents in chunks too, some smaller than k = 10, merged across chunks
    for chunk_size, doc_chunk_size in ((64, 3), (7, 100), (10000, 9), (1, 1000), (300, 333)):
        assert run(chunk_size=chunk_size, doc_chunk_size=doc_chunk_size) == reference, doc_chunk_size
    # automatic document chunking once a block would pass BLOCK_ELEMENTS
    sizes = []
    original = evaluation._scores
    monkeypatch.setattr(evaluation, '_scores', lambda q, d: sizes.append(q.shape[0] * d.shape[0]) or original(q, d))
    monkeypatch.setattr(evaluation, 'BLOCK_ELEMENTS', 5000)
    assert run(chunk_size=64) == reference
    assert max(sizes) <= 5000 and len(sizes) > 257 // 64 * (1000 // 78)


def _peak_rss_bytes() -> int | None:
    try:
        status = open('/proc/self/status').read()
    except OSError:
        return None
    found = re.search(r'VmHWM:\s+(\d+) kB', status)
    return int(found.group(1)) * 1024 if found else None


def _reset_peak_rss() -> int | None:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS; None where unsupported."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        status = open('/proc/self/status').read()
    except OSError:
        return None
    found = re.search(r'VmRSS:\s+(\d+) kB', status)
    return int(found.group(1)) * 1024 if found else None


def test_memory_stays_bounded(monkeypatch):
    count, dim, chunk_size = 20000, 8, 256
    full_matrix = count * count * 4                       # 1.6 GB of float32 scores
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(count, dim)).astype(np.float32)
    labels = np.arange(count) % 1000                      # 20 items per label
    blocks = []
    original = evaluation._scores
    monkeypatch.setattr(evaluation, '_scores', lambda q, d: blocks.append(tuple(q.shape[:1] + d.shape[:1]))
                        or original(q, d))
    labeled_retrieval_metrics(embeddings[:64], labels[:64] % 8)   # warm up torch's kernels
    blocks.clear()
    base = _reset_peak_rss()
    tracemalloc.start()
    try:
        result = labeled_retrieval_metrics(embeddings, labels, ks=(1, 5, 10), chunk_size=chunk_size)
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    peak = _peak_rss_bytes()
    assert (result['num_queries'], result['num_skipped']) == (count, 0)
    # every score block is one query chunk against the documents, never all queries at once
    assert len(blocks) == math.ceil(count / chunk_size)
    assert max(q * d for q, d in blocks) <= chunk_size * count
    assert traced_peak < full_matrix / 16                  # numpy's side: no (Q, M) array either
    if base is not None and peak is not None:             # the whole process, torch included (Linux)
        assert peak - base < full_matrix / 4


# ---------------------------------------------------------------- the table

def _render(table) -> str:
    console = Console(record=True, width=120)
    console.print(table)
    return console.export_text()


def test_format_metrics_table_before_and_after():
    before = {'hit@1': 0.5, 'mrr@10': 0.61234, 'num_queries': 40, 'num_skipped': 2}
    after = {'hit@1': 0.75, 'mrr@10': 0.6, 'num_queries': 40, 'num_skipped': 2}
    table = format_metrics_table(before, after, title='eval')
    assert [c.header for c in table.columns] == ['metric', 'before', 'after', 'change']
    assert table.row_count == 2
    text = _render(table)
    assert 'eval' in text
    assert re.search(r'hit@1\s+│\s+0\.5000\s+│\s+0\.7500\s+│\s+\+0\.2500', text)
    assert re.search(r'mrr@10\s+│\s+0\.6123\s+│\s+0\.6000\s+│\s+-0\.0123', text)
    assert 'N queries: 40' in text and '2 skipped' in text
    assert 'num_queries' not in text and 'num_skipped' not in text


def test_format_metrics_table_after_only():
    result = retrieval_metrics(QUERIES, DOCS, RELEVANT, ks=(1, 2, 4))
    table = format_metrics_table(None, result)
    assert [c.header for c in table.columns] == ['metric', 'after']
    assert table.row_count == len(result) - 2
    text = _render(table)
    assert 'retrieval metrics' in text and 'N queries: 3' in text
    assert f"{result['ndcg@4']:.4f}" in text
    with pytest.raises(InputError, match='after'):
        format_metrics_table(None, [0.5])
    with pytest.raises(InputError, match="before\\['hit@1'\\]"):
        format_metrics_table({'hit@1': 'high'}, result)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize('queries, docs, relevant, message', [
    (np.zeros((3, 4)), np.ones((6, 2)), [[0]] * 3, 'queries have width D=4 but docs have D=2'),
    (QUERIES, DOCS, [[0]] * 3, 'relevant has 3 entries but queries has 4 rows'),
    (QUERIES[0], DOCS, [[0]], r'2-D \(N, D\).*x\[None\]'),
    (QUERIES, DOCS[None], RELEVANT, r'docs: expected a 2-D .* shape \(1, 6, 2\)'),
    (np.zeros((0, 2)), DOCS, [], 'queries is empty'),
    (QUERIES, np.zeros((0, 2)), RELEVANT, 'docs is empty'),
    (QUERIES, DOCS, [{6}, set(), set(), set()], r'relevant\[0\]: document index 6 is out of range.*0\.\.5'),
    (QUERIES, DOCS, [{1.5}, set(), set(), set()], 'must be integers'),
    (QUERIES, DOCS, [{1: -1}, set(), set(), set()], r'relevant\[0\]\[1\]: a graded relevance must be'),
    (QUERIES, DOCS, [set()] * 4, 'none of the 4 queries has a relevant document'),
    (QUERIES, DOCS, 'abc', 'relevant: expected a list'),
    (np.array([['a', 'b']]), DOCS, [[0]], 'numeric'),
])
def test_input_errors(queries, docs, relevant, message):
    with pytest.raises(InputError, match=message):
        retrieval_metrics(queries, docs, relevant)


@pytest.mark.parametrize('argument', ['queries', 'docs'])
@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_nan_names_the_argument(argument, bad):
    queries, docs = QUERIES.copy(), DOCS.copy()
    (queries if argument == 'queries' else docs)[2, 1] = bad
    with pytest.raises(InputError, match=f'{argument} contains NaN or infinity: row 2') as error:
        retrieval_metrics(queries, docs, RELEVANT)
    assert ('NaN' if math.isnan(bad) else 'infinite') in str(error.value).split('row 2')[1]


@pytest.mark.parametrize('ks', [0, (1, 0), (-5,), (1.5,), 'abc', (), (True,), None])
def test_bad_ks(ks):
    with pytest.raises(InputError, match='ks'):
        retrieval_metrics(QUERIES, DOCS, RELEVANT, ks=ks)


def test_single_int_ks_and_numpy_ints():
    assert 'precision@3' in retrieval_metrics(QUERIES, DOCS, RELEVANT, ks=3)
    assert 'map@4' in retrieval_metrics(QUERIES, DOCS, RELEVANT, ks=np.array([1, 4]))


@pytest.mark.parametrize('kwargs, message', [
    ({'chunk_size': 0}, 'chunk_size: expected a positive integer'),
    ({'chunk_size': 2.0}, 'chunk_size'),
    ({'doc_chunk_size': -1}, 'doc_chunk_size: expected a positive integer or None'),
    ({'exclude': [0, 1]}, 'exclude has 2 entries but queries has 4 rows'),
    ({'exclude': [0, 1, 2, 9]}, r'exclude\[3\]: document index 9 is out of range'),
    ({'device': 'warp-drive'}, "device: expected a torch device"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(InputError, match=message):
        retrieval_metrics(QUERIES, DOCS, RELEVANT, **kwargs)


def test_labeled_and_pair_errors():
    embeddings = _at(0, 10, 90, 100)
    with pytest.raises(InputError, match='labels has 3 entries but embeddings has 4 rows'):
        labeled_retrieval_metrics(embeddings, ['a', 'b', 'a'])
    with pytest.raises(InputError, match='occurs only once'):
        labeled_retrieval_metrics(embeddings, [1, 2, 3, 4])
    with pytest.raises(InputError, match=r'labels\[0\] = \[1\] is not hashable'):
        labeled_retrieval_metrics(embeddings, [[1], [1], [2], [2]])
    with pytest.raises(InputError, match='1-D'):
        labeled_retrieval_metrics(embeddings, np.zeros((4, 2)))
    with pytest.raises(InputError, match='embeddings contains NaN'):
        labeled_retrieval_metrics(np.full((4, 2), np.nan), [1, 1, 2, 2])
    with pytest.raises(InputError, match='doc_ids has 2 entries but doc_embeddings has 6 rows'):
        pair_retrieval_metrics(QUERIES, DOCS, list('abcd'), ['a', 'b'])
    with pytest.raises(InputError, match='query_embeddings have width D=2 but doc_embeddings have D=3'):
        pair_retrieval_metrics(QUERIES, np.ones((6, 3)), list('abcd'), list('abcdef'))
    with pytest.raises(InputError, match='none of the 4 queries'):
        pair_retrieval_metrics(QUERIES, DOCS, list('abcd'), list('uvwxyz'))


# ---------------------------------------------------------------- scored pairs, one-label sets

def test_average_ranks_match_scipy_with_ties():
    scipy_stats = pytest.importorskip('scipy.stats')
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, 40).astype(float)
    np.testing.assert_array_equal(evaluation.average_ranks(values), scipy_stats.rankdata(values))


def test_scored_metrics_with_tied_scores_match_scipy_in_any_row_order():
    scipy_stats = pytest.importorskip('scipy.stats')
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
    scores = rng.choice([0.0, 0.25, 0.5, 1.0], 60)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    want = scipy_stats.spearmanr(cos, scores).statistic
    for seed in range(4):
        order = np.random.default_rng(seed).permutation(60)
        got = evaluation.scored_metrics(a[order], b[order], scores[order])
        assert got['spearman'] == pytest.approx(want, abs=1e-12)
        assert got['pearson'] == pytest.approx(scipy_stats.pearsonr(cos, scores).statistic, abs=1e-9)
    with pytest.raises(InputError, match='one row per pair'):
        evaluation.scored_metrics(a, b[:5], scores)


def test_a_labeled_set_of_one_label_is_refused():
    with pytest.raises(InputError, match='all 4 items share one label.*at least 2 labels'):
        labeled_retrieval_metrics(np.random.default_rng(0).normal(size=(4, 3)), ['x'] * 4)


def test_embeddings_of_tiny_norm_are_ranked_as_their_directions():
    queries = np.array([[1e-30, 0.0], [0.0, 3e-31]], dtype=np.float32)
    docs = np.array([[0.0, 2e-32], [5e-33, 0.0]], dtype=np.float32)
    metrics = evaluation.retrieval_metrics(queries, docs, [{1}, {0}], ks=(1,))
    assert metrics['hit@1'] == 1.0


def test_a_single_pair_is_told_that_pairs_need_two_documents():
    import finetune
    model = finetune.build_model('fake-text')
    with pytest.raises(InputError, match=r"eval_data: evaluation data of a single row \('what barks', 'a dog'\).*"
                                         r'\(query, doc\) pairs need at least 2 documents'):
        finetune.evaluate(model, [('what barks', 'a dog')])
    with pytest.raises(InputError, match=r"one class \('a dog'\).*as \(query, doc\) pairs, it has one document "
                                         r"\('a dog'\); pairs need at least 2 documents"):
        finetune.evaluate(model, [('what barks', 'a dog'), ('what woofs', 'a dog')])
    from finetune.data import load_data
    with pytest.raises(InputError, match='one distinct document.*Give at least 2 documents'):
        finetune.evaluate(model, load_data([('what barks', 'a dog')], 'eval_data', kind='pairs'))
