"""Search on compact codes (:mod:`finetune.compact`), then optionally rescore the best candidates with float queries.

:class:`CompactSearch` is handed to the retrieval metrics (``search=``, see :mod:`.metrics`) in place of the float
cosine ranking:

1. queries and documents are coded at the search's precision (int8 / uint8 with the same ranges) and every
   document is scored by the codes alone: for binary / ubinary the Hamming distance (computed as the dot product of
   +-1 bit vectors, ``dim - 2 * hamming``: the same order, fewest differing bits first), for int8 / uint8 the dot
   product of the codes (uint8 codes centred on 0 first, so both rank alike);
2. with ``rescore=r`` the best ``r * K`` documents (K: the largest k measured) are scored again by the float query
   against what the index holds of each document (its +-1 bits, or its int8 levels mapped back into the
   dimension's range), and ranked by that score (as sentence-transformers rescores a quantized search).

Ties go to the lower document index, as in the float ranking.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any

import numpy as np
import torch

from ..compact import BINARY, SCALAR, Ranges, as_ranges, calibrate, check_precision, dequantize, quantize
from ..errors import InputError
from .ranking import _order

#: queries rescored at once (bounds the (queries, candidates, dim) block of document values)
RESCORE_CHUNK = 64


class CompactSearch:
    """Ranking on the codes of `precision` ('int8', 'uint8', 'binary' or 'ubinary'), the best ``rescore * K``
    rescored with the float queries when `rescore` is set. int8 / uint8 use `ranges` (None: the documents'
    own, computed when they are searched, and logged)."""

    def __init__(self, precision: str, rescore: int | None = None, ranges: Ranges | None = None):
        precision = check_precision(precision)
        if precision == 'float32':
            raise InputError("CompactSearch: precision 'float32' is the float ranking itself; give 'int8', 'uint8', "
                             "'binary' or 'ubinary'.")
        self.precision, self.rescore, self.ranges = precision, check_rescore(rescore), ranges
        self._doc_values: torch.Tensor | None = None

    def candidates(self, k: int, num_docs: int) -> int:
        """How many documents the code search keeps per query, to rank the best `k` of `num_docs`."""
        return min(num_docs, k * self.rescore) if self.rescore else k

    def prepare(self, queries: torch.Tensor, docs: torch.Tensor, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The code vectors of `queries` and `docs` ((n, dim) float tensors) whose dot products rank as the
        code search does; keeps the documents' values for :meth:`rescored`."""
        width = docs.shape[1]
        check_precision(self.precision, width)
        ranges = as_ranges(self.ranges, width, 'ranges') if self.ranges is not None else None
        if self.precision in SCALAR and ranges is None:
            ranges = calibrate(docs, 'documents')
            logging.getLogger('finetune').info(
                '%s search: ranges from the %d documents searched (none kept on the model, no calibration given)',
                self.precision, docs.shape[0])
        q_codes, d_codes = (quantize(x, self.precision, ranges) for x in (queries, docs))
        if self.precision in BINARY:  # +-1 per bit: dot product = width - 2 * Hamming distance
            q, d = (torch.from_numpy(dequantize(c, self.precision, width=width)) for c in (q_codes, d_codes))
            self._doc_values = d
        else:  # centred integer codes, exact in float64
            shift = 128 if self.precision == 'uint8' else 0
            q, d = (torch.from_numpy(c.astype(np.float64) - shift) for c in (q_codes, d_codes))
            self._doc_values = torch.from_numpy(dequantize(d_codes, self.precision, ranges))
        return q.to(device), d.to(device)

    def rescored(self, queries: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, k: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best `k` of each query's candidates (`indices`, code scores `values`, -inf for a slot holding an
        excluded document) by float `queries` (c, dim) against the documents' values, best first, ties to the lower
        index; without rescoring, the code ranking as it is."""
        if not self.rescore:
            return values[:, :k], indices[:, :k]
        docs = self._doc_values.to(indices.device)
        scores = torch.empty(values.shape, dtype=torch.float32, device=indices.device)
        for start in range(0, len(indices), RESCORE_CHUNK):
            rows = slice(start, start + RESCORE_CHUNK)
            scores[rows] = torch.einsum('cd,ckd->ck', queries[rows].float(), docs[indices[rows]])
        scores = torch.where(torch.isfinite(values), scores, torch.full_like(scores, float('-inf')))
        scores, indices = _order(scores, indices)
        return scores[:, :k], indices[:, :k]


def check_rescore(rescore: Any) -> int | None:
    """`rescore` as a positive int or None. Raises InputError."""
    if rescore is None:
        return None
    if isinstance(rescore, bool) or not isinstance(rescore, (int, np.integer)) or rescore < 1:
        raise InputError(f'rescore: expected a positive integer (the code search keeps rescore x the largest k '
                         f'and rescores them with float queries) or None, got {rescore!r}.')
    return int(rescore)


def search_for(model: Any, side: Any, data: Any, precision: Any, rescore: Any, calibration: Any,
               dim: int | None) -> CompactSearch | None:
    """The search :meth:`finetune.evaluation.Evaluation.run` hands to the data's kind: None for float32 (the float
    ranking), else a :class:`CompactSearch` for embeddings of `side` (cut to `dim`), with ranges from `calibration`,
    else those `model` keeps, else the documents'. Raises OptionError for a bad precision, InputError for rescore
    without a compact precision, a width binary codes cannot pack, or data whose kind has no search."""
    from ..compact import kept_ranges
    precision = check_precision(precision)
    rescore = check_rescore(rescore)
    if precision == 'float32':
        if rescore is not None or calibration is not None:
            raise InputError(f"{'rescore' if rescore is not None else 'calibration'}: applies to a search on compact "
                             f"codes; give precision='binary', 'ubinary', 'int8' or 'uint8' too.")
        return None
    if dim is not None:
        from ..dims import check_dim
        dim = check_dim(side, dim)
    width = dim or int(side.output_dim)
    check_precision(precision, width)
    kind = data.data_kind
    if 'search' not in inspect.signature(kind.evaluate).parameters:
        raise InputError(f"precision={precision!r}: {data.source} is {kind.name} data, measured without a search "
                         f'(by each pair\'s similarity); compact precisions apply to retrieval data (pairs, labeled '
                         f'items, text-image, margin triplets).')
    ranges = None
    if precision in SCALAR:
        ranges = as_ranges(calibration, width) if calibration is not None else kept_ranges(model, width)
    return CompactSearch(precision, rescore, ranges)


def searched(search: CompactSearch | None) -> dict[str, Any]:
    """The keyword a data kind's ``evaluate`` takes `search` by: none for the float ranking (every kind takes that)."""
    return {} if search is None else {'search': search}


def describe_search(precision: str, rescore: int | None, k: int) -> str:
    """A few words naming a search whose largest k is `k`, for a table's title: 'binary codes, best 40 rescored'
    (rescored by the float queries)."""
    return f'{precision} codes, ' + (f'best {rescore * k} rescored' if rescore else 'no rescoring')
