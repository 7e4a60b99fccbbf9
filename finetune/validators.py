"""The rules a setting's value must follow, each written once.

One function per rule, shared by the model options (:mod:`finetune.options`), fit()'s settings
(:mod:`finetune.training.config`), the samplers and the synthesis settings. Each takes the label its message names
(``'epochs'``, ``"option 'p'"``), the value and what the rule needs; it returns the value, cleaned (a number as a
float, a choice as the choices spell it), or raises :class:`~finetune.errors.OptionError` with one message shape:
``<label>: expected <what>, got <value> (<its type>).`` A leaf module: it imports nothing of finetune but the errors.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

from .errors import OptionError, did_you_mean


def expected(label: str, value: Any, what: str, hint: str = '') -> OptionError:
    """The error for `value` given where `what` was expected (not raised: returned, for the caller to raise);
    `hint` (such as a 'did you mean') ends the message."""
    return OptionError(f'{label}: expected {what}, got {value!r} ({type(value).__name__}).{hint}')


def is_number(value: Any) -> bool:
    """Whether `value` is a finite real number: an int or a float, or a numpy one such as ``np.float32(0.5)``
    (numpy registers its scalars as :mod:`numbers`); a bool is not a number here."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def integer(label: str, value: Any, minimum: int = 1, what: str | None = None, none: bool = False) -> int | None:
    """`value`, an int (not a bool) of at least `minimum`; None passes when `none`. Raises OptionError saying
    `what` was expected (default: 'an integer >= <minimum>'). A numpy integer is returned as an int."""
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise expected(label, value, what or f'an integer >= {minimum}')
    return int(value)


def number(label: str, value: Any, what: str, within: Callable[[float], bool] | None = None,
           none: bool = False) -> float | None:
    """`value` as a float: a finite number (not a bool) for which `within` holds; None passes when `none`.
    Raises OptionError saying `what` was expected."""
    if value is None and none:
        return None
    if not is_number(value) or (within is not None and not within(value)):
        raise expected(label, value, what)
    return float(value)


def positive(label: str, value: Any, what: str = 'a positive number', none: bool = False) -> float | None:
    """`value` as a float, a finite number > 0; None passes when `none`. Raises OptionError."""
    return number(label, value, what, lambda v: v > 0, none)


def fraction(label: str, value: Any) -> float:
    """`value` as a float in [0, 1). Raises OptionError."""
    return number(label, value, 'a number in [0, 1)', lambda v: 0 <= v < 1)


def boolean(label: str, value: Any, what: str = 'True or False', none: bool = False) -> bool | None:
    """`value`, True or False; None passes when `none`. Raises OptionError saying `what` was expected."""
    if value is None and none:
        return None
    if not isinstance(value, bool):
        raise expected(label, value, what)
    return value


def text(label: str, value: Any, what: str, none: bool = True) -> str | None:
    """`value`, a string; None passes when `none` (the default). Raises OptionError saying `what` was expected."""
    if value is None and none:
        return None
    if not isinstance(value, str):
        raise expected(label, value, what)
    return value


def choice(label: str, value: Any, choices: Sequence[Any], none: bool = False) -> Any:
    """The one of `choices` that `value` is (strings compared without case), as `choices` spells it; None passes
    when `none`. Raises OptionError listing the choices, with the closest to a misspelt string."""
    if value is None and none:
        return None
    for option in choices:
        if isinstance(value, str) and isinstance(option, str) and value.lower() == option.lower():
            return option
    what = 'one of ' + ', '.join(repr(c) for c in choices) + (' or None' if none else '')
    hint = did_you_mean(value, [c for c in choices if isinstance(c, str)]) if isinstance(value, str) else ''
    raise expected(label, value, what, hint)


__all__ = ['boolean', 'choice', 'expected', 'fraction', 'integer', 'is_number', 'number', 'positive', 'text']
