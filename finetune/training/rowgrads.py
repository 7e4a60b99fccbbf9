"""Embedding tables trained with the gradient of the rows a batch looked up.

``nn.Embedding``'s backward builds a dense gradient the size of its whole table for every lookup: a text
encoder's 30,522 x 384 word table costs a fresh 47 MB of zeros each time a batch side (and each length group)
goes through it, and the sum of those tables again. On a CPU, freshly allocated memory is paid for in page
faults: filling a new table takes about 20 times as long as clearing one already in use, and with four lookups
a step this was 15% of a MiniLM training step.

While :class:`RowGradients` is attached, each trainable embedding table of the model looks its rows up through
a function whose backward hands autograd a sparse gradient (the looked-up rows only; sparse gradients of
several lookups add up cheaply). When autograd has accumulated it into the table's ``.grad``, a hook turns it
into a dense gradient written into one buffer kept for that table across steps. The optimizer, gradient
clipping and DistributedDataParallel then see the same dense gradient as before, summed in another order
(equal to float rounding).

CPU only: a GPU's caching allocator makes a fresh table cheap. Tables built with ``sparse=True``, ``max_norm``
or ``scale_grad_by_freq`` keep their own backward.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: the embedding modules whose lookups currently make sparse gradients (a copy of one made meanwhile is not)
_ACTIVE: weakref.WeakSet = weakref.WeakSet()
#: the patched subclass of each embedding class
_PATCHED: dict[type, type] = {}


class _RowLookup(torch.autograd.Function):
    """``F.embedding(ids, weight, padding_idx)`` whose gradient for `weight` is sparse: the looked-up rows."""

    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.size, ctx.dtype, ctx.padding_idx = weight.shape, weight.dtype, padding_idx
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[1]:
            return None, None, None
        (ids,) = ctx.saved_tensors
        rows = ids.reshape(-1)
        values = grad.reshape(rows.numel(), -1).to(ctx.dtype)
        if ctx.padding_idx is not None:  # the padding row gets no gradient, as in nn.Embedding
            keep = rows != ctx.padding_idx
            rows, values = rows[keep], values[keep]
        with torch.sparse.check_sparse_tensor_invariants(False):
            sparse = torch.sparse_coo_tensor(rows.unsqueeze(0), values, ctx.size, is_coalesced=False)
        return None, sparse, None


def _patched_class(cls: type) -> type:
    """A subclass of embedding class `cls` whose lookups go through :class:`_RowLookup` while attached."""
    if cls not in _PATCHED:
        def forward(self, ids):
            if self in _ACTIVE and torch.is_grad_enabled() and self.weight.requires_grad:
                return _RowLookup.apply(ids, self.weight, self.padding_idx)
            return cls.forward(self, ids)
        _PATCHED[cls] = type(cls.__name__, (cls,), {'forward': forward, '__module__': cls.__module__})
    return _PATCHED[cls]


def _eligible(module: nn.Module) -> bool:
    return (type(module).forward is nn.Embedding.forward and module.weight.requires_grad
            and not module.sparse and module.max_norm is None and not module.scale_grad_by_freq)


class RowGradients:
    """Attach to `model`'s trainable embedding tables (see the module's doc) with :meth:`attach`; :meth:`detach`
    puts them back as they were. Does nothing off the CPU."""

    def __init__(self, model: nn.Module, device: torch.device | str):
        self.model, self.on = model, torch.device(device).type == 'cpu'
        self.modules: list[tuple[nn.Module, type]] = []
        self.hooks: list[Any] = []
        self.buffers: dict[int, torch.Tensor] = {}

    def attach(self) -> RowGradients:
        if not self.on:
            return self
        weights = set()
        for module in self.model.modules():
            if not isinstance(module, nn.Embedding) or not _eligible(module):
                continue
            self.modules.append((module, type(module)))
            module.__class__ = _patched_class(type(module))
            _ACTIVE.add(module)
            if id(module.weight) not in weights:  # a table shared by two modules: one hook
                weights.add(id(module.weight))
                self.hooks.append(module.weight.register_post_accumulate_grad_hook(self._densify))
        return self

    def _densify(self, weight: torch.Tensor) -> None:
        """After autograd accumulated into ``weight.grad``: a sparse gradient becomes the dense buffer's."""
        grad = weight.grad
        if grad is None or not grad.is_sparse:
            return  # already dense: a later micro-batch added its rows into the buffer in place
        buffer = self.buffers.get(id(weight))
        if buffer is None or buffer.shape != weight.shape or buffer.dtype != weight.dtype:
            buffer = self.buffers[id(weight)] = torch.zeros_like(weight, memory_format=torch.contiguous_format)
        else:
            buffer.zero_()
        buffer.add_(grad)
        weight.grad = buffer

    def detach(self) -> None:
        for hook in self.hooks:
            hook.remove()
        for module, cls in self.modules:
            _ACTIVE.discard(module)
            module.__class__ = cls
        self.modules, self.hooks, self.buffers = [], [], {}

    def __enter__(self) -> RowGradients:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()
