"""Items as a report shows them, by modality (:mod:`finetune.modalities`), never by model family: text as text,
images as small embedded thumbnails, and items of a modality that declares ``points`` (meshes, point clouds) as a
rendered scatter of their points. Each becomes a JSON-able dict: ``{'text': ...}`` and/or ``{'image': data URI}``
with a ``caption``, so that a saved report rebuilds without the original files."""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from ..modalities import get_modality, item_modality
from .plots import data_uri, points_png

#: longest text shown for an item, and the thumbnails' longer side in pixels
MAX_TEXT, THUMB = 300, 112


def _short(text: str) -> str:
    text = ' '.join(str(text).split())
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + '…'


def _caption(item: Any) -> str:
    if isinstance(item, (str, os.PathLike)):
        return _short(os.path.basename(os.fspath(item)))
    shape = getattr(item, 'shape', None)
    return f'{type(item).__name__} {tuple(shape)}' if shape is not None else type(item).__name__


def _thumbnail(item: Any) -> str:
    from PIL import Image
    if isinstance(item, (str, os.PathLike)):
        with Image.open(os.fspath(item)) as opened:
            image = opened.convert('RGB')
    elif isinstance(item, Image.Image):
        image = item.convert('RGB')
    else:
        array = np.asarray(item)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # channels first
        if array.dtype.kind == 'f':
            array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255)
        array = array.astype(np.uint8)
        image = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
        image = image.convert('RGB')
    image.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    image.save(buffer, format='JPEG', quality=80)
    return data_uri(buffer.getvalue(), 'image/jpeg')


def _scatter(points: np.ndarray) -> str:
    return points_png(np.asarray(points, dtype=np.float64))


def show_item(item: Any, modality: str | None = None) -> dict[str, str]:
    """What a report shows for `item` (of `modality`, by default recognised from the item). An item that cannot be
    drawn (a file gone, an unreadable image) is shown by its name and the reason."""
    modality = modality or item_modality(item)
    if modality == 'text' and isinstance(item, str):
        return {'text': _short(item)}
    try:
        if modality == 'image':
            return {'image': _thumbnail(item), 'caption': _caption(item)}
        declared = get_modality(modality)
        points = getattr(declared, 'points', None)
        if points is not None:
            return {'image': _scatter(points(item)), 'caption': _caption(item)}
        if isinstance(item, np.ndarray) and item.ndim == 2 and item.shape[1] == 3:
            return {'image': _scatter(item), 'caption': _caption(item)}
    except Exception as exc:  # noqa: BLE001 - a report shows what it can
        return {'text': f'{_caption(item)} (not drawn: {type(exc).__name__}: {_short(exc)})'}
    return {'text': _short(item if isinstance(item, str) else _caption(item))}


class ItemShower:
    """:func:`show_item` for the items of one side, each drawn once however often it appears."""

    def __init__(self, items: list, modality: str | None):
        self.items, self.modality, self.cache = items, modality, {}

    def __call__(self, index: int) -> dict[str, str]:
        if index not in self.cache:
            self.cache[index] = show_item(self.items[index], self.modality)
        return self.cache[index]
