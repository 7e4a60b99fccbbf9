"""Exact top-k by cosine similarity in bounded memory: scores in blocks, the best k of each block kept, merged.

Documents are ranked highest score first, ties going to the lower document index, whatever the block sizes.
:func:`top_k` is the public form; :mod:`.metrics` ranks its query chunks with the same block functions.
"""
from __future__ import annotations

import numpy as np
import torch

from ..functional import l2_normalize
from .metric_inputs import Embeddings, _as_embeddings, _check_positive_int, _check_same_width, _pick_device

#: the most scores one block (query chunk x document chunk) holds when ``doc_chunk_size`` is None
BLOCK_ELEMENTS = 1 << 25


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
