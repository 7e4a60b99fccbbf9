"""The loss registry: names (case-insensitive, with aliases) to :class:`~finetune.losses.base.Loss` classes, and
:func:`build_loss`, where a loss is checked against the data kind it is to train on.

A loss module registers its classes when imported (``register_loss(name, cls, aliases)``); the registry
imports no loss module, and the fit of a loss to a data kind is checked when the loss is built, not when it
is registered (a kind may be registered after the loss that trains it).
"""
from __future__ import annotations

from typing import Any

from ..errors import OptionError, did_you_mean
from .base import Loss
from .pml import PML_PREFIX, pml_loss_class

_LOSSES: dict[str, type[Loss]] = {}  # lower-cased name or alias -> class
_NAMES: list[str] = []  # canonical names, in registration order
_SPELLINGS: list[str] = []  # names and aliases as registered


def register_loss(name: str, cls: type[Loss], aliases: tuple[str, ...] = ()) -> None:
    """Register a :class:`Loss` subclass under `name` (and `aliases`); names are case-insensitive. Raises
    OptionError for a class that is no Loss, one that declares no data kinds, a reserved or taken name."""
    if not (isinstance(cls, type) and issubclass(cls, Loss)):
        raise OptionError(f'register_loss: {cls!r} is not a subclass of finetune.losses.Loss')
    kinds = cls.data_kinds
    if not kinds or not isinstance(kinds, tuple) or not all(isinstance(k, str) and k for k in kinds):
        raise OptionError(f'register_loss: {name!r} declares data kinds {kinds!r}; expected a tuple of data kind '
                          f"names such as ('pairs',).")
    for key in (name, *aliases):
        if key.lower().startswith(PML_PREFIX.lower()):
            raise OptionError(f'register_loss: names starting with {PML_PREFIX!r} are reserved')
        if key.lower() in _LOSSES and _LOSSES[key.lower()] is not cls:
            raise OptionError(f'a loss named {key!r} is already registered')
    for key in (name, *aliases):
        _LOSSES[key.lower()] = cls
        if key not in _SPELLINGS:
            _SPELLINGS.append(key)
    if name not in _NAMES:
        _NAMES.append(name)
    cls.name, cls.aliases = name, tuple(aliases)


def loss_names(include_aliases: bool = False) -> list[str]:
    """The registered loss names (and, with `include_aliases`, their aliases) as users type them."""
    return list(_SPELLINGS if include_aliases else _NAMES)


def _kind_names() -> tuple[str, ...]:
    from ..data.kinds import kind_names
    return kind_names()


def _check_data_kind(data_kind: Any) -> str:
    kinds = _kind_names()
    if isinstance(data_kind, str):
        for kind in kinds:
            if data_kind.lower() == kind:
                return kind
    hint = did_you_mean(data_kind, kinds) if isinstance(data_kind, str) else ''
    raise OptionError(f'unknown data kind {data_kind!r}.{hint} Data kinds: {", ".join(map(repr, kinds))}.')


def losses_for(data_kind: str) -> list[str]:
    """The names of the losses that fit `data_kind`. Raises OptionError for an unknown kind."""
    kind = _check_data_kind(data_kind)
    return [name for name in _NAMES if kind in _LOSSES[name.lower()].data_kinds]


def default_loss(data_kind: str) -> str:
    """The loss used for `data_kind` when none is named. Raises OptionError for an unknown kind."""
    from ..data.kinds import get_kind
    return get_kind(_check_data_kind(data_kind)).default_loss


def loss_class(name: str) -> type[Loss]:
    """The class registered under `name` (case-insensitive), or a ``PML:<Name>`` adapter.

    Raises OptionError for an unknown name, with the closest names and the full list.
    """
    if not isinstance(name, str):
        raise OptionError(f'a loss name must be a string, got {name!r} ({type(name).__name__}). '
                          f'Available losses: {", ".join(map(repr, _NAMES))}.')
    if name.lower().startswith(PML_PREFIX.lower()):
        return pml_loss_class(name[len(PML_PREFIX):])
    cls = _LOSSES.get(name.lower())
    if cls is None:
        raise OptionError(f'unknown loss {name!r}.{did_you_mean(name, _SPELLINGS)} Available losses: '
                          f'{", ".join(map(repr, _NAMES))}; or {PML_PREFIX}<Name> for any loss of '
                          f'pytorch-metric-learning.')
    return cls


def required_model_options(name: str, num_classes: int | None = None) -> dict[str, Any]:
    """The ``model_options`` the loss `name` needs (a cosine-classifier head for NormalizedSoftmaxLoss)."""
    return loss_class(name).model_options(num_classes)


def build_loss(name: str, loss_options: dict | None, data_kind: str, num_classes: int | None = None,
               embedding_dim: int | None = None) -> Loss:
    """The loss `name` for `data_kind`, its `loss_options` validated.

    `num_classes` and `embedding_dim` are needed by losses that own class weights (ArcFace, CosFace).
    Raises OptionError for an unknown name or option, a bad value, or a loss that does not fit the data.
    """
    kind = _check_data_kind(data_kind)
    cls = loss_class(name)
    if kind not in cls.data_kinds:
        takes = ', '.join(map(repr, cls.data_kinds))
        fits = ', '.join(map(repr, losses_for(kind)))
        raise OptionError(f'loss {cls.name!r} does not fit {kind!r} data (it takes {takes} data). Losses for '
                          f'{kind!r} data: {fits} (default {default_loss(kind)!r}).')
    options = cls.validate_options(loss_options)
    dims, weights = options.pop('matryoshka_dims', None), options.pop('matryoshka_weights', None)
    extra: dict[str, Any] = {}
    if cls.needs_num_classes:
        for what, value in (('num_classes', num_classes), ('embedding_dim', embedding_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise OptionError(f'loss {cls.name!r} owns class weights and needs {what} (a positive integer), '
                                  f'got {value!r}.')
        extra = {'num_classes': num_classes, 'embedding_dim': embedding_dim}
    loss = cls(**options, **extra)
    loss.set_matryoshka(dims, weights, embedding_dim)
    return loss
