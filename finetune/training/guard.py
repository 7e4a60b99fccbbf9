"""Never leave a broken model: detect a step that went non-finite and go back to the last good state."""
from __future__ import annotations

import math
import time

import torch
from torch import nn


def on_every_process(ok: torch.Tensor, accelerator) -> bool:
    """True when the 0-d bool `ok` holds on every process (so that all stop together, none waits in backward)."""
    ok = ok.float()
    if accelerator.num_processes > 1:
        ok = accelerator.reduce(ok, reduction='min')
    return bool(ok)


def gradients_ok(module: nn.Module, accelerator, max_grad_norm: float | None, precision: str) -> bool:
    """Clip the gradients to `max_grad_norm` (when set); False when their norm is not finite. Under fp16 the
    loss scaler skips such steps by design, so they are not failures there."""
    if max_grad_norm and accelerator.scaler is None and accelerator.device.type == 'cpu':
        # torch clips CPU gradients one tensor at a time unless told to use its foreach kernels (2% of a step)
        norm = torch.nn.utils.clip_grad_norm_(list(module.parameters()), max_grad_norm, foreach=True)
    elif max_grad_norm:
        norm = accelerator.clip_grad_norm_(module.parameters(), max_grad_norm)
    elif precision != 'fp16':
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        norm = torch.stack([n.float() for n in torch._foreach_norm(grads)]).norm() if grads else None
    else:
        return True
    return precision == 'fp16' or norm is None or on_every_process(torch.isfinite(norm).all(), accelerator)


class LastGood:
    """The state to fall back to when a step fails: a copy of the trainable parameters and the persistent
    buffers (BatchNorm's running statistics, ...) taken just before an optimizer update, whose weights have
    just given a finite loss. A failing step may already have moved the buffers, and the update before it
    may already have broken the weights (finite but huge, so that the next forward overflows): both go back
    to the copy.

    The copy costs one more set of the trainable parameters in memory and a memory-speed copy (about 4 ms for
    23M parameters on a CPU). It is taken before every update while that costs under `budget` of a step, else
    every few updates (``every``): the state kept is then at most that many steps old."""

    def __init__(self, module: nn.Module, budget: float = 0.005):
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.buffers = [buffer for m in module.modules() for name, buffer in m._buffers.items()
                        if buffer is not None and name not in m._non_persistent_buffers_set]
        groups: dict[tuple, list[torch.Tensor]] = {}  # one concatenation per device and dtype
        for b in self.buffers:
            if b.is_floating_point():
                groups.setdefault((b.device, b.dtype), []).append(b.detach())
        self.buffer_groups = list(groups.values())
        self.param_copies = [p.detach().clone() for p in self.params]
        self.buffer_copies = [b.detach().clone() for b in self.buffers]
        self.budget, self.every, self.updates = budget, 1, 0
        #: the optimizer step whose weights the copy holds (0: the weights training started from)
        self.kept_step = 0

    def buffers_finite(self) -> torch.Tensor:
        """A 0-d bool tensor: every floating buffer is finite (a forward can overflow running statistics
        while its loss stays finite)."""
        if not self.buffer_groups:
            return torch.tensor(True)
        flags = [torch.isfinite(torch.cat([b.reshape(-1) for b in group])).all() for group in self.buffer_groups]
        return torch.stack([f.to(flags[0].device) for f in flags]).all()

    def before_update(self, step: int, step_seconds: float | None = None) -> None:
        """Called before optimizer step `step` + 1 with the weights of step `step` (which just gave a finite
        loss and finite gradients); copies them when it is time to."""
        if self.updates % self.every == 0:
            started = time.perf_counter()
            _copy(self.param_copies, self.params)
            _copy(self.buffer_copies, self.buffers)
            self.kept_step = step
            cost = time.perf_counter() - started
            if step_seconds:
                self.every = max(1, math.ceil(cost / (self.budget * step_seconds)))
        self.updates += 1

    def restore(self) -> None:
        """Back to the copy: its parameters and its buffers."""
        _copy(self.buffers, self.buffer_copies)
        _copy(self.params, self.param_copies)


def _copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    if targets:
        with torch.no_grad():
            torch._foreach_copy_([t.detach() for t in targets], [s.detach() for s in sources])
