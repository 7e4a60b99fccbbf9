"""Building a torchvision model as a backbone: construction (on the meta device to probe its dims),
pretrained weights loaded into it, and the cut at its classifier."""
from __future__ import annotations

import functools
import warnings
from typing import Any

import torch

from finetune.errors import WeightsLoadError
from finetune.meta import build_on_meta
from finetune.weights import load_into, load_state_dict

from .backbone import Family, TorchvisionBackbone, family_of
from .catalog import _shipped_table, preprocess_defaults
from .weights import interpolate_vit_positions, models_module, weights_file


def _constructor_kwargs(name: str, family: Family, image_size: int, pretrained: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if family.key == 'vit':
        kwargs['image_size'] = image_size
    if family.key == 'maxvit':
        kwargs['input_size'] = (image_size, image_size)
    if family.key in ('googlenet', 'inception'):
        # build the auxiliary heads so pretrained state dicts fit; the backbone drops them afterwards
        # transform_input always on: a saved model is rebuilt with pretrained=False and must compute the same
        kwargs.update(aux_logits=True, transform_input=True, init_weights=not pretrained)
    return kwargs


def _construct(name: str, family: Family, image_size: int, pretrained: bool):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        warnings.simplefilter('ignore', FutureWarning)
        kwargs = _constructor_kwargs(name, family, image_size, pretrained)
        return models_module().get_model(name, weights=None, **kwargs)


@functools.lru_cache(maxsize=None)
def probe_dims(name: str) -> tuple[int, int]:
    """``(own_dim, pooled_dim)`` of `name`, by a forward pass on the meta device (no weights allocated)."""
    family = family_of(name)
    pre = preprocess_defaults(name)
    backbone = build_on_meta(lambda: TorchvisionBackbone(
        name, _construct(name, family, pre['image_size'], pretrained=False), family, pre))
    x = torch.empty(1, 3, pre['image_size'], pre['image_size'], device='meta')
    with torch.no_grad():
        feats = backbone(x)
        own = backbone.pool_own(feats)
        t = feats.tensor
        pooled = backbone.after_pooler(t.mean(dim=(2, 3)) if t.dim() == 4 else t.mean(dim=1))
    return int(own.shape[-1]), int(pooled.shape[-1])


def dims(name: str) -> tuple[int, int]:
    """``(own_dim, pooled_dim)``: from the shipped table, else probed on the meta device and cached."""
    table = _shipped_table()
    return tuple(table[name]['dims']) if table and name in table else probe_dims(name)


def build(name: str, options: dict[str, Any]) -> TorchvisionBackbone:
    """Build the backbone of torchvision model `name` with validated `options`."""
    family = family_of(name)
    pre = options['preprocess_options']
    pretrained = options['pretrained']
    own_dim, pooled_dim = dims(name)
    if pretrained is False:
        model = _construct(name, family, pre['image_size'], pretrained=False)
        return TorchvisionBackbone(name, model, family, pre, own_dim, pooled_dim)

    path = weights_file(name, pretrained)
    state = load_state_dict(path)
    if family.key == 'vit':
        state = interpolate_vit_positions(state, pre['image_size'], int(name.split('_')[-1]))
    # no random init: every tensor comes from the file
    model = build_on_meta(lambda: _construct(name, family, pre['image_size'], pretrained=True))
    try:
        load_into(model, state, path, name, assign=True)
        return TorchvisionBackbone(name, model, family, pre, own_dim, pooled_dim)
    except WeightsLoadError as whole_model_error:
        # maybe the file holds the backbone alone (a torchvision model without its classifier)
        backbone = TorchvisionBackbone(name, model, family, pre, own_dim, pooled_dim)
        try:
            load_into(backbone, state, path, name, assign=True)
        except WeightsLoadError:
            raise whole_model_error from None
        return backbone
