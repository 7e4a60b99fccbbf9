"""finetune plugin: every torchvision classification model as an image-to-image backbone.

Registered through the entry point ``finetune.backbones: torchvision`` in finetune's pyproject, the same
way a third-party package would. Also provides Jina Finetuner's names ``resnet-base``, ``resnet-large``,
``efficientnet-base`` and ``efficientnet-large``.
"""
from __future__ import annotations

import functools
import importlib.metadata
import warnings
from typing import Any

import torch

from finetune.errors import WeightsLoadError
from finetune.meta import build_on_meta
from finetune.preprocessing import IMAGENET_MEAN, IMAGENET_STD, image_preprocess_options
from finetune.registry import BackbonePlugin, BackboneSpec
from finetune.hub import UrlFile, find_weights
from finetune.weights import load_into, load_state_dict

from ._table import MODELS, TORCHVISION_VERSION
from .backbone import FAMILIES, Family, TorchvisionBackbone, family_of

ALIASES = {
    'resnet-base': ('resnet50', 'ResNet50 pre-trained on ImageNet'),
    'resnet-large': ('resnet152', 'ResNet152 pre-trained on ImageNet'),
    'efficientnet-base': ('efficientnet_b4', 'EfficientNet B4 pre-trained on ImageNet'),
    'efficientnet-large': ('efficientnet_b7', 'EfficientNet B7 pre-trained on ImageNet'),
}


def _models():
    import torchvision.models
    return torchvision.models


def _shipped_table() -> dict[str, dict[str, Any]] | None:
    """The shipped per-model table when it was made for the installed torchvision, else None.

    The version is read from package metadata, so listing and describing need not import torchvision.
    """
    try:
        installed = importlib.metadata.version('torchvision')
    except importlib.metadata.PackageNotFoundError:
        return None
    return MODELS if installed.split('+')[0] == TORCHVISION_VERSION else None


def live_classification_models() -> list[str]:
    """Every classification model name the installed torchvision offers, whose family this plugin knows."""
    tvm = _models()
    return [n for n in tvm.list_models(module=tvm) if family_of(n) is not None]


def classification_models() -> list[str]:
    table = _shipped_table()
    return list(table) if table is not None else live_classification_models()


def default_weights(name: str):
    return _models().get_model_weights(name).DEFAULT


@functools.lru_cache(maxsize=None)
def live_preprocess_defaults(name: str) -> dict[str, Any]:
    """Preprocessing that `name`'s default torchvision weights expect, read from torchvision."""
    kw = dict(default_weights(name).transforms.keywords)
    interpolation = kw.get('interpolation')
    return {
        'image_size': int(kw.get('crop_size', 224)),
        'resize_size': int(kw.get('resize_size', 256)),
        'mean': tuple(kw.get('mean', IMAGENET_MEAN)),
        'std': tuple(kw.get('std', IMAGENET_STD)),
        'interpolation': getattr(interpolation, 'value', 'bilinear'),
    }


def preprocess_defaults(name: str) -> dict[str, Any]:
    table = _shipped_table()
    return dict(table[name]['preprocess']) if table and name in table else live_preprocess_defaults(name)


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
        return _models().get_model(name, weights=None, **_constructor_kwargs(name, family, image_size, pretrained))


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


def _interpolate_vit_positions(state: dict, image_size: int, patch_size: int) -> dict:
    key = 'encoder.pos_embedding'
    pos = state.get(key)
    grid = image_size // patch_size
    if pos is None or pos.shape[1] == grid * grid + 1:
        return state
    old = int(round((pos.shape[1] - 1) ** 0.5))
    cls, patches = pos[:, :1], pos[:, 1:]
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(patches, size=(grid, grid), mode='bicubic', align_corners=True)
    state = dict(state)
    state[key] = torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)
    return state


def build(name: str, options: dict[str, Any]) -> TorchvisionBackbone:
    """Build the backbone of torchvision model `name` with validated `options`."""
    family = family_of(name)
    pre = options['preprocess_options']
    pretrained = options['pretrained']
    own_dim, pooled_dim = dims(name)
    if pretrained is False:
        model = _construct(name, family, pre['image_size'], pretrained=False)
        return TorchvisionBackbone(name, model, family, pre, own_dim, pooled_dim)

    if pretrained is True:
        weights = default_weights(name)
        path = find_weights(name, [UrlFile(weights.url)])
    else:
        path = pretrained
    state = load_state_dict(path)
    if family.key == 'vit':
        state = _interpolate_vit_positions(state, pre['image_size'], int(name.split('_')[-1]))
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


def model_description(name: str) -> str:
    table = _shipped_table()
    return table[name]['description'] if table and name in table else live_description(name)


def live_description(name: str) -> str:
    """A one-line description from torchvision's weights metadata."""
    family = family_of(name)
    weights = default_weights(name)
    meta = weights.meta
    acc = next(iter(meta.get('_metrics', {}).values()), {}).get('acc@1')
    params = meta.get('num_params')
    parts = [f'{family.label} from torchvision']
    if params:
        parts.append(f'{params / 1e6:.1f}M params')
    if acc:
        parts.append(f'ImageNet-1k top-1 {acc:.1f}% ({type(weights).__name__}.{weights.name})')
    return ', '.join(parts)


def _pooler_note(family: Family, own: int, pooled: int) -> str:
    if not family.keep_neck_with_pooler:
        return (f"A pooler (e.g. 'GeM') replaces the adaptive avgpool and the hidden classifier layers: "
                f'output_dim {own} -> {pooled}.')
    if family.layout == 'tokens':
        return f'A pooler replaces the class-token readout and pools all tokens: output_dim {pooled}.'
    return f'A pooler replaces the global average pooling: output_dim {pooled}.'


def _spec(name: str, alias: str | None = None, description: str | None = None) -> BackboneSpec:
    family = family_of(name)
    own, pooled = dims(name)
    return BackboneSpec(
        name=alias or name,
        tasks=('image-to-image',),
        modality='image',
        architecture=family.architecture,
        output_dim=own,
        description=description or model_description(name),
        build=functools.partial(build, name),
        dims=lambda options, _n=name: dims(_n),
        preprocess_options=image_preprocess_options(**preprocess_defaults(name)),
        alias_of=name if alias else None,
        pooler_note=_pooler_note(family, own, pooled),
        layout=family.layout,
    )


def specs() -> list[BackboneSpec]:
    out = [_spec(n) for n in classification_models()]
    out += [_spec(target, alias, text) for alias, (target, text) in ALIASES.items()]
    return out


plugin = BackbonePlugin(name='torchvision', specs=specs)

__all__ = ['plugin', 'build', 'dims', 'probe_dims', 'classification_models', 'live_classification_models',
           'preprocess_defaults', 'live_preprocess_defaults', 'model_description', 'live_description', 'FAMILIES']
