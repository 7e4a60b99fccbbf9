"""FSDP (accelerate's fully sharded data parallel, ``accelerate launch --config_file examples/fsdp.yaml``): what the
trainer needs whole while every process holds only shards.

Under FSDP each process keeps a shard of every parameter, of its gradient and of its optimizer state, and only a
forward through the prepared module gathers them; the inner model called directly would see its shards. So:

- the trainer keeps a :class:`FullCopy` of the model and its loss, refreshed from the shards (a collective,
  every process takes part) before each evaluation, checkpoint, model selection and save; evaluation and files
  use the copy (on the main process's device; on the CPU elsewhere), training uses the shards. The copy costs
  one more model in memory, a fraction of what training holds (weights, gradients, two optimizer moments);
- a checkpoint holds the optimizer state whole, keyed by parameter name (:func:`optimizer_state`), gathered
  from every process and written by the main one; a resume gives each process its shards of it again
  (:func:`load_optimizer_state`), under FSDP or without it;
- the guard copies and checks each process's own shards (:mod:`~finetune.training.guard`), and every process
  agrees on a failure through one collective;
- GradCache runs its passes on the inner model, outside the wrapper, and is refused; the feature cache (a frozen
  backbone's features computed once) is off.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import OptionError

#: the layout of a checkpoint's optimizer state written whole, keyed by parameter name (torch's own
#: ``optimizer.state_dict()`` keys parameters by position, and holds one process's shards under FSDP)
FULL_OPTIMIZER_STATE = 'full, by parameter name'


class FullCopy:
    """A whole copy of the trained module (model and loss), made before the accelerator shards it, refreshed
    from the shards when asked. ``model`` is the copy's model (what evaluation, checkpoints and the Run see)."""

    def __init__(self, module: nn.Module, device: torch.device | str):
        self.module = copy.deepcopy(module).to(device)

    @property
    def model(self) -> nn.Module:
        return self.module.model

    def refresh(self, sharded: nn.Module) -> None:
        """Every process: the parameters and buffers of `sharded` gathered whole (a collective) into the copy."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
        self.module.load_state_dict(state)


def check_shardable(loss: Any) -> None:
    """Raise OptionError for what cannot train sharded: GradCache (``loss_options={'mini_batch_size': m}``)."""
    if getattr(loss, 'mini_batch_size', None) is not None:
        raise OptionError("loss_options 'mini_batch_size' (GradCache): its passes run on the model outside FSDP's "
                          "wrapper, which only gathers the sharded weights in its own forward. Under FSDP leave "
                          "mini_batch_size out (FSDP's own saving is memory already), or launch without FSDP "
                          "(DistributedDataParallel: `accelerate launch --multi_gpu`).")


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, 'optimizer', optimizer)  # accelerate's AcceleratedOptimizer wraps torch's


def optimizer_state(module: nn.Module, optimizer: Any) -> dict[str, Any]:
    """Every process: the optimizer state of `module`'s parameters whole, keyed by parameter name, on the main
    process (the others get an empty dict); a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(module, _inner(optimizer),
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(module: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """Every process: `state` (from :func:`optimizer_state`, read by every process) into the optimizer of
    `module`, each process taking its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(module, _inner(optimizer), state, options=StateDictOptions(full_state_dict=True))
