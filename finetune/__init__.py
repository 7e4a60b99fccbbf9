"""finetune: turn a pretrained backbone into an embedding model and fine-tune it on your data.

Public API (each call hands on to one module):

* :func:`describe_models`, :func:`list_models`, :func:`list_model_options` — what can be built;
* :func:`build_model` — an :class:`EmbeddingModel` (backbone -> pooler -> head -> L2 normalize);
* :func:`get_spec` — the registry entry of a name.
"""
from __future__ import annotations

from .describe import describe_models, list_model_options
from .errors import (FinetuneError, InputError, OptionError, PluginError, UnknownModelError, WeightsLoadError,
                     WeightsNotFoundError)
from .model import EmbeddingModel, MultiTowerModel, build_model
from .registry import REGISTRY, TASKS, BackbonePlugin, BackboneSpec, get_spec

__version__ = '0.1.0'


def list_models(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Names of the registered backbones, sorted; `pattern` is a wildcard (``'resnet*'``, ``'timm:vit_*'``).

    Raises UnknownModelError for an unknown `task`.
    """
    return REGISTRY.names(pattern, task)


__all__ = [
    'describe_models', 'list_models', 'list_model_options', 'build_model', 'get_spec', 'EmbeddingModel', 'MultiTowerModel',
    'BackboneSpec', 'BackbonePlugin', 'REGISTRY', 'TASKS', 'FinetuneError', 'UnknownModelError', 'OptionError',
    'PluginError', 'InputError', 'WeightsNotFoundError', 'WeightsLoadError', '__version__',
]
