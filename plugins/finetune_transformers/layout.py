"""Reading a model folder's JSON files: ``config.json`` (local or in the hub cache) and the layout of a
sentence-transformers directory (its transformer, pooling, normalization and max_seq_length)."""
from __future__ import annotations

import json
import os
from typing import Any

from finetune_hfhub import cached_file

from finetune.errors import FinetuneError

ST_POOLING_MODES = {'pooling_mode_cls_token': 'cls', 'pooling_mode_mean_tokens': 'mean',
                    'pooling_mode_max_tokens': 'max', 'pooling_mode_lasttoken': 'lasttoken'}
#: sentence-transformers' pooling modes that finetune's poolers name otherwise
ST_POOLERS = {'lasttoken': 'last'}


def _st_pooling_mode(directory: str, config: dict) -> str:
    """The one pooling mode of a sentence-transformers Pooling config: ``"pooling_mode": "mean"`` (as
    sentence-transformers 6 writes it; a list of one mode too) or one true ``pooling_mode_*_tokens`` flag (as
    earlier versions write it). FinetuneError for several modes or one finetune does not reproduce."""
    named = config.get('pooling_mode')
    if isinstance(named, str) or isinstance(named, list) and len(named) == 1:
        mode = named if isinstance(named, str) else named[0]
        if mode in ST_POOLING_MODES.values():
            return ST_POOLERS.get(mode, mode)
    modes = [mode for key, mode in ST_POOLING_MODES.items() if config.get(key)]
    unsupported = [k for k, v in config.items() if k.startswith('pooling_mode_') and v and k not in ST_POOLING_MODES]
    if named is not None or len(modes) != 1 or unsupported:
        raise FinetuneError(f'{directory}: pooling {config} is not a mode finetune reproduces; supported: '
                            f'"pooling_mode" one of {", ".join(ST_POOLING_MODES.values())}, or exactly one of '
                            f'{", ".join(ST_POOLING_MODES)}.')
    return ST_POOLERS.get(modes[0], modes[0])


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
ST_CONFIG = 'config_sentence_transformers.json'


def _st_prompts(directory: str) -> dict[str, Any]:
    """The prompts and default prompt that a sentence-transformers folder ships in its ``ST_CONFIG`` (read as JSON
    data); FinetuneError for prompts that are not a mapping of names to texts."""
    config = _read_json(os.path.join(directory, ST_CONFIG)) or {}
    prompts = config.get('prompts') or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and k and isinstance(v, str)
                                                for k, v in prompts.items()):
        raise FinetuneError(f'{os.path.join(directory, ST_CONFIG)}: "prompts" must map prompt names to texts, got '
                            f'{str(prompts)[:200]}.')
    default = config.get('default_prompt_name') or None
    if default is not None and default not in prompts:
        raise FinetuneError(f'{os.path.join(directory, ST_CONFIG)}: "default_prompt_name" {default!r} is not among '
                            f'its prompts ({", ".join(map(repr, prompts)) or "none"}).')
    return {'prompts': prompts, 'default_prompt': default}

def sentence_transformers_layout(directory: str) -> dict[str, Any] | None:
    """For a sentence-transformers directory: where its transformer lives, its pooling, normalization
    and max_seq_length; None for a plain transformers directory. Raises FinetuneError for modules
    finetune cannot reproduce (Dense layers, several pooling modes at once)."""
    modules = _read_json(os.path.join(directory, 'modules.json'))
    if not modules:
        return None
    layout: dict[str, Any] = {'transformer': directory, 'pooler': 'mean', 'normalize': False, 'max_length': None,
                              'include_prompt': True, **_st_prompts(directory)}
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
            pooling = _read_json(os.path.join(path, 'config.json')) or {}
            layout['pooler'] = _st_pooling_mode(directory, pooling)
            layout['include_prompt'] = pooling.get('include_prompt', True) is not False
        elif kind == 'Normalize':
            layout['normalize'] = True
        else:
            raise FinetuneError(f'{directory}: sentence-transformers module {module.get("type")!r} is not '
                                f'supported (finetune loads Transformer, Pooling and Normalize).')
    return layout
