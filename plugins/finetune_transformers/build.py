"""Building a transformers encoder or decoder (hub id or directory, sentence-transformers directories included) as
a text backbone."""
from __future__ import annotations

import os
from typing import Any

from finetune.weights import load_into, load_state_dict

from .backbone import HFTextBackbone
from .decoder import HFDecoderBackbone, is_decoder
from .layout import sentence_transformers_layout
from .weights import _load_model, _load_tokenizer, _local_only


def build(name: str, source: str, options: dict[str, Any]) -> HFTextBackbone:
    """Build the transformers model at `source` (hub id or directory) as a text backbone: an
    :class:`HFDecoderBackbone` for a decoder (:func:`~.decoder.is_decoder` of its loaded config)."""
    import transformers  # noqa: F401 - a missing package fails here, before any network probe
    trust = options['trust_remote_code']
    layout = sentence_transformers_layout(source) if os.path.isdir(source) else None
    model_dir = layout['transformer'] if layout else source
    local_only, reason = _local_only(model_dir)
    pretrained = options['pretrained']
    model = _load_model(name, model_dir, local_only, trust, reason, pretrained)
    if isinstance(pretrained, str):
        load_into(model, load_state_dict(pretrained), pretrained, name)
    tokenizer = _load_tokenizer(model_dir, local_only, trust, name, reason)
    kind = HFDecoderBackbone if is_decoder(model.config.to_dict()) else HFTextBackbone
    return kind(name, model, tokenizer, options['collate_options'])
