"""One model, many sizes: embeddings cut to their leading dimensions (Matryoshka), for encoding and evaluation.

A model trained with ``loss_options={'matryoshka_dims': [...]}`` records those sizes (``model.trained_dims``,
kept in its artifact); :func:`finetune.encode` and :func:`finetune.evaluate` take ``dim=`` and cut every
embedding to its first ``dim`` dimensions, L2-normalized again. Any size up to the model's works; one the model
was not trained at warns once (its neighbours may be poor).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from .errors import InputError

def trained_dims(model: Any) -> tuple[int, ...] | None:
    """The sizes `model` was trained at with Matryoshka (largest first; a fit or a loaded artifact sets
    ``model.trained_dims``), or None."""
    dims = getattr(model, 'trained_dims', None)
    return tuple(dims) if dims else None


def check_dim(model: Any, dim: Any) -> int:
    """`dim` if it is a size `model` can give (1 to its output size); warns once per model and size when `model`
    was not trained at that size. Raises InputError naming the sizes it was trained at."""
    width = int(getattr(model, 'output_dim', 0) or 0)
    dims = trained_dims(model)
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= width:
        trained = f'; trained at {", ".join(map(str, dims))}' if dims else ''
        raise InputError(f'dim: expected a number of leading dimensions from 1 to {width} (the model\'s size'
                         f'{trained}), got {dim!r}.')
    dim = int(dim)
    warned = model.__dict__.setdefault('_dims_warned', set())  # kept on the model: once per model and size
    if dim != width and (dims is None or dim not in dims) and dim not in warned:
        warned.add(dim)
        how = (f'was trained at {", ".join(map(str, dims))} dimensions' if dims else
               "was not trained with loss_options={'matryoshka_dims': [...]}")
        warnings.warn(f'dim={dim}: {getattr(model, "name", "the model")!r} {how}; its first {dim} dimensions may '
                      f'rank neighbours poorly.', stacklevel=3)
    return dim


def truncate(embeddings: np.ndarray | torch.Tensor, dim: int) -> np.ndarray | torch.Tensor:
    """The leading `dim` columns of `embeddings` (numpy or torch), each row L2-normalized again."""
    cut = embeddings[:, :dim]
    if isinstance(cut, torch.Tensor):
        return cut / cut.norm(dim=1, keepdim=True).clamp_min(1e-12)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return (cut / np.maximum(norms, 1e-12)).astype(embeddings.dtype, copy=False)


class AtDim:
    """`model` seen at its leading `dim` dimensions: ``encode`` returns truncated, re-normalized embeddings;
    everything else is the model's."""

    def __init__(self, model: Any, dim: int):
        self.model, self.dim = model, dim

    def encode(self, items: Any, *args: Any, **kwargs: Any):
        return truncate(self.model.encode(items, *args, **kwargs), self.dim)

    @property
    def output_dim(self) -> int:
        return self.dim

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def at_size(model: Any, dim: int) -> Any:
    """A copy of `model` whose every embedding is its leading `dim` dimensions (re-normalized): the model an
    export at that size traces (each tower of a multi-tower model cut alike). Raises InputError for a bad `dim`
    (see :func:`check_dim`)."""
    import copy
    dim = check_dim(model, dim)
    cut = copy.deepcopy(model)
    for tower in (getattr(cut, 'towers', None) or {'': cut}).values():
        tower.truncate_dim, tower.output_dim = dim, dim
    if getattr(cut, 'towers', None):
        cut.output_dim = dim
    return cut
