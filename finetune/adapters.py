"""LoRA adapters through peft: attached to a model's backbones, trained instead of the backbone's weights, saved
alone, merged back for deployment.

``model_options={'lora': True}`` (or ``{'r': 16, 'alpha': 32, 'dropout': 0.05, 'target_modules': [...]}``)
wraps the backbone's target modules (the family's :attr:`~finetune.backbone.Backbone.lora_targets`, usually the
attention and MLP projections) with low-rank updates ``W + (alpha / r) * B @ A``; B starts at zero, so a model
with fresh adapters embeds exactly as its base. Every backbone weight is frozen; the adapters, the pooler and
the heads train.

- :func:`attach_lora` — the adapters on a built model (``build_model`` calls it for the option);
- :func:`has_lora`, :func:`lora_summary` — whether a model has adapters, and how much of it trains;
- :func:`merge_lora` — a copy with the updates folded into the weights and the adapters gone (what exports);
- :func:`is_adapter_key` / :func:`is_base_key` — which weights are the adapter's and which the base's (an
  adapter-only artifact keeps the first; see :mod:`finetune.artifacts`).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

from torch import nn

from .errors import OptionError, did_you_mean
from .options import Option, fraction, positive_float, positive_int, validate_mapping

#: the part of a parameter's name peft gives the adapters' own weights
ADAPTER_MARK = 'lora_'

LORA_OPTIONS: tuple[Option, ...] = (
    Option('r', 'int > 0', 16, 'rank of the update matrices', positive_int()),
    Option('alpha', 'float > 0', 32.0, 'the update is scaled by alpha / r', positive_float),
    Option('dropout', 'float in [0, 1)', 0.05, 'dropout on the adapters\' input in training', fraction),
    Option('target_modules', 'list[str] | None', None,
           "the modules to adapt, by the last part of their name (e.g. ['query', 'value']); None: the family's",
           lambda name, value: _names(name, value)),
)


def _names(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not value or \
            not all(isinstance(v, str) and v for v in value):
        raise OptionError(f"option {name!r}: expected a non-empty list of module names such as ['query', 'value'], "
                          f'got {value!r}.')
    return tuple(value)


def lora_option(name: str, value: Any) -> dict[str, Any] | bool:
    """The ``lora`` model option validated: False, or the adapters' settings with defaults filled in (True means
    every default). Raises OptionError naming the key and what it must be."""
    if value is False or value is None:
        return False
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise OptionError(f"option {name!r}: expected True, False or a dict such as {{'r': 16, 'alpha': 32}}, got "
                          f'{value!r} ({type(value).__name__}).')
    settings = validate_mapping(f'option {name!r}', value, LORA_OPTIONS)
    if settings['target_modules'] is not None:
        settings['target_modules'] = list(settings['target_modules'])
    return settings


def _module_names(backbone: nn.Module) -> dict[str, list[str]]:
    """The last part of each adaptable module's name (Linear, Conv, Embedding layers) -> the full names."""
    found: dict[str, list[str]] = {}
    for full, module in backbone.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)) and full:
            found.setdefault(full.rpartition('.')[2], []).append(full)
    return found


def _check_targets(backbone: nn.Module, targets: Sequence[str], name: str) -> None:
    available = _module_names(backbone)
    missing = [t for t in targets if t not in available]
    if missing:
        hint = did_you_mean(missing[0], list(available))
        shown = ', '.join(sorted(available)[:24]) + (', ...' if len(available) > 24 else '')
        raise OptionError(f"option 'lora': {name!r} has no module named {missing[0]!r} to adapt "
                          f"(target_modules={list(targets)!r}).{hint} Modules it has: {shown}.")


def attach_lora(backbones: Sequence[nn.Module], settings: Mapping[str, Any], name: str) -> None:
    """Wrap the target modules of each of `backbones` (the backbones of model `name`) with LoRA adapters of
    `settings` (see :func:`lora_option`) and freeze every other backbone weight. Raises OptionError for a family
    with no default targets and none given, or a target the backbone lacks (with the closest names)."""
    from peft import LoraConfig, inject_adapter_in_model
    for backbone in backbones:
        targets = settings.get('target_modules') or backbone.lora_target_modules()
        if not targets:
            raise OptionError(f"option 'lora': {name!r} declares no default modules to adapt; pass "
                              f"{{'lora': {{'target_modules': [...]}}}} with the names of its Linear or Conv layers "
                              f'(e.g. {sorted(_module_names(backbone))[:6]}).')
        _check_targets(backbone, targets, name)
        config = LoraConfig(r=settings['r'], lora_alpha=settings['alpha'], lora_dropout=settings['dropout'],
                            target_modules=list(targets), bias='none')
        inject_adapter_in_model(config, backbone)
        for parameter_name, parameter in backbone.named_parameters():
            parameter.requires_grad_(ADAPTER_MARK in parameter_name)


def has_lora(model: nn.Module) -> bool:
    """Whether `model` carries LoRA adapters."""
    return any(is_adapter_key(name) for name, _ in model.named_parameters())


def is_adapter_key(key: str) -> bool:
    """Whether the state-dict `key` is a weight of an adapter."""
    return f'.{ADAPTER_MARK}' in key or key.startswith(ADAPTER_MARK)


def is_adapter_input_key(key: str) -> bool:
    """Whether the state-dict `key` is the first factor (A) of an adapter's update ``B @ A``: WiSE-FT keeps the
    fine-tuned A and interpolates B, so that the merged update is the fine-tuned one scaled by alpha."""
    return f'.{ADAPTER_MARK}A.' in key


def is_base_key(key: str) -> bool:
    """Whether the state-dict `key` is a weight of the base backbone (what an adapter-only artifact leaves out)."""
    return (key.startswith('backbone.') or '.backbone.' in key) and not is_adapter_key(key)


def lora_summary(model: nn.Module) -> str:
    """One line: the trainable parameters and their share of the model."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapters = sum(p.numel() for n, p in model.named_parameters() if is_adapter_key(n))
    return (f'LoRA adapters: {trainable:,} trainable parameters of {total:,} ({100 * trainable / max(1, total):.2f}%; '
            f'{adapters:,} in the adapters)')


def merge_lora(model: nn.Module) -> nn.Module:
    """A copy of `model` with each adapter's update folded into the weight it adapts and the adapters removed:
    a plain model that embeds as `model` does (up to float rounding), with ``options['lora']`` off. `model`
    itself is left as it is; one without adapters is copied as it is."""
    from peft.tuners.lora import LoraLayer
    merged = copy.deepcopy(model)
    for full, module in list(merged.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = full.rpartition('.')
            setattr(merged.get_submodule(parent_name) if parent_name else merged, child, module.get_base_layer())
    for sub in [merged, *getattr(merged, 'towers', {}).values()]:
        if isinstance(getattr(sub, 'options', None), dict):
            sub.options = dict(sub.options, lora=False)
    return merged
