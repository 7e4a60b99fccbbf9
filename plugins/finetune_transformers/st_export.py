"""The ``sentence-transformers`` export format: a text model of this family as a sentence-transformers folder.

``SentenceTransformer(folder)`` loads it offline and embeds like the finetune model: the transformer and its
tokenizer at the folder's root, then ``1_Pooling`` (mean, cls, max or last token under the attention mask), one
``Dense`` module per linear layer of a projection head (with the activation between them), and ``Normalize`` when
the model L2-normalizes. A model keeping BERT's own pooler output becomes cls pooling plus a tanh Dense layer with
the pooler's weights.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from finetune.registry import ExportFormat

from .backbone import HFTextBackbone

NAME = 'sentence-transformers'
_MODULES = 'sentence_transformers.models.'
_POOLING = {'avg': 'pooling_mode_mean_tokens', 'cls': 'pooling_mode_cls_token', 'max': 'pooling_mode_max_tokens',
            'last': 'pooling_mode_lasttoken'}
_ACTIVATION = {nn.ReLU: 'ReLU', nn.GELU: 'GELU', nn.Tanh: 'Tanh', nn.SiLU: 'SiLU'}


def problem(model) -> str | None:
    """Why `model` has no sentence-transformers form, or None."""
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, HFTextBackbone):
        return (f'it is a {getattr(model, "modality", "?")} model; the format takes text models of the transformers '
                f'family (hf:..., all-minilm-l6-v2, bert-base-en, ...)')
    if model.pooler is not None and model.pooler.name not in _POOLING:
        return f'its {model.pooler.name} pooler has no sentence-transformers module (mean, cls, max and last have)'
    options = getattr(model, 'options', {})
    if options.get('include_prompt', True) is False and (model.pooler is None or model.pooler.name == 'cls') \
            and options.get('prompts'):
        return ("it leaves prompts out of its pooling (include_prompt=False) but pools the first token, which "
                "sentence-transformers would take after the prompt")
    if getattr(backbone, 'end_token_id', None) is not None:
        return ('finetune appends the end-of-sequence token to each text, which its tokenizer does not add itself '
                'and sentence-transformers would leave out')
    return None


def _dense_layers(model) -> list[tuple[nn.Linear, str]]:
    """(linear layer, activation after it) of what follows the pooling, as sentence-transformers Dense modules."""
    out: list[tuple[nn.Linear, str]] = []
    own_pooler = getattr(model.backbone.model, 'pooler', None)
    if model.pooler is None and isinstance(own_pooler, nn.Module):  # BERT: tanh(dense(CLS))
        out.append((own_pooler.dense, 'Tanh'))
    if model.projection is not None:
        for layer in model.projection.layers:
            if isinstance(layer, nn.Linear):
                out.append((layer, 'Identity'))
            elif type(layer) in _ACTIVATION:
                out[-1] = (out[-1][0], _ACTIVATION[type(layer)])
    if getattr(model, 'truncate_dim', None) is not None:  # a Matryoshka size: keep the leading dimensions, exactly
        full = out[-1][0].out_features if out else model.backbone.pooled_dim
        keep = nn.Linear(full, model.truncate_dim, bias=False)
        with torch.no_grad():
            keep.weight.copy_(torch.eye(full)[:model.truncate_dim])
        out.append((keep, 'Identity'))
    return out


def _st_config(model) -> dict:
    """``config_sentence_transformers.json``: cosine similarity, the model's prompts and default prompt, and the
    Matryoshka size it was cut to (``truncate_dim``, for the record: the folder's last Dense module already cuts)."""
    options = getattr(model, 'options', {})
    config: dict[str, Any] = {'similarity_fn_name': 'cosine', 'prompts': dict(options.get('prompts') or {}),
                              'default_prompt_name': options.get('default_prompt')}
    if getattr(model, 'truncate_dim', None) is not None:
        config['truncate_dim'] = model.truncate_dim
    return config


def _activation_path(name: str) -> str:
    return 'torch.nn.modules.linear.Identity' if name == 'Identity' else f'torch.nn.modules.activation.{name}'


def _write_json(path: str, value: Any) -> None:
    with open(path, 'w') as f:
        json.dump(value, f, indent=2)


def write(model, folder: str) -> dict:
    """Write `model` as a sentence-transformers folder into `folder`; returns the modules written."""
    from safetensors.torch import save_file
    backbone: HFTextBackbone = model.backbone
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    _write_json(os.path.join(folder, 'sentence_bert_config.json'),
                {'max_seq_length': backbone.collate['max_length'], 'do_lower_case': False})
    modules = [{'idx': 0, 'name': '0', 'path': '', 'type': _MODULES + 'Transformer'}]
    pooler = backbone.own_pooling if model.pooler is None else model.pooler.name
    os.makedirs(os.path.join(folder, '1_Pooling'))
    pooling = {'word_embedding_dimension': backbone.pooled_dim, **{key: pooler == mode for mode, key in
                                                                    _POOLING.items()},
               'include_prompt': model.options.get('include_prompt', True) is not False}
    _write_json(os.path.join(folder, '1_Pooling', 'config.json'), pooling)
    modules.append({'idx': 1, 'name': '1', 'path': '1_Pooling', 'type': _MODULES + 'Pooling'})
    for linear, activation in _dense_layers(model):
        idx = len(modules)
        path = f'{idx}_Dense'
        os.makedirs(os.path.join(folder, path))
        _write_json(os.path.join(folder, path, 'config.json'), {
            'in_features': linear.in_features, 'out_features': linear.out_features,
            'bias': linear.bias is not None, 'activation_function': _activation_path(activation)})
        state = {'linear.weight': linear.weight.detach().contiguous().cpu()}
        if linear.bias is not None:
            state['linear.bias'] = linear.bias.detach().contiguous().cpu()
        save_file(state, os.path.join(folder, path, 'model.safetensors'))
        modules.append({'idx': idx, 'name': str(idx), 'path': path, 'type': _MODULES + 'Dense'})
    if model.normalize or getattr(model, 'truncate_dim', None) is not None:  # a cut is normalized again
        idx = len(modules)
        os.makedirs(os.path.join(folder, f'{idx}_Normalize'))
        modules.append({'idx': idx, 'name': str(idx), 'path': f'{idx}_Normalize', 'type': _MODULES + 'Normalize'})
    _write_json(os.path.join(folder, 'modules.json'), modules)
    _write_json(os.path.join(folder, 'config_sentence_transformers.json'), _st_config(model))
    facts = {'modules': [m['type'].rsplit('.', 1)[-1] for m in modules]}
    if getattr(model, 'truncate_dim', None) is not None:
        facts['dim'] = model.truncate_dim
    return facts


def check(model, folder: str, trust_remote_code: bool = False) -> Callable[[list, int], np.ndarray]:
    """An encoder over the folder as sentence-transformers loads it (offline, on the CPU), for the parity gate;
    `trust_remote_code` is the export caller's own."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        from finetune.errors import ExportError
        raise ExportError(f'the {NAME} export is checked by loading it with sentence-transformers, which is not '
                          f'installed: pip install sentence-transformers') from exc
    st = SentenceTransformer(folder, device='cpu', local_files_only=True, trust_remote_code=trust_remote_code)
    return lambda items, batch_size: st.encode(items, batch_size=batch_size, convert_to_numpy=True)


def usage(folder: str) -> str:
    return ('from sentence_transformers import SentenceTransformer\n\n'
            "model = SentenceTransformer('.')   # this folder, offline\n"
            "model.encode(['some text'])")


FORMAT = ExportFormat(name=NAME, suffix='-st', problem=problem, write=write, check=check, usage=usage,
                      description='a sentence-transformers folder (text models of the transformers family)',
                      takes_dim=True)
