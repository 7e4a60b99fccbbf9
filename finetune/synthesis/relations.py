"""From one query's scored candidates to its training rows: the positive, the hard negatives, the margins."""
from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np

#: how negatives are chosen among the candidates left after the positive and its near-duplicates
NEGATIVE_CHOICES = ('hardest', 'random')


def _normalized(text: str) -> str:
    return re.sub(r'\s+', ' ', text).strip().casefold()


def query_rng(seed: int, query: str) -> np.random.Generator:
    """A generator of its own for each query, from the seed and the query's text: a query gets the same rows
    whatever the order, chunking or resumption of the run."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(query.encode('utf-8'))])


def relation_rows(query: str, candidates: Sequence[int], scores: np.ndarray, corpus: Sequence[str],
                  corpus_embeddings: np.ndarray, num_relations: int, duplicate_threshold: float, negatives: str,
                  seed: int, positive_aware: tuple[str, float] | None = None) -> list[dict]:
    """The training rows of `query`: the candidate the cross-encoder scores highest is the positive (ties: the
    relation miner's order); of the others, those that are near-duplicates of the positive are dropped (the same
    text up to case and spacing, or a relation-miner cosine with it of at least `duplicate_threshold`), and
    ``num_relations - 1`` of the rest are its negatives: the highest scored (``'hardest'``) or drawn at random
    (``'random'``, seeded per query). A candidate that is the query itself (up to case and spacing) is neither:
    it would teach nothing as a positive and contradict the query as a negative. With `positive_aware`
    (:func:`positive_aware_ceiling`), only candidates scored below the ceiling it sets from the positive's score
    can be negatives (NV-Retriever's positive-aware mining: the others are likely unlabeled positives). One row per
    negative; none when every candidate is a duplicate (or scored too close to the positive)."""
    query_text = _normalized(query)
    own = [i for i, d in enumerate(candidates) if _normalized(corpus[int(d)]) != query_text]
    if not own:
        return []
    candidates, scores = [candidates[i] for i in own], np.asarray(scores, dtype=np.float64)[own]
    order = np.argsort(-scores, kind='stable')
    best = int(candidates[order[0]])
    best_text = _normalized(corpus[best])
    similarity = corpus_embeddings[[int(candidates[i]) for i in order[1:]]] @ corpus_embeddings[best]
    kept = [i for i, cos in zip(order[1:], similarity)
            if cos < duplicate_threshold and _normalized(corpus[int(candidates[i])]) != best_text]
    if positive_aware is not None:
        ceiling = positive_aware_ceiling(float(scores[order[0]]), positive_aware)
        kept = [i for i in kept if scores[i] < ceiling]
    wanted = num_relations - 1
    if negatives == 'random' and len(kept) > wanted:
        picked = np.sort(query_rng(seed, query).choice(len(kept), size=wanted, replace=False))
        kept = [kept[i] for i in picked]
    kept = kept[:wanted]
    positive_score = float(scores[order[0]])
    return [{'query': query, 'positive': corpus[best], 'negative': corpus[int(candidates[i])],
             'margin': positive_score - float(scores[i]), 'positive_score': positive_score,
             'negative_score': float(scores[i]), 'negative_rank': rank, 'negatives': len(kept)}
            for rank, i in enumerate(kept, 1)]


def positive_aware_ceiling(positive_score: float, rule: tuple[str, float]) -> float:
    """The score a negative must stay below: ``('share', s)``: ``s * positive_score`` (for a positive score below
    0, a cross-encoder's logit, the positive minus ``1 - s`` of its magnitude, so that the ceiling stays below it);
    ``('margin', m)``: ``positive_score - m``."""
    how, value = rule
    if how == 'margin':
        return positive_score - value
    return positive_score - (1.0 - value) * abs(positive_score)
