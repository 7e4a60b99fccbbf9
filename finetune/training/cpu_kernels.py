"""Two of torch's CPU training paths replaced by cheaper ones with the same result, while ``fit`` trains.

**Embedding gradients of the rows looked up** (:class:`RowGradients`). ``nn.Embedding``'s backward builds a
dense gradient the size of its whole table for every lookup: a text encoder's 30,522 x 384 word table costs a
fresh 47 MB of zeros each time a batch side (and each length group) goes through it, and the sum of those
tables again. On a CPU, freshly allocated memory is paid for in page faults: filling a new table takes about
20 times as long as clearing one already in use, and with four lookups a step this was about 15% of a MiniLM
training step. While attached, each trainable embedding table looks its rows up through a function whose
backward hands autograd a sparse gradient (the looked-up rows; the sparse gradients of several lookups add up
cheaply). When autograd has accumulated it into the table's ``.grad``, a hook writes it, dense, into one buffer
kept for that table across steps. The optimizer, gradient clipping and DistributedDataParallel see the same
dense gradient as before, summed in another order (equal to float rounding). Tables built with ``sparse=True``,
``max_norm`` or ``scale_grad_by_freq`` keep their own backward.

**Dropout masks from 16 random bits** (:class:`QuickDropout`). ``nn.Dropout`` draws its mask with
``bernoulli_``, which on a CPU costs about 4 ns per element: 10% of a MiniLM training step. While attached,
each ``nn.Dropout`` draws 16 uniform bits per element (two per 32-bit draw of torch's generator, so seeded runs
repeat) and drops an element when they fall under ``round(p * 65536)``: the drop probability is `p` to within
1/131,072, and the kept elements are scaled by the exact inverse of the keep probability, so the expected output
is the input, as with ``nn.Dropout``. About 2.5 times as fast.

Both are for the CPU only (on a GPU, a fresh table is cheap and dropout is a fused kernel), and only while
training: a module copied (or pickled) meanwhile, and every module after :meth:`detach`, works as torch's own.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

#: the modules whose forward is currently replaced (a copy of one, made meanwhile, is not)
_ACTIVE: weakref.WeakSet = weakref.WeakSet()
#: the patched subclass of each (module class, replacement forward)
_PATCHED: dict[tuple[type, Callable], type] = {}

#: the number of distinct values of the random bits a dropout mask compares (16 bits)
MASK_LEVELS = 1 << 16


def _new_module(cls: type) -> nn.Module:
    """An empty module of class `cls`, for pickle and deepcopy to set the state of."""
    return cls.__new__(cls)


class _Swapped:
    """Modules of a model given another forward while attached: their class is swapped for a subclass whose
    forward calls `forward(module, input)` for a module in :data:`_ACTIVE`, and the class's own forward
    otherwise. The subclass pickles and copies as the class itself, so a copy made meanwhile is a plain module."""

    def __init__(self) -> None:
        self.modules: list[tuple[nn.Module, type]] = []

    def swap(self, module: nn.Module, forward: Callable[[nn.Module, Any], Any]) -> None:
        cls = type(module)
        if (cls, forward) not in _PATCHED:
            def patched(self, input):  # noqa: A002 - the name torch's forward takes it by
                if self in _ACTIVE:
                    return forward(self, input)
                return cls.forward(self, input)

            def reduce(self, protocol):  # pickle and deepcopy: the module as of its own class
                return _new_module, (cls,), self.__getstate__()
            _PATCHED[cls, forward] = type(cls.__name__, (cls,), {'forward': patched, '__reduce_ex__': reduce,
                                                                 '__module__': cls.__module__})
        self.modules.append((module, cls))
        module.__class__ = _PATCHED[cls, forward]
        _ACTIVE.add(module)

    def restore(self) -> None:
        for module, cls in self.modules:
            _ACTIVE.discard(module)
            module.__class__ = cls
        self.modules = []


# ---------------------------------------------------------------------------------------- embedding gradients
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
        values = grad.reshape(-1, ctx.size[1]).to(ctx.dtype)
        if ctx.padding_idx is not None:  # the padding row gets no gradient, as in nn.Embedding
            keep = rows != ctx.padding_idx
            rows, values = rows[keep], values[keep]
        with torch.sparse.check_sparse_tensor_invariants(False):
            sparse = torch.sparse_coo_tensor(rows.unsqueeze(0), values, ctx.size, is_coalesced=False)
        return None, sparse, None


def _row_lookup(module: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    if not (module.training and torch.is_grad_enabled() and module.weight.requires_grad):
        return nn.Embedding.forward(module, ids)
    return _RowLookup.apply(ids, module.weight, module.padding_idx)


class RowGradients:
    """Attach to `model`'s trainable embedding tables (see the module's doc) with :meth:`attach`; :meth:`detach`
    puts them back as they were."""

    def __init__(self, model: nn.Module):
        self.model, self.swapped = model, _Swapped()
        self.hooks: list[Any] = []
        self.buffers: dict[int, torch.Tensor] = {}

    @staticmethod
    def eligible(module: nn.Module) -> bool:
        return (isinstance(module, nn.Embedding) and type(module).forward is nn.Embedding.forward
                and isinstance(module.weight, nn.Parameter) and module.weight.requires_grad and not module.sparse
                and module.max_norm is None and not module.scale_grad_by_freq)

    def attach(self) -> RowGradients:
        weights = set()
        for module in self.model.modules():
            if not self.eligible(module):
                continue
            self.swapped.swap(module, _row_lookup)
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
        self.swapped.restore()
        self.hooks, self.buffers = [], {}


# ------------------------------------------------------------------------------------------------- dropout
def dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout mask for `x`: 0 with probability ``round(p * 65536) / 65536``, else the inverse of the keep
    probability; in `x`'s dtype and shape, from torch's default generator."""
    n = x.numel()
    dropped = round(p * MASK_LEVELS)
    if dropped >= MASK_LEVELS:
        return torch.zeros_like(x)
    bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=x.device).random_(-2 ** 31, 2 ** 31)
    levels = bits.view(torch.int16)[:n].view(x.shape)  # uniform on -32768 .. 32767
    keep = levels >= dropped - MASK_LEVELS // 2
    return keep.to(x.dtype).mul_(MASK_LEVELS / (MASK_LEVELS - dropped))


def _quick_dropout(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """In training, with or without a graph: GradCache's first pass (no graph) and its second must draw the
    same masks from the same random state."""
    return x * dropout_mask(x, module.p) if module.training else x


class QuickDropout:
    """Attach to `model`'s ``nn.Dropout`` modules (see the module's doc) with :meth:`attach`; :meth:`detach`
    puts them back as they were."""

    def __init__(self, model: nn.Module):
        self.model, self.swapped = model, _Swapped()

    @staticmethod
    def eligible(module: nn.Module) -> bool:
        return (isinstance(module, nn.Dropout) and type(module).forward is nn.Dropout.forward
                and 0 < module.p < 1 and not module.inplace)

    def attach(self) -> QuickDropout:
        for module in self.model.modules():
            if self.eligible(module):
                self.swapped.swap(module, _quick_dropout)
        return self

    def detach(self) -> None:
        self.swapped.restore()


#: the CPU paths by name, in the order they attach
PATHS = {'row gradients': RowGradients, 'quick dropout': QuickDropout}

#: 'auto' draws dropout masks from 16 random bits up to this many threads: torch's ``random_`` is a serial kernel
#: and ``bernoulli_`` a parallel one, so torch's own dropout catches up as threads are added
#: (benchmarks/bench_cpu_kernels.py on a 2-core AMD EPYC: 1.7x faster on 1 thread, 1.14x on 2)
QUICK_DROPOUT_MAX_THREADS = 2


def choose(setting: bool | str, device: torch.device | str, threads: int | None = None) -> tuple[str, ...]:
    """The CPU paths (names of :data:`PATHS`) that ``fit(cpu_kernels=setting)`` attaches on `device` with
    `threads` (default: torch's intra-op thread count): none off a CPU or with False; both with True; with
    'auto', the embedding-row gradients (faster at every thread count measured) and, up to
    :data:`QUICK_DROPOUT_MAX_THREADS` threads, the 16-bit dropout masks."""
    if torch.device(device).type != 'cpu' or setting is False:
        return ()
    if setting is True:
        return tuple(PATHS)
    threads = torch.get_num_threads() if threads is None else threads
    return ('row gradients',) + (('quick dropout',) if threads <= QUICK_DROPOUT_MAX_THREADS else ())


class CpuKernels:
    """``with CpuKernels(model, device, setting):`` trains `model` with the paths :func:`choose` picks for
    `device` and `setting` ('auto', True, False) attached: on a CPU, :class:`RowGradients` and
    :class:`QuickDropout`; nothing elsewhere. ``names`` lists what is attached."""

    def __init__(self, model: nn.Module, device: torch.device | str, setting: bool | str = 'auto'):
        self.names = choose(setting, device)
        self.parts = [PATHS[name](model) for name in self.names]

    def __enter__(self) -> CpuKernels:
        try:
            for part in self.parts:
                part.attach()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for part in self.parts:
            part.detach()
