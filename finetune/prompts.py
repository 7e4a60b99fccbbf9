"""Prompts (instructions): named texts put before a text model's items, as e5, bge or Qwen3-Embedding expect.

A family whose backbone takes prompts (``Backbone.takes_prompts``) lists :func:`prompt_options` among its model
options: ``prompts`` (name -> text, e.g. ``{'query': 'query: ', 'document': 'passage: '}``), ``default_prompt``
(the name :func:`finetune.encode` uses when given none), ``include_prompt`` (False: the prompt's tokens are left
out of the pooling, as sentence-transformers' ``include_prompt``) and ``prompt_columns`` (the prompt of the first
column of training and evaluation rows, and of the others).

``fit`` and evaluation give each side of the data its prompt in one place, :func:`side_prompts`: queries (the first
column of pairs, margin triplets and scored pairs, and the items of labeled data) get the ``'query'`` prompt, the
documents (the other columns) the ``'document'`` prompt; a side whose prompt name the model has no prompt for gets
what ``encode`` gives without one (the default prompt, if any).
"""
from __future__ import annotations

import functools
import re
from typing import Any, Mapping

from .errors import InputError, OptionError, did_you_mean
from .options import Option, boolean

#: the prompt names of the first column and of the other columns when ``prompt_columns`` is not given
DEFAULT_COLUMNS = ('query', 'document')
_NAME = re.compile(r'^[\w.-]+$')


def _prompts(name: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k and isinstance(v, str)
                                                 for k, v in value.items()):
        raise OptionError(f"option {name!r}: expected a dict of prompt names to texts, e.g. {{'query': 'query: ', "
                          f"'document': 'passage: '}}, got {value!r}.")
    return dict(value)


def _prompt_name(name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise OptionError(f"option {name!r}: expected the name of one of the prompts (e.g. 'query') or None, got "
                          f'{value!r}.')
    return value


def _columns(name: str, value: Any) -> tuple[str | None, str | None] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(v is None or isinstance(v, str) and v
                                                                     for v in value):
        return tuple(value)
    raise OptionError(f"option {name!r}: expected two prompt names (or None for no prompt), the first column's and "
                      f"the other columns', e.g. ['query', 'document'] or ['query', 'query'], got {value!r}.")


def prompt_options(prompts: Mapping[str, str] | None = None, default_prompt: str | None = None,
                   include_prompt: bool = True) -> tuple[Option, ...]:
    """The model options of a family that takes prompts, with these defaults (a model folder's own prompts)."""
    return (
        Option('prompts', 'dict[str, str]', dict(prompts or {}),
               "named texts put before the items, e.g. {'query': 'query: ', 'document': 'passage: '}", _prompts),
        Option('default_prompt', 'str | None', default_prompt,
               'the name of the prompt encode() puts before items when given none', _prompt_name),
        Option('include_prompt', 'bool', include_prompt,
               "False: the pooling averages the item's own tokens only, not the prompt's",
               boolean),
        Option('prompt_columns', 'list | None', None,
               "the prompt names of the first column of training / evaluation rows (queries, labeled items) and of "
               "the other columns (documents); None: ['query', 'document']", _columns),
    )


def check_prompt_options(opts: Mapping[str, Any], model: str) -> None:
    """OptionError when `opts` name a default prompt or prompt columns that are not among its prompts."""
    if 'prompts' not in opts:
        return
    prompts = opts['prompts']
    wanted = [('default_prompt', opts.get('default_prompt'))]
    wanted += [('prompt_columns', n) for n in opts.get('prompt_columns') or () if n is not None]
    for option, name in wanted:
        if name is not None and name not in prompts:
            known = ', '.join(map(repr, prompts)) or "none (set 'prompts' first)"
            raise OptionError(f'model_options for {model!r}: {option} names the prompt {name!r}, which is not among '
                              f'the prompts.{did_you_mean(name, prompts)} Prompts: {known}.')


def _settings(model: Any) -> Mapping[str, Any] | None:
    """The prompt options of `model` (a one-tower model, torch or exported), or None where it takes no prompts."""
    if not getattr(model, 'takes_prompts', False):
        return None
    options = getattr(model, 'options', None) or {}
    return options if 'prompts' in options else None


def resolve_prompt(model: Any, prompt: str | None) -> str | None:
    """The text to put before each item `model` encodes: `prompt` is the name of one of its prompts, a text of its
    own, ``''`` for none, or None for the model's default prompt (none without one). Raises InputError for a
    prompt on a model that takes none, and for a word that is no prompt's name (listing the names)."""
    settings = _settings(model)
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"prompt: expected a prompt's name or text (a string), got {type(prompt).__name__}.")
    if settings is None:
        if prompt:
            raise InputError(f'prompt={prompt!r}: {getattr(model, "name", "the model")!r} is '
                             f'{"an" if str(getattr(model, "modality", "?"))[:1] in "aeiou" else "a"} '
                             f'{getattr(model, "modality", "?")} model that takes no prompts; prompts apply to text '
                             f'models (model_options prompts).')
        return None
    prompts = settings.get('prompts') or {}
    if prompt is None:
        default = settings.get('default_prompt')
        return prompts.get(default) or None if default else None
    if prompt in prompts:
        return prompts[prompt] or None
    if _NAME.match(prompt):  # a single word reads as a name: a typo must not become the prompt's text
        names = ', '.join(map(repr, prompts))
        have = f'its prompts are {names}.{did_you_mean(prompt, prompts)}' if prompts else 'it has no named prompts.'
        raise InputError(f'prompt={prompt!r} names no prompt of {getattr(model, "name", "the model")!r}: {have} '
                         f"To put a text of your own before each item, pass it with its separator, e.g. "
                         f"{prompt + ': '!r}.")
    return prompt


def side_prompts(side_a: Any, side_b: Any) -> tuple[str | None, str | None]:
    """What ``encode(prompt=)`` each side of the data gets (a prompt's name, ``''`` for none, or None for the
    model's default): by the model's ``prompt_columns``, queries the ``'query'`` prompt and documents the
    ``'document'`` prompt, where the model has them. The one place fit and evaluation decide it."""
    out: list[str | None] = []
    for index, side in enumerate((side_a, side_b)):
        settings = _settings(side) if side is not None else None
        if settings is None:
            out.append(None)
            continue
        columns = settings.get('prompt_columns') or DEFAULT_COLUMNS
        name = columns[min(index, len(columns) - 1)]
        prompts = settings.get('prompts') or {}
        out.append('' if name is None else name if name in prompts else None)  # '' : prompt_columns says none
    return out[0], out[1]


class Prompted:
    """`model` whose ``encode`` puts `prompt` (a name, a text, ``''`` or None, as :func:`resolve_prompt` reads it)
    before each item; everything else is the model's."""

    def __init__(self, model: Any, prompt: str | None):
        self.model, self.prompt = model, prompt

    def encode(self, items: Any, *args: Any, **kwargs: Any):
        kwargs.setdefault('prompt', self.prompt)
        return self.model.encode(items, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def prompted_sides(side_a: Any, side_b: Any) -> tuple[Any, Any]:
    """The sides of evaluation data, each encoding with its prompt (:func:`side_prompts`); a side of a model that
    takes no prompts stays as it is."""
    prompts = side_prompts(side_a, side_b)
    return tuple(side if side is None or _settings(side) is None else Prompted(side, prompt)
                 for side, prompt in zip((side_a, side_b), prompts))


def training_preprocessors(side_a: Any, side_b: Any) -> tuple[Any, Any]:
    """The training preprocessing of each side of the data (``preprocess_for_training``; None for a missing side),
    each putting its side's prompt (:func:`side_prompts`) before the items."""
    out = []
    for side, prompt in zip((side_a, side_b), side_prompts(side_a, side_b)):
        text = resolve_prompt(side, prompt) if side is not None else None
        out.append(None if side is None else functools.partial(side.preprocess_for_training, prompt=text) if text
                   else side.preprocess_for_training)
    return out[0], out[1]


def training_prompts(side_a: Any, side_b: Any) -> tuple[str | None, str | None]:
    """The texts put before the items of each side in training (None: none)."""
    return tuple(resolve_prompt(side, prompt) if side is not None else None
                 for side, prompt in zip((side_a, side_b), side_prompts(side_a, side_b)))
