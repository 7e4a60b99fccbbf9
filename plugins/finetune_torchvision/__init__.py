"""finetune plugin: every torchvision classification model as an image-to-image backbone.

Registered through the entry point ``finetune.backbones: torchvision`` in finetune's pyproject, the same
way a third-party package would. Also provides Jina Finetuner's names ``resnet-base``, ``resnet-large``,
``efficientnet-base`` and ``efficientnet-large``.
"""
from __future__ import annotations

from finetune.registry import BackbonePlugin

from .specs import specs as _specs  # `specs` stays the submodule

plugin = BackbonePlugin(name='torchvision', specs=_specs)

__all__ = ['plugin']
