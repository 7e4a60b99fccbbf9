"""The accelerate engine of a run: made for its device (``cuda:N`` included) and precision, and the one choice
DistributedDataParallel cannot make for itself, whether to search every step for parameters a step leaves
without a gradient.

Device. accelerate gives a single process the current CUDA device ('cuda', no index), and each process of a
launch the GPU of its local rank. ``device='cuda:N'`` in a single process makes cuda:N the current CUDA device
(``torch.cuda.set_device``, as accelerate does for each process of a launch) and hands it to accelerate as the
run's device (its ``ACCELERATE_TORCH_DEVICE``), so that the model, the batches, the loss scaler and the
evaluation's encoding all run there. Under a launch the launcher places the processes (``accelerate launch
--gpu_ids``, ``CUDA_VISIBLE_DEVICES``); a ``cuda:N`` there is refused.

Precision. ``fp16`` on CUDA gets accelerate's loss scaler (``torch.amp.GradScaler``: dynamic scale, updates with
overflowing gradients skipped); ``bf16`` autocasts without one; the CPU refuses fp16 before this point
(:func:`~finetune.training.hardware.resolve_precision`).

Unused parameters. DistributedDataParallel must be told when a step leaves some trainable parameter without
a gradient (else it waits for that gradient and fails), and that search costs a walk over the autograd graph
every step. The rule: the search is on when a trial forward and backward of the first batch (before the first
step, in eval mode so that no dropout is drawn and no running statistic moves, the random state put back)
leaves a trainable parameter of the model or the loss without a gradient on some process. That catches what
the model and the loss alone decide: the towers of a multi-tower model that a pair of sides does not train, a
classifier head the loss does not read, a loss's own temperature where the model brings one, a backbone's
layers that the pooling does not reach (BERT's pooler under mean pooling). A model whose parameter use changes
from step to step (LayerDrop, mixture-of-experts routing) needs ``Trainer.find_unused_parameters = True``.
The trial runs only where there is DistributedDataParallel: several processes, no FSDP, no GradCache (whose
passes run outside it).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch

from ..errors import OptionError


def launched() -> bool:
    """True inside a distributed launch (torchrun, ``accelerate launch`` of several processes) or where a
    process group already exists."""
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    return initialized or os.environ.get('LOCAL_RANK') is not None


def processes_here() -> int:
    """How many training processes share this machine (1 without a launch)."""
    return int(os.environ.get('LOCAL_WORLD_SIZE') or 1)


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    if value is None:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def make_engine(device: str, precision: str, find_unused_parameters: bool = False):
    """An ``accelerate.Accelerator`` on `device` ('cpu', 'cuda', 'cuda:N'; see the module docstring) with
    autocast at `precision` ('fp32', 'bf16', 'fp16'), its DistributedDataParallel handler set to
    `find_unused_parameters` (changeable until the model is prepared: ``accelerator.ddp_handler``).

    accelerate keeps one state per process; a second fit in the same process may want another device or
    precision. accelerate has no public way to reset it (1.x), hence the private calls; the distributed state of
    a launch is kept. Raises OptionError for ``cuda:N`` under a launch."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs
    in_launch = launched()
    index = device.partition(':')[2]
    if index and in_launch:
        raise OptionError(f'device={device!r}: under a distributed launch each process takes the GPU of its local '
                          f"rank; choose the GPUs with `accelerate launch --gpu_ids {index}` or "
                          f"CUDA_VISIBLE_DEVICES={index}, and pass device='cuda' or 'auto'.")
    AcceleratorState._reset_state(reset_partial_state=not in_launch)
    GradientState._reset_state()
    if index:
        torch.cuda.set_device(int(index))
    with _environment('ACCELERATE_TORCH_DEVICE', device if index else None):
        return Accelerator(cpu=device == 'cpu', mixed_precision={'fp32': 'no'}.get(precision, precision),
                           kwargs_handlers=[DistributedDataParallelKwargs(
                               find_unused_parameters=find_unused_parameters)])


def is_sharded(accelerator) -> bool:
    """Whether accelerate shards the model over the processes (FSDP)."""
    from accelerate.utils import DistributedType
    return getattr(accelerator, 'distributed_type', None) == DistributedType.FSDP


def wraps_in_ddp(accelerator) -> bool:
    """Whether ``accelerator.prepare`` wraps a model in DistributedDataParallel (several processes, no FSDP)."""
    return accelerator.num_processes > 1 and not is_sharded(accelerator)


def unused_parameters(module: torch.nn.Module, batch: Any, autocast=contextlib.nullcontext) -> list[str]:
    """The names of `module`'s trainable parameters that a forward and backward of `batch` (on the module's
    device) leaves without a gradient. The trial runs in eval mode (no dropout drawn, no running statistic
    moved), the random state is put back and the gradients are cleared afterwards."""
    from .hardware import rng_state, set_rng_state
    was_training, state = module.training, rng_state()
    trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    module.eval()
    try:
        with autocast():
            value = module(batch)
        value.float().sum().backward()
        return [name for name, p in trainable if p.grad is None]
    finally:
        for _, p in trainable:
            p.grad = None
        module.train(was_training)
        set_rng_state(state)


def search_unused(module: torch.nn.Module, batch: Any, accelerator) -> list[str]:
    """:func:`unused_parameters` of `batch` on this process, and whether any process found some: the names
    found here, or ``['(on another process)']`` where only another process found some (all processes must give
    DistributedDataParallel the same setting)."""
    found = unused_parameters(module, batch, accelerator.autocast)
    if accelerator.num_processes > 1:
        from .guard import on_every_process
        if not on_every_process(torch.tensor(not found, device=accelerator.device), accelerator) and not found:
            return ['(on another process)']
    return found
