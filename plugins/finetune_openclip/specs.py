"""The open_clip plugin's specs: the named models, ``openclip:<model>[:<tag or file>]`` names, their options."""
from __future__ import annotations

import fnmatch
import functools
import os
from typing import Any

from finetune.errors import OptionError, UnknownModelError, did_you_mean
from finetune.layers import PATCH_DROPOUT_OPTION
from finetune.options import Option, one_of
from finetune.preprocessing import image_preprocess_options
from finetune.registry import BackboneSpec

from .backbone import build
from .config import (OPENAI_MEAN, OPENAI_STD, PREFIX, _open_clip, clean_tag, live_preprocess_defaults,
                     model_config, pretrained_tags)

TASK = 'text-to-image'
TOWERS = ('text', 'image')

_CLIP_PREPROCESS = {'image_size': 224, 'resize_size': 224, 'mean': OPENAI_MEAN, 'std': OPENAI_STD,
                    'interpolation': 'bicubic'}

#: the named models: (open_clip model, pretrained tag, embedding size, description). Checked against
#: open_clip by tests/test_openclip.py, so listing them neither imports open_clip nor builds anything.
NAMED: dict[str, tuple[str, str, int, str]] = {
    'clip-base-en': ('ViT-B-32', 'openai', 512,
                     "CLIP ViT-B/32 by OpenAI (open_clip 'ViT-B-32', pretrained 'openai'): text + image towers"),
    'clip-large-en': ('ViT-L-14', 'openai', 768,
                      "CLIP ViT-L/14 by OpenAI (open_clip 'ViT-L-14', pretrained 'openai'): text + image towers"),
    'clip-base-multi': ('xlm-roberta-base-ViT-B-32', 'laion5b_s13b_b90k', 512,
                        "multilingual CLIP: XLM-RoBERTa-base text tower + ViT-B/32 image tower, LAION-5B "
                        "(open_clip 'xlm-roberta-base-ViT-B-32', pretrained 'laion5b_s13b_b90k')"),
}

#: what open_clip says about the named models' preprocessing (checked by the tests), so that the option
#: listing comes without importing open_clip
KNOWN_PREPROCESS: dict[str, dict[str, Any]] = {name: dict(_CLIP_PREPROCESS) for name in NAMED}

TOWER_OPTION = Option(
    'tower', 'str | None', None,
    "None: both towers (strings go to the text tower, images to the image tower); 'text' or 'image': "
    "build that tower alone (e.g. the image tower for image-to-image)", one_of(TOWERS, allow_none=True))


def _optional_bool(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise OptionError(f'option {name!r}: expected True, False or None, got {value!r}.')


QUICK_GELU_OPTION = Option(
    'quick_gelu', 'bool | None', None,
    "QuickGELU activations, as OpenAI's CLIP weights need; None follows the pretrained tag. A built model "
    'records the value it used, so a saved model rebuilds the same network', _optional_bool)

POOLER_NOTE = ("open_clip towers give only their own CLIP embedding (projection included), so pooler must "
               "be None; output_dim adds a projection head to each tower.")


def _architecture(cfg: dict[str, Any]) -> str:
    vision = cfg.get('vision_cfg', {})
    timm_name = str(vision.get('timm_model_name', ''))
    if isinstance(vision.get('layers'), (list, tuple)) or any(k in timm_name for k in ('resnet', 'convnext',
                                                                                       'efficientnet')):
        return 'cnn+transformer'
    return 'transformer'


def _spec(name: str, model: str, tag: str | None, output_dim: int, description: str, preprocess: dict[str, Any],
          architecture: str = 'transformer', weights_file: str | None = None,
          alias_of: str | None = None, default_for: tuple[str, ...] = ()) -> BackboneSpec:
    defaults: dict[str, Any] = {}
    if weights_file is not None:
        defaults['pretrained'] = weights_file
    elif tag is None:
        defaults['pretrained'] = False
    return BackboneSpec(
        name=name,
        tasks=(TASK,),
        default_for=default_for,
        modality='text+image',
        architecture=architecture,
        output_dim=output_dim,
        description=description,
        build=functools.partial(build, model, tag, name),
        options=(TOWER_OPTION, QUICK_GELU_OPTION, PATCH_DROPOUT_OPTION),
        preprocess_options=image_preprocess_options(**preprocess),
        defaults=defaults,
        alias_of=alias_of,
        pooler_note=POOLER_NOTE,
        layout=None,
    )


def resolve(prefix: str, rest: str) -> BackboneSpec:
    """The spec of ``openclip:<model>``, ``openclip:<model>:<tag>`` or ``openclip:<model>:<weights file>``."""
    model, sep, weights = rest.partition(':')
    if not model:
        raise UnknownModelError(f"'{prefix}:' needs an open_clip model name, e.g. '{prefix}:ViT-B-32'. See "
                                f"finetune.list_models('{prefix}:*').")
    cfg = model_config(model)
    tags = pretrained_tags(model)
    tag, weights_file = (tags[0] if tags else None), None
    if sep and weights:
        if clean_tag(weights) in tags:
            tag = clean_tag(weights)
        elif os.path.isfile(weights):
            tag, weights_file = None, weights
        else:
            known = ', '.join(tags) if tags else 'none'
            raise UnknownModelError(
                f'{prefix}:{rest}: {weights!r} is neither a pretrained tag of open_clip {model!r} nor an existing '
                f'weights file.{did_you_mean(weights, tags)} Tags of {model}: {known}.')
    if weights_file is not None:
        what = f'weights from {weights_file}'
    elif tag is None:
        what = 'no pretrained weights in open_clip (random init unless a weights file is given)'
    elif sep or len(tags) == 1:
        what = f'pretrained {tag!r}'
    else:
        what = (f"pretrained {tag!r} (its first tag; {len(tags) - 1} more: "
                f"finetune.list_models('{prefix}:{model}:*'))")
    return _spec(f'{prefix}:{rest}', model, tag, int(cfg['embed_dim']), f'open_clip {model}, {what}',
                 live_preprocess_defaults(model, tag), _architecture(cfg), weights_file)


def list_prefixed(prefix: str, pattern: str) -> list[str]:
    """``openclip:<model>`` and ``openclip:<model>:<tag>`` names matching the wildcard `pattern`."""
    oc = _open_clip()
    models = oc.list_models()
    known = set(models)
    names = models + [f'{m}:{t}' for m, t in oc.list_pretrained() if m in known]
    return [f'{PREFIX}:{n}' for n in names if fnmatch.fnmatchcase(n, pattern)]


def specs() -> list[BackboneSpec]:
    """The named CLIP models, from the static table (no import of open_clip)."""
    return [_spec(name, model, tag, dim, description, KNOWN_PREPROCESS[name], alias_of=f'{PREFIX}:{model}:{tag}',
                  default_for=(TASK,) if name == 'clip-base-en' else ())
            for name, (model, tag, dim, description) in NAMED.items()]


def artifact_safe(prefix: str, rest: str) -> bool:
    """``<model>`` or ``<model>:<tag>`` of open_clip's own tables (no weights file)."""
    model, _, tag = rest.partition(':')
    if any(c in rest for c in '/\\') or model not in _open_clip().list_models():
        return False
    return not tag or clean_tag(tag) in pretrained_tags(model)
