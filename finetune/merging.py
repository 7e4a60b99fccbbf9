"""WiSE-FT (Wortsman et al. 2022): a model whose weights lie between a base model and its fine-tuned version.

``merge(base, tuned, alpha)`` takes every weight of `tuned` that `base` also has (same name, same shape) as
``(1 - alpha) * base + alpha * tuned``; weights the base does not have (a classifier or projection head added
for fine-tuning) and non-float buffers (counters) come from `tuned`. Any other difference in names or shapes
(two models of one family but other depths, say) is refused: an average of the weights they share with the
rest copied would be a hybrid of neither. The sum is computed in float64 and rounded once to the weights' own
type, so ``alpha=0`` and ``alpha=1`` reproduce the two models bit for bit.
``alpha=0`` gives the base's weights, ``alpha=1`` the tuned ones. Fine-tuning tends to trade what the base did
well elsewhere for the new data; a point in between often keeps most of the gain and loses less.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from .adapters import is_adapter_input_key, is_adapter_key
from .errors import InputError, OptionError
from .validators import number


def _state(model: Any, what: str) -> dict[str, torch.Tensor]:
    if isinstance(model, Mapping):
        return dict(model)
    if isinstance(model, str):
        from .artifacts import load
        model = load(model)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f'{what}: expected a finetune model, a saved model folder or a state dict, got '
                         f'{type(model).__name__}.')
    return model.state_dict()


def check_alpha(alpha: Any) -> float:
    """`alpha` as a float in [0, 1]; OptionError otherwise."""
    return number('alpha', alpha, 'a number in [0, 1] (0: the base model, 1: the fine-tuned one)',
                  lambda v: 0 <= v <= 1)


#: the heads fine-tuning may add to a model (see finetune.model): weights a base may lack
_ADDED_HEADS = ('projection.', 'classifier.')
#: where peft keeps the weight of a layer it wrapped with an adapter: 'x.base_layer.weight' is the base's 'x.weight'
_WRAPPED = '.base_layer'


def _base_name(name: str, base: Mapping[str, torch.Tensor]) -> str | None:
    """The name in `base` of the tuned model's weight `name` (the same, or that of the layer an adapter wraps)."""
    if name in base:
        return name
    unwrapped = name.replace(_WRAPPED, '')
    return unwrapped if _WRAPPED in name and unwrapped in base else None


def check_same_architecture(base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor]) -> None:
    """InputError unless the two state dicts hold the same weights: the same names (bar heads and adapters the
    tuned model added) and the same shapes. The message names the first few that differ."""
    matched = {_base_name(name, base): name for name in tuned}
    added = [n for n in tuned if _base_name(n, base) is None and not (is_adapter_key(n) or n.startswith(_ADDED_HEADS))]
    lacking = [n for n in base if n not in matched]
    reshaped = [(name, other) for other, name in matched.items()
                if other is not None and base[other].shape != tuned[name].shape]
    if not set(matched) - {None}:
        raise InputError('merge: the two models share no weight; WiSE-FT interpolates a model with a fine-tuned '
                         'version of itself.')
    if reshaped:
        name, other = reshaped[0]
        raise InputError(f'merge: {name!r} is {tuple(base[other].shape)} in the base model and '
                         f'{tuple(tuned[name].shape)} in the fine-tuned one ({len(reshaped)} weight(s) differ in '
                         f'shape); WiSE-FT needs the same architecture.')
    if added or lacking:
        parts = [f'{len(names)} only in the {where} ({_first(names)})'
                 for names, where in ((lacking, 'base model'), (added, 'fine-tuned model')) if names]
        raise InputError(f'merge: the two models have different weights: {"; ".join(parts)}; WiSE-FT needs the '
                         f'same architecture: the fine-tuned model and the model it was fine-tuned from.')


def _first(names: Sequence[str], shown: int = 4) -> str:
    return ', '.join(repr(n) for n in names[:shown]) + (', ...' if len(names) > shown else '')


def merged_state(base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor],
                 alpha: float) -> dict[str, torch.Tensor]:
    """The WiSE-FT state of two state dicts (see the module docstring). Raises OptionError for an alpha outside
    [0, 1], InputError when the two differ in weight names or shapes (:func:`check_same_architecture`).

    LoRA adapters (:mod:`finetune.adapters`): the update ``B @ A`` of an adapter is scaled by alpha, not
    interpolated factor by factor: A is the fine-tuned one, B (zero in the base, or absent from a base without
    adapters) is interpolated."""
    alpha = check_alpha(alpha)
    check_same_architecture(base, tuned)
    out = {}
    for name, value in tuned.items():
        known = _base_name(name, base)
        other = base[known] if known is not None else None
        if other is None and is_adapter_key(name):
            other = torch.zeros_like(value)  # a base without adapters: its update is zero
        if other is None or not value.is_floating_point() or is_adapter_input_key(name):
            out[name] = value.detach().clone()
            continue
        mixed = (1 - alpha) * other.detach().to(value.device, torch.float64) + alpha * value.detach().double()
        out[name] = mixed.to(value.dtype)
    return out


def merge(base: Any, tuned: Any, alpha: float) -> torch.nn.Module:
    """A new model: `tuned` (a model or a saved model folder) with its weights moved towards `base`'s
    (a model, a folder or a state dict) as WiSE-FT does: ``(1 - alpha) * base + alpha * tuned``.

    Raises OptionError for an alpha outside [0, 1], InputError for models of different architectures."""
    if isinstance(tuned, str):
        from .artifacts import load
        tuned = load(tuned)
    if not isinstance(tuned, torch.nn.Module):
        raise InputError(f'tuned: expected a finetune model or a saved model folder, got {type(tuned).__name__}.')
    result = copy.deepcopy(tuned)
    result.load_state_dict(merged_state(_state(base, 'base'), tuned.state_dict(), alpha))
    return result


def offer_interpolations(model: torch.nn.Module, base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor],
                         alphas: Sequence[float], measure: Callable[[float], tuple[dict, dict | None]], selection,
                         label: Callable[[float], str], step: int = 0, trained: bool | None = None,
                         keep_weights: bool = True) -> Iterator[tuple[float, Any, dict[str, torch.Tensor]]]:
    """The grid of WiSE-FT, one alpha at a time: `model` is given the weights of `base` and `tuned` interpolated
    by the alpha (:func:`merged_state`), measured (``measure(alpha)``: its eval and guard metrics, the guard's None
    without guard data), and offered to `selection` (a :class:`~finetune.training.selection.Selection`) as the
    candidate ``label(alpha)`` at `step` (`trained`: see ``Selection.offer``); the candidate holds its weights
    while it is the best, or none without `keep_weights`. Yields ``(alpha, candidate, weights)``. Raises what
    merged_state raises (InputError for models of different architectures, OptionError for an alpha outside
    [0, 1])."""
    from .training.selection import Candidate
    for alpha in alphas:
        state = merged_state(base, tuned, alpha)
        model.load_state_dict(state)
        metrics, guard_metrics = measure(alpha)
        candidate = Candidate(label(alpha), step, metrics, guard_metrics)
        selection.offer(candidate, (lambda s=state: s) if keep_weights else dict, trained=trained)
        yield alpha, candidate, state


def choose_alpha(base: Any, tuned: torch.nn.Module, eval_data: Any, guard_data: Any = None,
                 tolerance: float = 0.01, ks=(1, 5, 10)):
    """WiSE-FT's alpha chosen on `eval_data` over (0, 0.25, 0.5, 0.75, 1) by the rule of model selection
    (:mod:`finetune.training.selection`): the best eval metric among the alphas whose guard metric is at most
    `tolerance` below the base's. Returns ``(alpha, rich table of the grid)``. Raises OptionError without
    eval data, InputError for data the model cannot be measured on (read and checked once for the grid)."""
    from rich.table import Table

    from .evaluation import Evaluation
    from .training.selection import WISE_FT_GRID, Selection
    if eval_data is None:
        raise OptionError("alpha='auto' is chosen on evaluation data: give eval_data (--eval-data), or a number.")
    model = copy.deepcopy(tuned)
    evaluation = Evaluation(model, eval_data, 'eval_data')
    guard = Evaluation(model, guard_data, 'guard_data') if guard_data is not None else None
    k = max(ks)
    metric = evaluation.data.data_kind.best_metric.format(k=k)
    guard_metric = guard.data.data_kind.best_metric.format(k=k) if guard is not None else None
    selection = Selection(metric, guard_metric, tolerance)
    table = Table(title='WiSE-FT: alpha (0: the base, 1: the fine-tuned model)')
    for column in ('alpha', metric) + ((f'guard {guard_metric}',) if guard_metric else ()):
        table.add_column(column, justify='right')

    def measure(alpha: float) -> tuple[dict, dict | None]:
        return evaluation.run(ks=ks), guard.run(ks=ks) if guard is not None else None
    chosen = None
    for alpha, candidate, _ in offer_interpolations(model, _state(base, 'base'), tuned.state_dict(), WISE_FT_GRID,
                                                    measure, selection, _grid_label, keep_weights=False):
        chosen = alpha if candidate is selection.best else chosen
        guard_metrics = candidate.guard_metrics
        table.add_row(f'{alpha:g}', f'{candidate.metrics[metric]:.4f}',
                      *((f'{guard_metrics[guard_metric]:.4f}',) if guard_metrics else ()))
    return chosen, table


def _grid_label(alpha: float) -> str:
    return 'base' if alpha == 0 else f'alpha {alpha:g}'
