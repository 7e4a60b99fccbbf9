"""torchvision's default weights of a model: where their file is, and what their metadata says
(preprocessing, description). torchvision is imported on first use only."""
from __future__ import annotations

import functools
from typing import Any

import torch

from finetune.hub import UrlFile, find_weights
from finetune.preprocessing import IMAGENET_MEAN, IMAGENET_STD

from .backbone import family_of


def models_module():
    """``torchvision.models``, imported on first use (listing models never needs it)."""
    import torchvision.models
    return torchvision.models


def default_weights(name: str):
    return models_module().get_model_weights(name).DEFAULT


def weights_file(name: str, pretrained: bool | str) -> str:
    """The weights file of `name`: the default torchvision weights' (cached or downloaded) when `pretrained`
    is True, else the path `pretrained` names."""
    if pretrained is True:
        weights = default_weights(name)
        return find_weights(name, [UrlFile(weights.url)])
    return pretrained


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


def interpolate_vit_positions(state: dict, image_size: int, patch_size: int) -> dict:
    """`state` with ViT's position embeddings resized (bicubic) to the patch grid of `image_size`."""
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
