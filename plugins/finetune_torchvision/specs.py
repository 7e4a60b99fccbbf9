"""The torchvision plugin's models: every classification model, Jina Finetuner's aliases, and their specs."""
from __future__ import annotations

import functools

from finetune.preprocessing import image_preprocess_options
from finetune.registry import BackboneSpec

from .backbone import Family, family_of
from .build import build, dims
from .catalog import classification_models, model_description, preprocess_defaults

ALIASES = {
    'resnet-base': ('resnet50', 'ResNet50 pre-trained on ImageNet'),
    'resnet-large': ('resnet152', 'ResNet152 pre-trained on ImageNet'),
    'efficientnet-base': ('efficientnet_b4', 'EfficientNet B4 pre-trained on ImageNet'),
    'efficientnet-large': ('efficientnet_b7', 'EfficientNet B7 pre-trained on ImageNet'),
}


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
