"""`model_options`: every option typed, validated, and shown with its default.

An :class:`Option` describes one key: its type (as the user reads it), its default, a one-line meaning
and a validator that returns the cleaned value or raises :class:`~finetune.errors.OptionError`.
Nested dictionaries (``pooler_options``, ``head_options``, ``preprocess_options``) are validated
against the schema of whatever they configure.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from . import validators as rules
from .errors import OptionError, did_you_mean

Validator = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Option:
    """One configurable key of a model, pooler, head or preprocessing step."""

    name: str
    type: str
    default: Any
    help: str
    validate: Validator = field(default=lambda name, value: value, repr=False, compare=False)
    #: for a dict-valued option: the keys it accepts (validated and filled in with their defaults)
    schema: tuple['Option', ...] = ()


def _label(name: str) -> str:
    return f'option {name!r}'


def _fail(name: str, value: Any, expected: str) -> OptionError:
    return rules.expected(_label(name), value, expected)


# ---------------------------------------------------------------- validators (each: (name, value) -> value)
# The rules themselves are finetune.validators'; these name the option in their messages.

def positive_int(allow_none: bool = False) -> Validator:
    """A validator of a positive int (or None, when `allow_none`); it raises OptionError naming the option."""
    what = 'a positive integer' + (' or None' if allow_none else '')

    def check(name: str, value: Any) -> Any:
        return rules.integer(_label(name), value, 1, what, none=allow_none)
    return check


def positive_float(name: str, value: Any) -> float:
    """`value` as a float, finite and > 0; OptionError naming the option otherwise."""
    return rules.positive(_label(name), value, 'a positive finite number')


def non_negative_float(name: str, value: Any) -> float:
    """`value` as a float, finite and >= 0; OptionError naming the option otherwise."""
    return rules.number(_label(name), value, 'a finite number >= 0', lambda v: v >= 0)


def fraction(name: str, value: Any) -> float:
    """`value` as a float in [0, 1); OptionError naming the option otherwise."""
    return rules.fraction(_label(name), value)


def boolean(name: str, value: Any) -> bool:
    """`value`, True or False; OptionError naming the option otherwise."""
    return rules.boolean(_label(name), value)


def one_of(choices: Sequence[Any], allow_none: bool = False) -> Validator:
    """A validator of one of `choices` (strings without case; or None, when `allow_none`); it returns the choice
    as `choices` spells it and raises OptionError naming the option and the closest choice."""
    def check(name: str, value: Any) -> Any:
        return rules.choice(_label(name), value, choices, none=allow_none)
    return check


def float_triple(name: str, value: Any) -> tuple[float, float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise _fail(name, value, 'three numbers, one per RGB channel, e.g. (0.485, 0.456, 0.406)')
    return tuple(float(v) for v in value)


def int_list(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise _fail(name, value, 'a list of positive integers, e.g. [512]')
    return tuple(value)


def pretrained(name: str, value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise OptionError(
                f'option {name!r}: the weights file {path!r} does not exist. Pass True for the default '
                f'pretrained weights, False for random initialisation, or the path of an existing file.')
        return path
    raise _fail(name, value, 'True, False, or the path of a weights file')


FREEZE_EXPECTED = ('True, False, a list of layer-name prefixes such as ["conv1", "layer1"], or '
                   '{"except_last_layers": N}')


def freeze(name: str, value: Any) -> bool | tuple[str, ...] | dict[str, int]:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    if isinstance(value, Mapping) and set(value) == {'except_last_layers'}:
        n = value['except_last_layers']
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            return {'except_last_layers': n}
    raise _fail(name, value, FREEZE_EXPECTED)


def mapping(name: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(name, value, 'a dict')
    return dict(value)


# ---------------------------------------------------------------- schemas

def validate_mapping(what: str, given: Mapping[str, Any] | None, schema: Sequence[Option],
                     keep_missing: bool = True) -> dict[str, Any]:
    """Check `given` against `schema`; return every key of the schema, defaults filled in.

    Raises OptionError naming an unknown key (with the valid keys and the closest) or a bad value.
    """
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise OptionError(f'{what}: expected a dict, got {given!r} ({type(given).__name__}).')
    by_name = {o.name: o for o in schema}
    for key in given:
        if key not in by_name:
            valid = ', '.join(repr(k) for k in by_name) or '(none)'
            raise OptionError(f'{what}: unknown key {key!r}.{did_you_mean(str(key), by_name)} '
                              f'Valid keys: {valid}.')
    out: dict[str, Any] = {}
    for option in schema:
        if option.schema:
            value = option.validate(option.name, given.get(option.name))
            out[option.name] = validate_mapping(f'{option.name} ({what})', value, option.schema)
        elif option.name in given:
            out[option.name] = option.validate(option.name, given[option.name])
        elif keep_missing:
            out[option.name] = option.default
    return out


def format_default(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)
