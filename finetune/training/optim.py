"""Optimizers, learning-rate schedules and parameter groups."""
from __future__ import annotations

import inspect
import math
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import OptionError, did_you_mean

OPTIMIZERS = {'adamw': torch.optim.AdamW, 'adam': torch.optim.Adam, 'sgd': torch.optim.SGD,
              'rmsprop': torch.optim.RMSprop}
SCHEDULERS = ('linear', 'cosine', 'constant')


def parameter_groups(model: nn.Module, loss: nn.Module, learning_rate: float,
                     loss_learning_rate: float) -> list[dict]:
    """Two optimizer groups: the model at `learning_rate`; class weights, classifier heads and learned
    temperatures (the model's ``logit_scale``, the loss's own) at `loss_learning_rate`. With the model option
    ``layer_decay``, the model's parameters form one group per block's rate (:mod:`finetune.layers`), the full
    rate first. OptionError when every model parameter is frozen."""
    classifier = getattr(model, 'classifier', None)
    special = list(classifier.parameters()) if classifier is not None else []
    if getattr(model, 'logit_scale', None) is not None:
        special.append(model.logit_scale)
    special_ids = {id(p) for p in special} | {id(p) for p in loss.parameters()}
    main = [p for p in model.parameters() if p.requires_grad and id(p) not in special_ids]
    if not main:
        raise OptionError('every model parameter is frozen: nothing to train (check freeze).')
    decay = (getattr(model, 'options', None) or {}).get('layer_decay')
    if decay is not None and decay < 1:  # model_options={'layer_decay': d}: one group per block's rate
        from ..layers import layer_decay_groups
        groups = layer_decay_groups(model, main, learning_rate, decay)
    else:
        groups = [{'params': main, 'lr': learning_rate}]
    extra = [p for p in [*special, *loss.parameters()] if p.requires_grad]
    if extra:
        groups.append({'params': extra, 'lr': loss_learning_rate})
    return groups


def make_optimizer(name: str, groups: list[dict], options: dict | None,
                   modules: Sequence[nn.Module] = ()) -> torch.optim.Optimizer:
    """The optimizer `name` (case-insensitive) over `groups`; `options` checked against its arguments. An
    optimizer that has a fused implementation (AdamW, Adam, SGD) uses it unless `options` names ``fused`` or
    ``foreach``, or one of `modules` (the models trained) makes sparse gradients, which fused kernels refuse.

    Raises OptionError naming the optimizer and the option for an unknown name or key, or a value of the
    wrong type."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise OptionError(f'optimizer: unknown {name!r}.{did_you_mean(str(name), OPTIMIZERS)} '
                          f'Available: {", ".join(OPTIMIZERS)}.')
    cls = OPTIMIZERS[key]
    options = dict(options or {})
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k not in ('self', 'params', 'lr')}
    for k, value in options.items():
        if k not in params:
            raise OptionError(f'optimizer_options for {name}: unknown key {k!r}.{did_you_mean(k, params)} '
                              f'Valid keys: {", ".join(params)}.')
        expected = _expected_like(params[k].default, value)
        if expected:
            raise OptionError(f'optimizer_options for {name}: {k}={value!r}; expected {expected} (default '
                              f'{params[k].default!r}).')
    if 'fused' in params and not {'fused', 'foreach'} & set(options) and _fusable(groups, modules):
        try:  # one kernel over all parameters: the step of a 22M-parameter model on a CPU takes a fraction
            return cls(groups, **options, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    try:
        return cls(groups, **options)
    except (TypeError, ValueError, IndexError) as exc:
        raise OptionError(f'optimizer_options for {name}: {options} refused: {exc}.') from exc


def _fusable(groups: list[dict], modules: Sequence[nn.Module] = ()) -> bool:
    """Every parameter a floating-point tensor on a CPU or a CUDA device (what torch's fused Adam takes), and
    no module of `modules` with sparse gradients (an embedding built with ``sparse=True``)."""
    params = [p for g in groups for p in g['params']]
    sparse = any(getattr(m, 'sparse', False) is True for model in modules for m in model.modules())
    return not sparse and all(p.is_floating_point() and p.device.type in ('cpu', 'cuda') for p in params)


def _expected_like(default: Any, value: Any) -> str:
    """What a value must be to replace `default` (an optimizer argument's), or '' when `value` fits."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if isinstance(default, bool):
        return '' if isinstance(value, bool) else 'True or False'
    if isinstance(default, (int, float)):
        return '' if number(value) else 'a finite number'
    if isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(map(number, value))
        return '' if ok else f'{len(default)} numbers'
    return ''  # None or a tensor default: torch checks it


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """A LambdaLR: linear warm-up over `warmup_steps`, then linear decay to 0, a half cosine, or constant."""
    if name not in SCHEDULERS:
        raise OptionError(f'scheduler: expected one of {", ".join(SCHEDULERS)}, got {name!r}.'
                          f'{did_you_mean(str(name), SCHEDULERS)}')
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Schedule(name, total_steps, warmup_steps))


class _Schedule:
    """The learning-rate factor of each step (a class, not a closure, so a scheduler state can be pickled)."""

    def __init__(self, name: str, total_steps: int, warmup_steps: int):
        self.name, self.total_steps, self.warmup_steps = name, total_steps, warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / max(1, self.warmup_steps)
        if self.name == 'constant':
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.name == 'linear':
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
