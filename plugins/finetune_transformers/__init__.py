"""finetune plugin: Hugging Face transformers text encoders and decoders (text-to-text), offline first.

Named models (Jina Finetuner's names, same checkpoints): ``bert-base-en``, ``sbert-base-en``,
``bert-base-multi``. Any model ``AutoModel`` loads is reachable as ``hf:<hub id or local directory>``: an
encoder pools its tokens (mean by default), a decoder (Qwen, Llama, Mistral, Gemma, ...) embeds with its last
token (:mod:`.decoder`); a sentence-transformers directory (one with ``modules.json``) loads with its own pooling
and normalization, so its embeddings match sentence-transformers' ``encode``.
"""
from __future__ import annotations

from finetune_hfhub import OFFLINE_ENVS

from finetune.registry import BackbonePlugin

from .specs import PREFIX, list_prefixed, resolve
from .st_export import FORMAT as ST_FORMAT
from .specs import specs as _specs  # `specs` stays the submodule

plugin = BackbonePlugin(
    name='transformers', specs=_specs, prefixes=(PREFIX,), resolve=resolve, list_prefixed=list_prefixed,
    offline_envs=OFFLINE_ENVS, export_formats=(ST_FORMAT,),
    note="any transformers encoder or decoder (LLM) as hf:<hub id or local directory> (text-to-text); "
         "sentence-transformers directories keep their pooling",
)

__all__ = ['plugin']
