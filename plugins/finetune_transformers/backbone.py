"""A Hugging Face transformers encoder as a text backbone: tokens (N, L, C) with their attention mask (a decoder is
its subclass in :mod:`.decoder`)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from finetune.backbone import TOKENS, Backbone, Features
from finetune.errors import InputError, OptionError
from finetune_hfhub import enable_checkpointing, linear_names

#: the modules LoRA adapters wrap by default, where the model has them: a decoder's (Llama, Qwen, Mistral, Gemma)
#: attention and MLP projections, BERT's (and its kin's) attention and dense layers, DistilBERT's
LORA_TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj',
                'query', 'key', 'value', 'dense', 'q_lin', 'k_lin', 'v_lin', 'out_lin', 'lin1', 'lin2')


def pooling_mask(mask: torch.Tensor, prompt_length: torch.Tensor | None) -> torch.Tensor:
    """The attention `mask` with each row's first `prompt_length` real tokens set to 0 (whichever side the row is
    padded on): what the pooling averages over when a prompt is left out of it. The model itself still attends
    to every token."""
    if prompt_length is None:
        return mask
    position = mask.cumsum(1)  # 1 for the first real token of a row, 2 for the next, ...
    return mask * (position > prompt_length.to(mask.device)[:, None]).to(mask.dtype)


def _layer_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The longest ModuleList in `model` (the transformer layers) and its name."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best[1])):
            best = (name, module)
    return best


class HFTextBackbone(Backbone):
    """``AutoModel`` + its fast tokenizer. ``pool_own`` is the model's pooler output when it has one
    (BERT: dense + tanh on [CLS]), else the first token."""
    default_learning_rate = 3e-5
    #: the tokenizers library's threads do not survive the fork into DataLoader workers
    worker_environment = {'TOKENIZERS_PARALLELISM': 'false'}
    packages = ('transformers',)

    modality = 'text'
    layout = TOKENS
    param_prefix = 'model.'
    #: the pooler whose tokens :meth:`pool_own` starts from (sentence-transformers' name for it in an export)
    own_pooling = 'cls'

    def __init__(self, name: str, model: nn.Module, tokenizer: Any, collate: Mapping[str, Any]):
        super().__init__()
        self.model_name = name
        self.model = model
        self.tokenizer = tokenizer
        self.collate = dict(collate)
        hidden = int(model.config.hidden_size)
        self.own_dim = self.pooled_dim = hidden

    #: what the encoder takes from a tokenized batch, in this order (also the inputs of an exported graph)
    INPUTS = ('input_ids', 'attention_mask', 'token_type_ids')

    takes_prompts = True
    #: the key of a batch that holds, per row, how many of its first real tokens are a prompt's (pooled without
    #: them: ``include_prompt=False``)
    PROMPT_LENGTH = 'prompt_length'

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Features:
        out = self.model(**self.model_inputs(batch))
        return Features(out.last_hidden_state, pooling_mask(batch['attention_mask'], batch.get(self.PROMPT_LENGTH)))

    def prompt_tokens(self, prompt: str) -> int:
        """How many tokens of a text that begins with `prompt` are the prompt's, as sentence-transformers counts them:
        the prompt tokenized alone, less a closing special token (the leading one, [CLS], counts)."""
        ids = self.tokenize([prompt])
        real = ids['input_ids'][0][ids['attention_mask'][0].bool()]
        special = set(getattr(self.tokenizer, 'all_special_ids', None) or ())
        return int(len(real)) - (1 if len(real) and int(real[-1]) in special else 0)

    def exclude_prompt(self, batch: dict[str, torch.Tensor], prompt: str) -> dict[str, torch.Tensor]:
        """`batch` with each row's prompt length (:attr:`PROMPT_LENGTH`): its first real tokens that the pooling
        leaves out."""
        rows = batch['input_ids'].shape[0]
        return {**batch, self.PROMPT_LENGTH: torch.full((rows,), self.prompt_tokens(prompt), dtype=torch.long)}

    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the transformers model takes from a tokenized batch (:attr:`INPUTS`)."""
        return {k: v for k, v in batch.items() if k in self.INPUTS}

    def lora_target_modules(self) -> tuple[str, ...]:
        """The names of :data:`LORA_TARGETS` that this model's Linear layers have (a decoder's projections,
        BERT's query, key, value and dense)."""
        present = linear_names(self.model)
        return tuple(name for name in LORA_TARGETS if name in present)

    def enable_gradient_checkpointing(self) -> None:
        """transformers' own (non-reentrant) gradient checkpointing of the model's layers; OptionError for a model
        that has none."""
        if getattr(self.model.config, 'use_cache', False):
            self.model.config.use_cache = False  # a key/value cache is of no use to an embedder, and clashes
        if not enable_checkpointing(self.model):
            raise OptionError(f"option 'gradient_checkpointing': {self.model_name!r} ({type(self.model).__name__}) "
                              f'does not support gradient checkpointing in transformers; leave it False.')

    def pool_own(self, features: Features) -> torch.Tensor:
        pooler = getattr(self.model, 'pooler', None)
        if isinstance(pooler, nn.Module):
            return pooler(features.tensor)
        return features.tensor[:, 0]

    def preprocess(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        if isinstance(items, str):
            items = [items]
        bad = next((i for i, item in enumerate(items) if not isinstance(item, str)), None)
        if bad is not None:
            raise InputError(f'{self.model_name!r} is a text model: item {bad} is a '
                             f'{type(items[bad]).__name__}, expected a string.')
        if not items:
            raise InputError('no items to preprocess: expected a non-empty list of strings.')
        c = self.collate
        batch = self.tokenize(list(items))
        if not c['truncation'] and batch['input_ids'].shape[1] > c['max_length']:
            lengths = batch['attention_mask'].sum(1)
            longest = int(lengths.argmax())
            text = items[longest] if len(items[longest]) <= 60 else items[longest][:57] + '...'
            raise InputError(f'the text {text!r} is {int(lengths[longest])} tokens long, more than max_length='
                             f"{c['max_length']}, and collate_options truncation=False. Shorten it, or build "
                             f"the model with collate_options={{'truncation': True}} to cut long texts.")
        return batch

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Texts -> a padded batch of token ids and their attention mask, as the collate options say."""
        c = self.collate
        return dict(self.tokenizer(texts, padding=c['padding'], truncation=c['truncation'],
                                   max_length=c['max_length'], return_tensors='pt'))

    def slice_batch(self, batch: Mapping[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
        """Rows ``start:stop``, without the token columns that are padding in all of them (a chunk of short
        texts in a batch with a long one is as short as its own longest text). Padding on the left stays: there,
        a token's absolute position counts from the batch's first column."""
        part = super().slice_batch(batch, start, stop)
        mask = part.get('attention_mask') if isinstance(part, Mapping) else None
        if (not isinstance(mask, torch.Tensor) or mask.dim() != 2 or self._pads_left()
                or bool(mask.any(0).all())):
            return part
        keep = mask.any(0)  # padding on the right: the kept columns are the first ones
        return {k: v[:, keep] if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape == mask.shape else v
                for k, v in part.items()}

    def _pads_left(self) -> bool:
        return getattr(self.tokenizer, 'padding_side', 'right') == 'left'

    def row_lengths(self, batch: Any) -> torch.Tensor | None:
        """Each row's token count (its attention mask's sum); a transformer encoder's rows never interact, so
        training may embed them in length groups (:meth:`~finetune.backbone.Backbone.length_groups`). None for
        a tokenizer that pads on the left, where cutting a group's padding would move its tokens' positions."""
        mask = batch.get('attention_mask') if isinstance(batch, Mapping) else None
        if self._pads_left() or not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            return None
        return mask.sum(1)

    def join_batches(self, batches: Sequence[Any]) -> dict[str, torch.Tensor] | None:
        """Tokenized batches as one, each padded on the right to the longest (token ids with the tokenizer's pad
        token, the rest with 0); None unless every batch holds the same (rows, length) tensors, and for a
        tokenizer that pads on the left (more padding would move the tokens' positions)."""
        if self._pads_left() or not batches or not all(
                isinstance(b, Mapping) and isinstance(b.get('attention_mask'), torch.Tensor)
                and b['attention_mask'].dim() == 2 for b in batches):
            return None
        keys = set(batches[0])
        if any(set(b) != keys or any(not isinstance(v, torch.Tensor) or v.shape != b['attention_mask'].shape
                                     for v in b.values()) for b in batches):
            return None
        length = max(b['attention_mask'].shape[1] for b in batches)
        pad_id = getattr(self.tokenizer, 'pad_token_id', None) or 0
        pad = torch.nn.functional.pad
        return {k: torch.cat([pad(b[k], (0, length - b[k].shape[1]), value=pad_id if k == 'input_ids' else 0)
                              for b in batches]) for k in batches[0]}

    def check_batch(self, batch: Any) -> None:
        if not isinstance(batch, Mapping) or 'input_ids' not in batch or 'attention_mask' not in batch:
            what = f'a tensor of shape {tuple(batch.shape)}' if isinstance(batch, torch.Tensor) \
                else type(batch).__name__
            raise InputError(f'{self.model_name!r} is a text model: expected a tokenized batch (a dict with '
                             f'input_ids and attention_mask, as model.preprocess(texts) makes), got {what}. '
                             f'Use model.encode(texts) for strings.')

    def export_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The graph's inputs: token ids, their mask and (for models that have them) token types, each
        ``(batch, sequence)``; what else a tokenizer returns (offsets, lengths) stays out."""
        return {k: batch[k] for k in self.INPUTS if k in batch}

    def export(self, directory: str) -> str:
        """Write the config and tokenizer (not the weights: the artifact holds those) so the model
        rebuilds offline; returns the registry name that rebuilds it, relative to the artifact."""
        self.model.config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return 'hf:./backbone'

    def layer_groups(self) -> list[str]:
        found = _layer_list(self.model)
        if found is None:
            return super().layer_groups()
        name, layers = found
        return [f'model.{name}.{i}' for i in range(len(layers))]
