"""Building a PointNet++ backbone: trained from scratch, or from a weights file you saved."""
from __future__ import annotations

from typing import Any

from finetune.errors import WeightsNotFoundError
from finetune.weights import load_into, load_state_dict

from .backbone import PointNetBackbone


def build(name: str, variant: str, options: dict[str, Any]) -> PointNetBackbone:
    backbone = PointNetBackbone(name, variant, options)
    pretrained = options['pretrained']
    if pretrained is True:
        raise WeightsNotFoundError(
            f'{name!r} has no published pretrained weights: it is trained from scratch on your data. Build it '
            f"with model_options={{'pretrained': False}} (the default), or pass a weights file you saved.")
    if isinstance(pretrained, str):
        state = load_state_dict(pretrained)
        load_into(backbone, state, pretrained, name)
    return backbone
