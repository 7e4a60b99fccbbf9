"""GradCache (Gao et al., 2021): a contrastive batch far larger than memory allows, with the same gradients.

A loss built with ``loss_options={'mini_batch_size': m}`` trains by :class:`CachedStep` instead of one
forward and backward of the whole batch:

1. every side of the batch is embedded in chunks of `m` rows without a graph (the random state before each
   chunk is kept, BatchNorm running statistics are put back afterwards);
2. the loss is computed on all the embeddings at once (detached leaves), and its backward gives the gradient
   of the loss with respect to each embedding (and to the loss's own parameters, a model's temperature);
3. each chunk is embedded again, this time with a graph, from the same random state, and its embeddings'
   gradient is backpropagated into the model; then the chunk's graph is freed.

Peak memory is that of one chunk's graph plus the batch's embeddings (N x D), so a batch of 1,024 trains in
about the memory of a batch of `m`; the cost is one extra forward without a graph per step.

The gradients equal those of the whole batch in one pass whenever the model's forward of a row does not
depend on the other rows of its chunk and on the random state consumed before it: dropout draws the same
masks in both passes (the random state of each chunk is restored), so the result equals the uncached step
of a model whose dropout masks were drawn chunk by chunk. BatchNorm layers in training mode normalize with
the statistics of each chunk of `m` rows (in both passes alike), not of the whole batch; their running
statistics are updated once per chunk, by the second pass only.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..backbone import batch_to, inverse_order, rows_of, take_rows
from ..errors import OptionError
from .module import TrainingModule


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == 'cuda' else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _batchnorm_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of the running statistics of every BatchNorm layer in training mode."""
    out = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buffer is not None:
                    out.append((buffer, buffer.detach().clone()))
    return out


class _Side:
    """One embedded side of a batch: its chunks, their random states, and the embeddings as a leaf."""

    def __init__(self, side: str, chunks: list, states: list, leaf: torch.Tensor, hosts: list | None = None):
        self.side, self.chunks, self.states, self.leaf = side, chunks, states, leaf
        self.hosts = hosts or [None] * len(chunks)  # each chunk on the host (cut there), or None


class CachedStep:
    """Forward and backward of one batch through `module` (a :class:`TrainingModule`, not wrapped) in chunks
    of `mini_batch_size` rows. `autocast` is the precision context of the run; `backward(loss)` is the
    engine's backward (it scales the loss under fp16)."""

    def __init__(self, module: TrainingModule, mini_batch_size: int, autocast: Callable[[], Any],
                 backward: Callable[[torch.Tensor], None]):
        self.module, self.size = module, int(mini_batch_size)
        self.autocast, self.backward = autocast, backward

    def loss(self, batch: dict, device: torch.device, host: dict | None = None) -> tuple[torch.Tensor, list[_Side]]:
        """The loss of `batch` on embeddings computed without a graph (leaves that require a gradient). `host` is
        the batch before it moved to an accelerator: the chunks are then ordered and cut there, and moved."""
        sides: list[_Side] = []
        kept = _batchnorm_buffers(self.module.model)
        hosts = {id(value): host[key] for key, value in batch.items() if key in host} \
            if isinstance(host, dict) and isinstance(batch, dict) else {}

        def embed(side: str, x: Any, logits: bool = False):
            if logits:
                raise OptionError(f"loss_options 'mini_batch_size': the loss {self.module.loss.name} trains on "
                                  f"a classifier head's logits, which GradCache does not cache; leave "
                                  f"mini_batch_size out.")
            n, at_host = rows_of(x), hosts.get(id(x))
            source = x if at_host is None else at_host  # ordered and cut on the host where it is there
            lengths = self.module.row_lengths(side, source)  # padded sequences: chunks of similar length
            order = None if lengths is None else torch.argsort(lengths, stable=True)
            if order is not None:
                source = take_rows(source, order, n)
            cut = [self.module.slice(side, source, i, min(n, i + self.size)) for i in range(0, n, self.size)]
            chunks = cut if at_host is None else [batch_to(chunk, device) for chunk in cut]
            on_host = None if at_host is None else cut
            states, parts = [], []
            for index, chunk in enumerate(chunks):
                states.append(_rng_state(device))
                with torch.no_grad(), self.autocast():
                    parts.append(self.module.embed(side, chunk, host=None if on_host is None else on_host[index]))
            leaf = torch.cat(parts).detach().requires_grad_(True)  # in chunk order; its gradient too
            sides.append(_Side(side, chunks, states, leaf, on_host))
            if order is None:
                return leaf
            return leaf[batch_to(inverse_order(order), leaf.device)]  # the rows in batch order, for the loss

        with self.autocast():
            inputs = self.module.kind.loss_inputs(embed, batch, self.module.loss,
                                                  getattr(self.module.model, 'logit_scale', None))
            value = self.module.loss(self.module.with_guide(batch, inputs))
        for buffer, copy in kept:  # the second pass updates the running statistics, once
            buffer.copy_(copy)
        return value, sides

    def backpropagate(self, value: torch.Tensor, sides: list[_Side], device: torch.device) -> None:
        """The loss's gradient into the embeddings, then chunk by chunk into the model."""
        end_state = _rng_state(device)
        self.backward(value)
        for side in sides:
            grad = side.leaf.grad
            if grad is None:  # the loss did not use this side
                continue
            start = 0
            for chunk, state, at_host in zip(side.chunks, side.states, side.hosts):
                _set_rng_state(state, device)
                with self.autocast():
                    part = self.module.embed(side.side, chunk, host=at_host)
                stop = start + part.shape[0]
                torch.autograd.backward(part, grad[start:stop].to(part.dtype))
                start = stop
        _set_rng_state(end_state, device)


def all_reduce_gradients(module: nn.Module, num_processes: int) -> None:
    """Average the gradients of `module`'s trainable parameters over the processes (what DistributedDataParallel
    does after a backward; the cached step runs its passes outside it). A parameter without a gradient on this
    process counts as zeros there; one without a gradient on any process keeps none, as under
    DistributedDataParallel, so the optimizer leaves it alone (no weight decay, no momentum)."""
    import torch.distributed as dist
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
                     + [torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                                     device=params[0].device)])
    dist.all_reduce(flat)
    used = flat[-len(params):] > 0
    flat /= num_processes
    offset = 0
    for p, anywhere in zip(params, used.tolist()):
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype) if anywhere else None
        offset += n
