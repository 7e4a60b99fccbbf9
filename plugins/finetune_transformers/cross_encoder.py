"""finetune cross-encoder plugin: Hugging Face sequence-classification models that score (query, document) pairs.

Registered through the entry-point group ``finetune.cross_encoders`` (its own entry point, so that a failure
here never touches the transformers backbones). ``crossencoder-base-en`` is Jina Finetuner's name for
cross-encoder/ms-marco-MiniLM-L-6-v2; any sequence-classification folder (one or two labels) is
``hf:<folder>``, and a hub id as ``hf:<id>`` is looked up in the local Hugging Face cache first. Weights are
found offline first, with the same lookup and the same message as the backbones'.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import torch

from finetune.cross_encoders import CrossEncoder
from finetune.errors import UnknownModelError, WeightsLoadError
from finetune.options import Option, boolean, one_of, positive_int
from finetune.registry import CROSS_ENCODER_TASK, BackbonePlugin, BackboneSpec
from finetune.weights import load_into, load_state_dict
from finetune_hfhub import OFFLINE_ENVS

from .layout import _config_json
from .names import PREFIX, hf_source
from .weights import _load_model, _load_tokenizer, _local_only

NAMED = {
    'crossencoder-base-en': (
        'cross-encoder/ms-marco-MiniLM-L-6-v2',
        'MiniLM-L6 cross-encoder trained on MS MARCO passage ranking (cross-encoder/ms-marco-MiniLM-L-6-v2); '
        'scores English (query, passage) pairs'),
}


class HFCrossEncoder(CrossEncoder):
    """A sequence-classification model reading ``[CLS] query [SEP] document [SEP]``.

    One label: the score is its logit, through a sigmoid with ``activation='sigmoid'`` (the default: a
    probability in [0, 1], on the scale of cosine margins). Two labels: the probability of label 1, or the
    logit difference with ``activation='none'``."""

    def __init__(self, name: str, model: torch.nn.Module, tokenizer: Any, max_length: int, activation: str):
        super().__init__()
        labels = int(getattr(model.config, 'num_labels', 1))
        if labels not in (1, 2):
            raise WeightsLoadError(f'{name!r} has {labels} output labels; a cross-encoder gives one relevance score '
                                   f'(1 label) or relevant / not relevant (2 labels).')
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.max_length, self.activation, self.num_labels = max_length, activation, labels

    def score_batch(self, queries: Sequence[str], documents: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(list(queries), list(documents), padding=True, truncation='longest_first',
                               max_length=self.max_length, return_tensors='pt')
        batch = {k: v.to(self.device) for k, v in batch.items()}
        logits = self.model(**batch).logits.float()
        if self.num_labels == 2:
            if self.activation == 'none':
                return logits[:, 1] - logits[:, 0]
            return logits.softmax(-1)[:, 1]
        score = logits[:, 0]
        return score.sigmoid() if self.activation == 'sigmoid' else score


def build_cross_encoder(name: str, source: str, options: dict[str, Any]) -> HFCrossEncoder:
    """The sequence-classification model at `source` (hub id or folder) with its tokenizer."""
    from transformers import AutoModelForSequenceClassification
    trust = options['trust_remote_code']
    local_only, reason = _local_only(source)
    pretrained = options['pretrained']
    model = _load_model(name, source, local_only, trust, reason, pretrained,
                        auto_class=AutoModelForSequenceClassification)
    if isinstance(pretrained, str):
        load_into(model, load_state_dict(pretrained), pretrained, name)
    tokenizer = _load_tokenizer(source, local_only, trust, name, reason)
    return HFCrossEncoder(name, model, tokenizer, options['max_length'], options['activation'])


def _options(max_length: int) -> tuple[Option, ...]:
    return (
        Option('max_length', 'int', max_length, 'longest (query, document) token sequence; longer pairs are cut, '
               'the longer text first', positive_int()),
        Option('activation', 'str', 'sigmoid', "'sigmoid': scores in [0, 1] (two labels: the probability of "
               "label 1); 'none': the raw logit", one_of(('sigmoid', 'none'))),
        Option('trust_remote_code', 'bool', False, "run a checkpoint's own Python code (off unless you trust its "
               'source)', boolean),
    )


def _spec(public: str, source: str, description: str, default_for: tuple[str, ...] = ()) -> BackboneSpec:
    config = _config_json(source) or {}
    return BackboneSpec(
        name=public, tasks=(CROSS_ENCODER_TASK,), modality='text', architecture='transformer cross-encoder',
        output_dim=1, description=description, build=functools.partial(build_cross_encoder, public, source),
        default_for=default_for,
        options=_options(int(min(config.get('max_position_embeddings', 512), 512))))


def _is_sequence_classifier(config: dict) -> bool:
    return any(str(a).endswith('ForSequenceClassification') for a in config.get('architectures') or ())


def resolve(prefix: str, rest: str) -> BackboneSpec:
    """``hf:<folder or hub id>``: a sequence-classification model as a cross-encoder."""
    source = hf_source(rest)
    config = _config_json(source)  # a folder's, or a hub id's in the local cache (None: not on this machine)
    if config is None and os.path.isdir(source):
        raise UnknownModelError(f'hf:{rest}: the folder holds no config.json, so no transformers model; expected '
                                f'a sequence-classification model saved with save_pretrained.')
    if config is not None and not _is_sequence_classifier(config):
        found = ', '.join(config.get('architectures') or ()) or 'no architectures entry'
        raise UnknownModelError(f'hf:{rest}: config.json names {found}, not a sequence-classification model '
                                f'(...ForSequenceClassification), so it scores no pair. Use it as the relation '
                                f'miner, or give a cross-encoder.')
    return _spec(f'{PREFIX}:{rest}', source, f'sequence-classification model from {source}')


def specs() -> list[BackboneSpec]:
    return [_spec(public, hub_id, text, default_for=(CROSS_ENCODER_TASK,)) for public, (hub_id, text) in NAMED.items()]


plugin = BackbonePlugin(
    name='transformers', specs=specs, prefixes=(PREFIX,), resolve=resolve, offline_envs=OFFLINE_ENVS,
    note='any sequence-classification model as hf:<folder or hub id> (cross-encoding)')

__all__ = ['plugin', 'HFCrossEncoder']
