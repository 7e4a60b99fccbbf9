"""Exceptions raised for a user's mistakes, each with a message that says what to do instead."""
from __future__ import annotations

import difflib
from typing import Iterable


class FinetuneError(Exception):
    """Base class of every error `finetune` raises on purpose."""


class UnknownModelError(FinetuneError, KeyError):
    """A model name that no plugin registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ''


class OptionError(FinetuneError, ValueError):
    """A bad `model_options` key or value."""


class PluginError(FinetuneError):
    """A plugin that failed to load, or two plugins that registered the same name."""


class DuplicateNameError(PluginError):
    """Two plugins registered the same backbone name."""


class WeightsNotFoundError(FinetuneError, FileNotFoundError):
    """Pretrained weights that are neither cached nor downloadable."""


class WeightsLoadError(FinetuneError):
    """A weights file that exists but does not fit the model."""


class InputError(FinetuneError, ValueError):
    """Inputs of the wrong kind or shape for a model."""


class ArtifactError(FinetuneError, ValueError):
    """A saved model folder that cannot be loaded as it is: unreadable, incomplete or unsafe."""


class ExportError(FinetuneError, ValueError):
    """An export that cannot be made: an unknown format, a model the format does not take, a missing optional
    dependency, an operation the target lacks, or a result that fails the parity gate."""


def closest(word: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The choices most similar to `word`, best first (case-insensitive)."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    found = [lowered[h] for h in hits]
    if len(found) < n:  # prefix matches catch 'resnet' -> 'resnet18', ...
        for c in choices:
            if c not in found and c.lower().startswith(word.lower()):
                found.append(c)
            if len(found) >= n:
                break
    return found


def did_you_mean(word: str, choices: Iterable[str], n: int = 5) -> str:
    """A ' Did you mean ...?' sentence, or '' when nothing is close."""
    found = closest(word, choices, n)
    if not found:
        return ''
    return ' Did you mean ' + ', '.join(repr(f) for f in found) + '?'
