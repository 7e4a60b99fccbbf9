"""The transformers plugin's ``hf:`` names: what follows the prefix is a model folder or a hub id.

Both the backbones (:mod:`.specs`) and the cross-encoders (:mod:`.cross_encoder`) read such a name the same way,
through :func:`hf_source`; what the folder must then hold is theirs to say.
"""
from __future__ import annotations

import os

from finetune.errors import UnknownModelError

#: the prefix of a name that any folder or hub id can take
PREFIX = 'hf'


def hf_source(rest: str) -> str:
    """The model folder (``~`` expanded) or hub id that ``hf:<rest>`` names. Raises UnknownModelError when
    nothing follows the prefix, or when it names a file."""
    if not rest:
        raise UnknownModelError(f"{PREFIX}:<folder or hub id>: nothing after '{PREFIX}:'.")
    source = os.path.expanduser(rest)
    if os.path.exists(source) and not os.path.isdir(source):
        raise UnknownModelError(f'{PREFIX}:{rest}: {source!r} is a file; expected a model folder or a hub id.')
    return source
