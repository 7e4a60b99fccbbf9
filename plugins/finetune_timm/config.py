"""What timm says about a model name: its preprocessing, read lazily (importing this module does not
import timm)."""
from __future__ import annotations

import functools
from typing import Any

PREFIX = 'timm'


def _timm():
    import timm
    return timm


#: timm's preprocessing for the named models, so that listing them does not import timm (checked by tests)
KNOWN_PREPROCESS = {'tf_efficientnet_lite0': {'image_size': 224, 'resize_size': 256, 'mean': (0.5, 0.5, 0.5),
                                              'std': (0.5, 0.5, 0.5), 'interpolation': 'bicubic'}}


def architecture_of(name: str) -> str:
    """'transformer' or 'cnn', from the model's name."""
    return 'transformer' if any(k in name for k in ('vit', 'swin', 'deit', 'beit', 'eva', 'former')) else 'cnn'


def preprocess_defaults(name: str) -> dict[str, Any]:
    """The preprocessing timm's default pretrained config of `name` expects."""
    return KNOWN_PREPROCESS.get(name) or timm_preprocess_defaults(name)


@functools.lru_cache(maxsize=None)
def timm_preprocess_defaults(name: str) -> dict[str, Any]:
    cfg = _timm().get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    size = int(cfg.get('input_size', (3, 224, 224))[-1])
    crop_pct = float(cfg.get('crop_pct', 0.875) or 0.875)
    interpolation = cfg.get('interpolation', 'bilinear')
    return {
        'image_size': size,
        'resize_size': int(round(size / crop_pct)),
        'mean': tuple(cfg.get('mean', (0.485, 0.456, 0.406))),
        'std': tuple(cfg.get('std', (0.229, 0.224, 0.225))),
        'interpolation': interpolation if interpolation in ('bilinear', 'bicubic', 'nearest') else 'bilinear',
    }
