"""What torchvision offers, per model: names, preprocessing and descriptions, from the shipped table
(`_table.py`) when it was made for the installed torchvision, else from torchvision itself."""
from __future__ import annotations

import importlib.metadata
from typing import Any

from ._table import MODELS, TORCHVISION_VERSION
from .backbone import family_of
from .weights import live_description, live_preprocess_defaults, models_module


def _shipped_table() -> dict[str, dict[str, Any]] | None:
    """The shipped per-model table when it was made for the installed torchvision, else None.

    The version is read from package metadata, so listing and describing need not import torchvision.
    """
    try:
        installed = importlib.metadata.version('torchvision')
    except importlib.metadata.PackageNotFoundError:
        return None
    return MODELS if installed.split('+')[0] == TORCHVISION_VERSION else None


def live_classification_models() -> list[str]:
    """Every classification model name the installed torchvision offers, whose family this plugin knows."""
    tvm = models_module()
    return [n for n in tvm.list_models(module=tvm) if family_of(n) is not None]


def classification_models() -> list[str]:
    table = _shipped_table()
    return list(table) if table is not None else live_classification_models()


def preprocess_defaults(name: str) -> dict[str, Any]:
    table = _shipped_table()
    return dict(table[name]['preprocess']) if table and name in table else live_preprocess_defaults(name)


def model_description(name: str) -> str:
    table = _shipped_table()
    return table[name]['description'] if table and name in table else live_description(name)
