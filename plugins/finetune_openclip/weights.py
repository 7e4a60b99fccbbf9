"""open_clip weights: finding pretrained files offline first, reading checkpoints, converting state dict
layouts (open_clip's, third-party, this plugin's) and writing a built model back in open_clip's layout."""
from __future__ import annotations

import os
import warnings
import zipfile
from typing import Any

import torch
from torch import nn

from finetune.errors import WeightsLoadError, WeightsNotFoundError
from finetune.hub import UrlFile, find_weights, network_problem, weights_not_found
from finetune.weights import load_into, load_state_dict
from finetune_hfhub import HUB_URL, HubFile, cached_file

from .config import PREFIX, _open_clip, _quiet_open_clip, pretrained_cfg

#: open_clip's file names on the Hugging Face hub (open_clip.constants)
HF_WEIGHTS_NAME = 'open_clip_pytorch_model.bin'
HF_SAFE_WEIGHTS_NAME = 'open_clip_model.safetensors'


def url_cache_dir() -> str:
    """The folder open_clip downloads URL weights into (``~/.cache/clip``, as OpenAI's clip package)."""
    return os.path.expanduser(os.path.join('~', '.cache', 'clip'))


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """(repo id, file names to try, safetensors first), as open_clip's ``download_pretrained`` picks them."""
    repo, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    names = []
    if filename == HF_WEIGHTS_NAME:
        names.append(HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith(('.bin', '.pth')):
        names.append(filename[:-4] + '.safetensors')
    return repo, names + [filename]


def _url_download(url: str):
    """open_clip's own URL download (it checks the file's checksum) into its folder."""
    def fetch() -> str:
        with _quiet_open_clip():
            return _open_clip().download_pretrained_from_url(url, cache_dir=url_cache_dir())
    return fetch


def pretrained_weights_path(model: str, tag: str, display: str) -> str:
    """The local file of open_clip's `tag` weights for `model`: from the Hugging Face cache (for tags hosted on
    the hub), open_clip's URL download folder, or downloaded; the resolver's WeightsNotFoundError, within
    seconds, when none has it and the network is off or unreachable."""
    cfg = pretrained_cfg(model, tag)
    if cfg.get('file'):
        return cfg['file']
    hf_hub, url = cfg.get('hf_hub', ''), cfg.get('url', '')
    sources = []
    if hf_hub:
        repo, names = _hf_candidates(hf_hub)
        sources.append(HubFile(repo, tuple(names)))
    if url:
        sources.append(UrlFile(url, folder=url_cache_dir(), fetch=_url_download(url)))
    if not sources:
        raise WeightsNotFoundError(f'{display!r}: open_clip lists no file for pretrained tag {tag!r} of {model!r}. '
                                   f"Pass a weights file as model_options={{'pretrained': '/path/to/file'}} or use "
                                   f"model_options={{'pretrained': False}}.")
    example = os.path.basename(url) if url else _hf_candidates(hf_hub)[1][0]
    return find_weights(display, sources, example=example, detail=f'open_clip {model!r}, pretrained {tag!r}',
                        name_hint=f"'{PREFIX}:{model}:/path/to/{example}'")


def _hf_text_sources(cfg: dict[str, Any]) -> list[str]:
    text_cfg = cfg.get('text_cfg', {})
    return list(dict.fromkeys(n for n in (text_cfg.get('hf_model_name'), text_cfg.get('hf_tokenizer_name')) if n))


def check_hf_text_available(cfg: dict[str, Any], model: str, display: str) -> None:
    """Raise WeightsNotFoundError within seconds when a Hugging Face text tower's files are out of reach.

    An HF text tower (``hf_model_name`` / ``hf_tokenizer_name``) needs the HF model's config and tokenizer
    even for random weights; a local directory always works, a hub id needs the HF cache or the network.
    """
    missing = [name for name in _hf_text_sources(cfg) if not os.path.isdir(name) and not cached_file(name, 'config.json')]
    if not missing:
        return
    reason = network_problem(HUB_URL)
    if reason is None:
        return  # transformers downloads them
    raise weights_not_found(
        display, [HubFile(name, ('config.json',)) for name in missing], reason, what='the text tower files',
        detail=f'open_clip {model!r}, whose text tower is the Hugging Face model {missing[0]!r}', path_option=False,
        name_hint='register an open_clip model config whose hf_model_name / hf_tokenizer_name is a local directory '
                  '(open_clip.add_model_config)', random_way=' (these files are needed for random weights too)')


def _read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors / torch file, or from OpenAI's TorchScript archives (``ViT-B-32.pt``)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            torchscript = any(n.endswith('constants.pkl') for n in archive.namelist())
        if torchscript:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore', FutureWarning)  # torch.jit.load is deprecated, still works
                    state = torch.jit.load(path, map_location='cpu').state_dict()
            except Exception as exc:  # noqa: BLE001
                raise WeightsLoadError(f'could not read the TorchScript archive {path!r}: {exc}') from exc
            return {k: v for k, v in state.items() if k not in ('input_resolution', 'context_length', 'vocab_size')}
    state = load_state_dict(path)
    if state and all(k.startswith('module.') for k in state):  # saved from DistributedDataParallel
        state = {k[len('module.'):]: v for k, v in state.items()}
    return state


#: our own module paths -> open_clip's, so a saved finetune model (torch.save(model.state_dict())) loads too
_FINETUNE_LAYOUT = (('towers.text.backbone.text.', 'text.'), ('towers.image.backbone.visual.', 'visual.'),
                    ('backbone.text.', 'text.'), ('backbone.visual.', 'visual.'))


def to_openclip_layout(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Bring a state dict into the layout of `model` (an open_clip model with ``text`` and ``visual``).

    Accepts open_clip's own checkpoints (old CLIP layout included), third-party layouts open_clip converts,
    and state dicts of finetune models built by this plugin.
    """
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed
    if any(k.startswith(('towers.', 'backbone.')) for k in state):
        renamed = {}
        for key, value in state.items():
            for ours, theirs in _FINETUNE_LAYOUT:
                if key.startswith(ours):
                    key = theirs + key[len(ours):]
                    break
            renamed[key] = value
        state = renamed
    state = convert_state_dict(model, dict(state))
    if 'positional_embedding' in state and not hasattr(model, 'positional_embedding'):
        state = convert_to_custom_text_state_dict(state)
    for key in ('logit_scale', 'logit_bias'):
        own = getattr(model, key, None)
        if key in state and own is not None and state[key].shape != own.shape and state[key].numel() == own.numel():
            state[key] = state[key].reshape(own.shape)
    if getattr(model, 'logit_bias', None) is not None and 'logit_bias' not in state and 'logit_scale' in state:
        state['logit_bias'] = torch.zeros_like(state['logit_scale'])
    own_keys = set(model.state_dict())
    # buffers the model rebuilds itself (causal masks, HF position ids) may come in a file: TorchScript
    # archives such as OpenAI's keep them, older transformers saved position_ids
    rebuilt = {n for n, _ in model.named_buffers()} - own_keys
    for key in [k for k in state if k not in own_keys and (k in rebuilt or 'text.' + k in rebuilt
                                                           or k.endswith('embeddings.position_ids'))]:
        del state[key]
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


def load_weights(model: nn.Module, path: str, display: str, tower: str | None) -> None:
    """Load the weights file at `path` into the open_clip `model` (only the parts `tower` needs, if given).

    Raises WeightsLoadError naming the missing, unexpected or differently shaped tensors.
    """
    state = to_openclip_layout(_read_checkpoint(path), model)
    if tower is None:
        load_into(model, state, path, display)
        return
    sub = 'text' if tower == 'text' else 'visual'
    part = {k[len(sub) + 1:]: v for k, v in state.items() if k.startswith(sub + '.')}
    load_into(getattr(model, sub), part, path, f'{display}[{tower}]')
