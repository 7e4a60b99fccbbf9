"""Which documents are relevant to a query, and which are left out of its ranking, as CSR arrays.

:class:`_Exclusion` holds the documents dropped from each query's ranking; :class:`_ListedRelevance` (sets,
lists or graded dicts per query) and :class:`_CodeRelevance` (equal labels or ids) answer the two questions the
metrics ask of a chunk of queries: the gain of each ranked document, and the ideal gains, largest first.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError
from .metric_inputs import _check_doc_index, _check_length, _index_list


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
