"""Never leave a broken model: detect a step that went non-finite and go back to the last good state."""
from __future__ import annotations

import math
import time

import torch
from torch import nn


#: on an accelerator, the finiteness flags are read back once every this many optimizer steps (and before every
#: evaluation, checkpoint and save), not after each step: reading a flag makes the host wait for the device
DEVICE_CHECK_EVERY = 10


def on_every_process(ok: torch.Tensor, accelerator) -> bool:
    """True when the 0-d bool `ok` holds on every process (so that all stop together, none waits in backward).
    Each process counts its failure and the counts are summed (accelerate's ``reduce`` knows 'sum', 'mean' and
    'max'; any other name sums too, so a 'min' would let one finite process pass for all)."""
    failed = (~ok.detach().bool()).float().reshape(1)
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed.to(accelerator.device), reduction='sum')
    return float(failed.sum()) == 0


def gradients_finite(module: nn.Module, accelerator, max_grad_norm: float | None,
                     precision: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Clip the gradients to `max_grad_norm` (when set). Returns ``(finite, norm)``, both on the device and not read
    back: `finite` a 0-d bool tensor, True when the gradients' norm on this process is finite (under FSDP: of this
    process's shards), None under fp16, whose loss scaler skips an update with overflowing gradients by design
    (those are no failures there); `norm` the total gradient norm before clipping (what trackers log as
    ``train/grad_norm``), None where it is not known whole (fp16 without clipping; shards without clipping)."""
    sharded = False
    if max_grad_norm and accelerator.scaler is None and accelerator.device.type == 'cpu':
        # torch clips CPU gradients one tensor at a time unless told to use its foreach kernels (2% of a step)
        norm = torch.nn.utils.clip_grad_norm_(list(module.parameters()), max_grad_norm, foreach=True)
    elif max_grad_norm:
        norm = accelerator.clip_grad_norm_(module.parameters(), max_grad_norm)
    elif precision != 'fp16':
        from accelerate.utils import DistributedType
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        # FSDP2's gradients are DTensors; FSDP1's are plain local shards: either way this norm is of a shard
        sharded = getattr(accelerator, 'distributed_type', None) == DistributedType.FSDP \
            or any(hasattr(g, 'to_local') for g in grads)
        grads = [_local(g) for g in grads]
        norm = torch.stack([n.float() for n in torch._foreach_norm(grads)]).norm() if grads else None
    else:
        return None, None
    if norm is None:
        return None, None
    if hasattr(norm, 'full_tensor'):  # a sharded model's total norm (every process asks for it alike)
        norm = norm.full_tensor()
    norm = torch.as_tensor(norm)
    finite = None if precision == 'fp16' else torch.isfinite(norm).all()
    return finite, None if sharded else norm.detach().float()


def gradients_ok(module: nn.Module, accelerator, max_grad_norm: float | None, precision: str) -> bool:
    """:func:`gradients_finite`, read back and agreed by every process: False when the norm is not finite on
    some process."""
    finite, _ = gradients_finite(module, accelerator, max_grad_norm, precision)
    return finite is None or on_every_process(finite, accelerator)


class FiniteWatch:
    """Where the loss (with the normalization statistics) and the gradients first went non-finite since the
    last :meth:`look`, kept on the device: :meth:`note` adds a flag without waiting for the device; only
    :meth:`look` reads them back (one host synchronisation, and one collective between processes).

    The Trainer notes every micro-batch's loss and every update's gradients, and looks every `every` optimizer
    steps (1 on a CPU, where reading costs nothing: it stops before the backward of a non-finite loss), before
    every evaluation, checkpoint and save, and at each epoch's end. Its last good copy of the weights
    (:class:`LastGood`) is taken only right after a look found every step finite, so a failure found late goes
    back at most `every` steps, and no model a run evaluates, saves or returns holds a non-finite update."""

    #: what each flag is about, in the words of the stop message
    WHAT = ('the loss (or a normalization statistic)', 'the gradients')
    #: above any step number: a flag holds FAR - (first failing step), so that a max over the processes keeps the
    #: earliest failure (accelerate's reduce has no min)
    FAR = 2 ** 62

    def __init__(self, accelerator, every: int):
        self.accelerator, self.every = accelerator, max(1, int(every))
        self.marks = torch.zeros(len(self.WHAT), dtype=torch.long, device=accelerator.device)
        self.epochs: dict[int, int] = {}  # step -> epoch, of the steps noted since the last look

    def note(self, what: int, finite: torch.Tensor, step: int, epoch: int) -> None:
        """Record that `finite` (a 0-d bool tensor) held at optimizer step `step` (from 1) of `epoch` (from 0) for
        flag `what` (0: the loss or a statistic, 1: the gradients). Never reads the device."""
        mark = torch.where(finite.to(self.marks.device), 0, self.FAR - step)
        self.marks[what] = torch.maximum(self.marks[what], mark)
        self.epochs.setdefault(step, epoch)

    def due(self, step: int) -> bool:
        """Whether optimizer step `step` (from 1) is one that looks before its update."""
        return step % self.every == 0

    def look(self) -> tuple[str, int, int] | None:
        """The earliest failure on any process since the last look, ``(what, step, epoch)``, or None; the flags
        start again. Every process must call it at the same point (it is a collective when there are several)."""
        if not self.epochs:
            return None
        marks = self.marks
        if self.accelerator.num_processes > 1:
            marks = self.accelerator.reduce(marks, reduction='max')
        values = marks.tolist()
        epochs, self.epochs = self.epochs, {}
        self.marks.zero_()
        failed = sorted((self.FAR - value, what) for what, value in enumerate(values) if value > 0)
        if not failed:
            return None
        step, what = failed[0]
        return self.WHAT[what], step, epochs.get(step, min(epochs.values()))


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
        self.params = [_local(p) for p in module.parameters() if p.requires_grad]  # a sharded model: own shards
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

    def buffers_finite(self) -> torch.Tensor | None:
        """A 0-d bool tensor on the buffers' device: every floating buffer is finite (a forward can overflow
        running statistics while its loss stays finite); None where the model has no floating buffers."""
        if not self.buffer_groups:
            return None
        flags = [torch.isfinite(torch.cat([b.reshape(-1) for b in group])).all() for group in self.buffer_groups]
        return torch.stack([f.to(flags[0].device, non_blocking=True) for f in flags]).all()

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


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded (DTensor) parameter or gradient; any other tensor as it is."""
    return tensor.to_local() if hasattr(tensor, 'to_local') else tensor


def _copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    if targets:
        with torch.no_grad():
            torch._foreach_copy_([t.detach() for t in targets], [s.detach() for s in sources])
