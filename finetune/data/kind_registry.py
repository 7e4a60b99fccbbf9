"""The data kinds by name: the one registry that :func:`finetune.data.kinds.register_kind` fills and that
:class:`~finetune.data.training_data.TrainingData` looks its kind up in.

A leaf module (it imports no other data module), so that the kinds, which build TrainingData, and TrainingData,
which hands out its kind, need not import each other.
"""
from __future__ import annotations

from typing import Any

from ..errors import InputError, did_you_mean

#: kind name -> the registered :class:`~finetune.data.kinds.DataKind` object, in registration order
KINDS_BY_NAME: dict[str, Any] = {}


def kind_names() -> tuple[str, ...]:
    """The names of the registered kinds, in registration order."""
    return tuple(KINDS_BY_NAME)


def lookup_kind(name: Any) -> Any:
    """The kind registered as `name` (in any case).

    Raises InputError for any other name, with the closest registered names."""
    if isinstance(name, str) and name.lower() in KINDS_BY_NAME:
        return KINDS_BY_NAME[name.lower()]
    raise InputError(f'unknown data kind {name!r}.{did_you_mean(str(name), KINDS_BY_NAME)} Data kinds: '
                     f'{", ".join(KINDS_BY_NAME)}.')
