"""``PML:<Name>``: any loss of pytorch-metric-learning, when that package is installed, as a finetune loss.

==================  ================  ================================================================
loss                data kinds        reads (see :mod:`finetune.losses.base`)
==================  ================  ================================================================
``PML:<Name>``      labeled, pairs    ``'items'``: embeddings and labels (pairs: both sides, a class per
                                      pair or group)
==================  ================  ================================================================

Its ``loss_options`` are the constructor arguments of the pytorch-metric-learning class (and of its bases
while they take ``**kwargs``); only those given are passed, so the package's own defaults hold.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import Tensor, nn

from ..errors import OptionError, did_you_mean
from ..options import Option, validate_mapping
from .base import MATRYOSHKA_OPTIONS, Loss
from .inputs import LABELED, PAIRS, LossInputs

PML_PREFIX = 'PML:'

_PML_ADAPTERS: dict[type, type[Loss]] = {}
_PML_FILLED = ('num_classes', 'embedding_size')  # passed by build_loss, not loss_options


def _pml_options(target: type) -> tuple[Option, ...]:
    """One Option per constructor argument of `target` and of its bases while they take ``**kwargs``."""
    found: dict[str, Option] = {}
    for klass in target.__mro__:
        if klass in (nn.Module, object):
            break
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        try:
            parameters = list(inspect.signature(init).parameters.values())[1:]
        except (TypeError, ValueError):
            break
        more = False
        for p in parameters:
            if p.kind is p.VAR_KEYWORD:
                more = True
            elif p.kind is not p.VAR_POSITIONAL and p.name not in found and p.name not in _PML_FILLED:
                default = None if p.default is p.empty else p.default
                found[p.name] = Option(p.name, 'any', default,
                                       f'passed to pytorch_metric_learning.losses.{target.__name__}')
        if not more:
            break
    return tuple(found.values())


class PMLLoss(Loss):
    """A pytorch-metric-learning loss on ``(embeddings, labels)``; pairs become ``cat(anchors, positives)``."""

    data_kinds = (LABELED, PAIRS)
    reads = 'items'
    target: type = nn.Module

    @classmethod
    def validate_options(cls, given: dict | None) -> dict[str, Any]:
        # only the keys given: pytorch-metric-learning fills in its own defaults
        return validate_mapping(f'loss_options for loss {cls.name!r}', given, (*cls.options, *MATRYOSHKA_OPTIONS),
                                keep_missing=False)

    def __init__(self, num_classes: int | None = None, embedding_dim: int | None = None, **options: Any):
        super().__init__()
        if self.needs_num_classes:
            options.update(num_classes=num_classes, embedding_size=embedding_dim)
        try:
            self.pml = self.target(**options)
        except TypeError as e:
            raise OptionError(f'loss_options for loss {self.name!r}: {e}') from e

    def compute(self, inputs: LossInputs) -> Tensor:
        return self.pml(inputs.embeddings, inputs.labels)


def pml_loss_class(loss_name: str) -> type[Loss]:
    """The finetune loss class of pytorch-metric-learning's `loss_name` (case-insensitive), made once. Raises
    OptionError when the package is missing or has no such loss."""
    try:
        module = importlib.import_module('pytorch_metric_learning.losses')
    except ImportError as e:
        raise OptionError(f'loss {PML_PREFIX}{loss_name} needs pytorch-metric-learning, which is not installed: '
                          f'pip install pytorch-metric-learning') from e
    classes = {n: getattr(module, n) for n in dir(module) if not n.startswith('_')}
    classes = {n: c for n, c in classes.items() if isinstance(c, type) and issubclass(c, nn.Module)}
    by_lower = {n.lower(): c for n, c in classes.items()}
    target = by_lower.get(loss_name.lower())
    if target is None:
        choices = sorted(n for n in classes if n.endswith('Loss'))
        raise OptionError(f'pytorch-metric-learning has no loss {loss_name!r}.{did_you_mean(loss_name, choices)} '
                          f'Its losses: {", ".join(choices)}.')
    if target not in _PML_ADAPTERS:
        options = _pml_options(target)
        try:
            takes_classes = 'num_classes' in inspect.signature(target).parameters
        except (TypeError, ValueError):
            takes_classes = False
        _PML_ADAPTERS[target] = type(f'PML{target.__name__}', (PMLLoss,), {
            'name': PML_PREFIX + target.__name__, 'target': target, 'options': options,
            'needs_num_classes': takes_classes, '__doc__': f'pytorch_metric_learning.losses.{target.__name__}',
        })
    return _PML_ADAPTERS[target]
