"""Decoder (causal LM) models as text embedders: Qwen2/3, Llama, Mistral, Gemma, ... through ``hf:<folder>``.

A decoder's token sees only the tokens before it, so the last one is the only one that has read the whole text:
such a model embeds with the ``last`` pooler (the last real token of each row, padding on either side), after
the tokenizer's end-of-sequence token is appended to each text where the tokenizer does not add it itself (as
Qwen3-Embedding and e5-mistral do). A tokenizer without a pad token pads with its end-of-sequence token.
Position ids count each row's real tokens from 0, so a text embeds the same alone and in a padded batch
whichever side the tokenizer pads on.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from torch import nn

from finetune.backbone import Features
from finetune.errors import FinetuneError
from finetune.poolers import last_token

from .backbone import HFTextBackbone

#: the ``model_type`` of decoder families (their configs may name a base model, e.g. e5-mistral's MistralModel)
DECODER_TYPES = frozenset({
    'llama', 'mistral', 'mixtral', 'ministral', 'qwen2', 'qwen2_moe', 'qwen3', 'qwen3_moe', 'gemma', 'gemma2',
    'gemma3_text', 'phi', 'phi3', 'gpt2', 'gpt_neo', 'gpt_neox', 'gptj', 'falcon', 'olmo', 'olmo2', 'stablelm',
    'starcoder2', 'cohere', 'granite', 'opt', 'bloom', 'mpt', 'smollm3', 'internlm2', 'deepseek_v3', 'glm',
})
#: the tokens a tokenizer without a pad token pads with, the first it has
PAD_CHOICES = ('eos_token', 'sep_token', 'unk_token', 'bos_token')


def is_decoder(config: Mapping[str, Any] | None) -> bool:
    """Whether a transformers ``config.json`` (as a dict) describes a decoder that embeds with its last token:
    ``is_decoder`` is true, or an entry of ``architectures`` ends in ``ForCausalLM``, or ``model_type`` is one of
    :data:`DECODER_TYPES`; unless ``use_bidirectional_attention`` is true (EmbeddingGemma reads both ways)."""
    if not config or config.get('use_bidirectional_attention'):
        return False
    architectures = config.get('architectures') or ()
    return bool(config.get('is_decoder')) or any(str(a).endswith('ForCausalLM') for a in architectures) \
        or config.get('model_type') in DECODER_TYPES


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position among its row's real tokens (``mask`` 1), from 0; padding before them gets 0."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


def _set_pad_token(tokenizer: Any, name: str) -> None:
    if tokenizer.pad_token is not None:
        return
    token = next((getattr(tokenizer, attr) for attr in PAD_CHOICES if getattr(tokenizer, attr, None)), None)
    if token is None:
        raise FinetuneError(f'the tokenizer of {name!r} has no pad token and none of {", ".join(PAD_CHOICES)} to pad '
                            f'with; set tokenizer.pad_token and save the tokenizer into the model folder.')
    tokenizer.pad_token = token


def _check_ids(name: str, model: nn.Module, ids: Mapping[str, int | None]) -> None:
    """FinetuneError when a token finetune adds has no row in the model's input embeddings."""
    rows = model.get_input_embeddings().num_embeddings
    for what, token_id in ids.items():
        if token_id is not None and not 0 <= token_id < rows:
            raise FinetuneError(f'the tokenizer of {name!r} gives its {what} token the id {token_id}, but the model '
                                f'embeds ids 0 to {rows - 1} (vocab_size): the tokenizer does not belong to the '
                                f'model; put the model\'s own tokenizer files in its folder.')


class HFDecoderBackbone(HFTextBackbone):
    """A transformers decoder (``AutoModel`` of a causal LM) and its tokenizer; ``pool_own`` is the last token."""

    #: decoders take no token types (a tokenizer borrowed from an encoder may still give them)
    INPUTS = ('input_ids', 'attention_mask')
    own_pooling = 'last'

    def __init__(self, name: str, model: nn.Module, tokenizer: Any, collate: Mapping[str, Any]):
        super().__init__(name, model, tokenizer, collate)
        _set_pad_token(tokenizer, name)
        model.config.use_cache = False  # embedding keeps no key/value cache
        self.takes_positions = 'position_ids' in inspect.signature(model.forward).parameters
        #: the end-of-sequence token appended to each text, or None where the tokenizer adds it itself (or has none)
        self.end_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if self.end_token_id is not None and tokenizer('a')['input_ids'][-1:] == [self.end_token_id]:
            self.end_token_id = None
        _check_ids(name, model, {'end-of-sequence': self.end_token_id, 'pad': tokenizer.pad_token_id})

    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = super().model_inputs(batch)
        if self.takes_positions:
            inputs['position_ids'] = positions(batch['attention_mask'])
        return inputs

    def pool_own(self, features: Features) -> torch.Tensor:
        return last_token(features.tensor, features.mask)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Texts -> token ids with the end-of-sequence token last (kept when a text is cut to ``max_length``),
        padded on the tokenizer's side."""
        if self.end_token_id is None:
            return super().tokenize(texts)
        c = self.collate
        cut = {'truncation': True, 'max_length': max(1, c['max_length'] - 1)} if c['truncation'] else {}
        rows = [ids + [self.end_token_id] for ids in self.tokenizer(texts, add_special_tokens=True, **cut)['input_ids']]
        length = max(max(map(len, rows)), c['max_length'] if c['padding'] == 'max_length' else 0)
        ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            start = length - len(row) if self._pads_left() else 0
            ids[i, start:start + len(row)] = torch.tensor(row)
            mask[i, start:start + len(row)] = 1
        return {'input_ids': ids, 'attention_mask': mask}
