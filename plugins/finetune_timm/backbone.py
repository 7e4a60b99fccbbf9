"""The timm backbone, its dimensions (known or probed on the meta device) and building it."""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from finetune.backbone import MAP, TOKENS, Backbone, Features
from finetune.errors import OptionError
from finetune.layers import PatchDropout
from finetune.meta import build_on_meta
from finetune.preprocessing import ImagePreprocessor, check_image_batch
from finetune_hfhub import linear_names

from .config import _timm, architecture_of, preprocess_defaults
from .weights import load_weights, pretrained_state_path


#: labeled data: recognite's recipe (a cosine classifier, softmax cross-entropy) measured better than batch-hard
#: triplets for image backbones (benchmarks/bench_recipes.py: EfficientNet-Lite0 on Fashion-MNIST, pretrained
#: and random, held-out items and classes, two seeds; ResNet-18 from random weights), see the README
IMAGE_DEFAULT_LOSSES = {'labeled': 'NormalizedSoftmaxLoss'}
#: the modules LoRA adapters wrap by default in a timm transformer (one with ``qkv`` attention): attention and MLP
#: projections, those of them it has; a CNN has none
LORA_TARGETS = ('qkv', 'proj', 'fc1', 'fc2')
#: CNNs fine-tuned at 3e-4 beat 1e-4 and 3.3e-5 in the same runs; transformers keep the core's 1e-4 (unmeasured)
CNN_LEARNING_RATE = 3e-4


class TimmBackbone(Backbone):
    """A timm model created with ``num_classes=0``: ``forward_features`` gives the unpooled features and
    ``forward_head(pre_logits=True)`` the model's own pooling (and pre-logits layers)."""

    packages = ('timm',)
    default_losses = IMAGE_DEFAULT_LOSSES

    modality = 'image'

    def __init__(self, name: str, model: nn.Module, preprocess: dict, own_dim: int = 0, pooled_dim: int = 0,
                 layout: str = MAP):
        super().__init__()
        self.model_name = name
        self.model = model
        self.default_learning_rate = CNN_LEARNING_RATE if architecture_of(name) == 'cnn' else None
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

    def lora_target_modules(self) -> tuple[str, ...]:
        """The :data:`LORA_TARGETS` this model's Linear layers have, for a transformer (ViT, Swin, ...); none for a
        CNN (no ``qkv`` attention)."""
        present = linear_names(self.model)
        return tuple(name for name in LORA_TARGETS if name in present) if 'qkv' in present else ()

    def enable_gradient_checkpointing(self) -> None:
        """timm's own gradient checkpointing (``set_grad_checkpointing``; non-reentrant unless TIMM_REENTRANT_CKPT
        says otherwise); OptionError for a model that has none."""
        try:
            self.model.set_grad_checkpointing(True)
        except (AttributeError, AssertionError, NotImplementedError) as exc:
            raise OptionError(f"option 'gradient_checkpointing': the timm model {self.model_name!r} "
                              f'({type(self.model).__name__}) cannot recompute its activations '
                              f'({exc or "no support"}); '
                              f'leave it False, or choose a timm model that can (ViTs, ResNets, ConvNeXts, ...).'
                              ) from exc

    def check_batch(self, batch) -> None:
        check_image_batch(batch, self.model_name, self.image_size if self.fixed_size else None)

    def depth_layers(self) -> list[tuple[str, ...]]:
        """timm's own grouping by depth (``group_matcher``: stem, each block, the final norm with the last block),
        as timm's layer-wise decay uses it; the default layers for a model without one."""
        try:
            from timm.models import group_parameters
            groups = group_parameters(self.model, self.model.group_matcher(coarse=False))
        except (AttributeError, NotImplementedError, ImportError):
            return super().depth_layers()
        return [tuple(f'model.{n}' for n in groups[k]) for k in sorted(groups)]

    def set_patch_dropout(self, p: float) -> None:
        """Patch dropout in a timm ViT (its ``patch_drop`` slot, after the positions, prefix tokens kept);
        OptionError for a model without one (a CNN)."""
        if not p:
            return
        if not hasattr(self.model, 'patch_drop'):
            raise OptionError(f"option 'patch_dropout': the timm model {self.model_name!r} "
                              f'({type(self.model).__name__}) has no patch tokens to drop; leave it at 0 (ViTs '
                              f'take it).')
        self.model.patch_drop = PatchDropout(p, keep_first=int(getattr(self.model, 'num_prefix_tokens', 1)))


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


def build(name: str, options: dict[str, Any]) -> TimmBackbone:
    """Build timm model `name` as a backbone with validated `options`."""
    pretrained = options['pretrained']
    own_dim, pooled_dim, layout = probe(name)
    found = None if pretrained is False else \
        ((pretrained, False) if isinstance(pretrained, str) else pretrained_state_path(name))
    model = _create(name)
    if found is not None:
        path, by_position = found
        load_weights(model, path, name, by_position)
    backbone = TimmBackbone(name, model, options['preprocess_options'], own_dim, pooled_dim, layout)
    backbone.set_patch_dropout(options.get('patch_dropout', 0.0))
    return backbone
