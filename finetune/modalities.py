"""Modalities: how an item is recognised as text, an image, or a modality a plugin declares.

The core knows two modalities, ``text`` (strings) and ``image`` (image files, PIL images, image arrays). A
plugin adds others by declaring :class:`Modality` objects in its :class:`~finetune.registry.BackbonePlugin`:
the file extensions of its items, how to recognise its in-memory items, and what counts as one item rather
than a batch. Data loading, encoding and the file checks read these declarations, never a family's name.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .registry import REGISTRY

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')


@dataclass(frozen=True)
class Modality:
    """A kind of item a model embeds.

    ``extensions``: the file extensions of its items (lower case, with the dot). ``recognize(item)``: True
    for an in-memory item of this modality (checked before the core's image arrays, so a plugin may claim
    ``(N, 3)`` arrays). ``one_item(items)``: True when `items`, given to ``encode``, is a single item rather
    than a sequence of them. ``description``: what its items are, for messages."""

    name: str
    extensions: tuple[str, ...] = ()
    recognize: Callable[[Any], bool] | None = None
    one_item: Callable[[Any], bool] | None = None
    description: str = ''


def _is_image_object(item: Any) -> bool:
    return type(item).__module__.startswith('PIL.')


def _image_one_item(items: Any) -> bool:
    """A path, a PIL image or one image array is one item; a 4-D array is a stack of images."""
    if isinstance(items, (np.ndarray,)) or type(items).__name__ == 'Tensor':
        return items.ndim != 4
    return isinstance(items, (str, os.PathLike)) or _is_image_object(items)


TEXT = Modality('text', description='strings')
IMAGE = Modality('image', IMAGE_EXTENSIONS, _is_image_object, _image_one_item,
                 'image files (' + ' '.join(IMAGE_EXTENSIONS) + '), PIL images or (H, W[, C]) arrays')


#: (registry generation, the plugins' modalities, every modality, every file extension): derived once per set
#: of plugins, since item_modality runs for every cell of a data file
_cache: tuple[int, list[Modality], list[Modality], tuple[str, ...]] = (-1, [], [], ())


def _derived() -> tuple[int, list[Modality], list[Modality], tuple[str, ...]]:
    global _cache
    generation = REGISTRY.current_generation()
    if _cache[0] != generation:
        found: dict[str, Modality] = {}
        for plugin in REGISTRY.plugins.values():
            for modality in plugin.modalities:
                found.setdefault(modality.name, modality)
        every = [TEXT, IMAGE, *found.values()]
        _cache = (generation, list(found.values()), every, tuple(e for m in every for e in m.extensions))
    return _cache


def plugin_modalities() -> list[Modality]:
    """The modalities the installed plugins declare."""
    return _derived()[1]


def modalities() -> list[Modality]:
    """Every modality: the core's text and image, then the plugins'."""
    return _derived()[2]


def get_modality(name: str) -> Modality | None:
    """The modality called `name`, or None."""
    return next((m for m in modalities() if m.name == name), None)


def file_extensions() -> tuple[str, ...]:
    """The file extensions of every file-based modality (images and the plugins')."""
    return _derived()[3]


def item_modality(item: Any) -> str:
    """The modality of `item`: by file extension for paths (other strings are 'text'), by the modalities'
    recognisers for objects, 'image' for 2-D and 3-D arrays no plugin claims; 'other' for anything else."""
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item).lower()
        for modality in modalities():
            if modality.extensions and path.endswith(modality.extensions):
                return modality.name
        return 'text' if isinstance(item, str) else 'other'
    for modality in (*plugin_modalities(), IMAGE):
        if modality.recognize is not None and modality.recognize(item):
            return modality.name
    if isinstance(item, np.ndarray) or type(item).__name__ == 'Tensor':
        return 'image' if len(item.shape) in (2, 3) else 'other'
    return 'other'


def is_one_item(items: Any, modality: str = 'image') -> bool:
    """True when `items` is a single item of `modality` (a path, an image, a point cloud, ...), not a sequence."""
    declared = get_modality(modality)
    if declared is not None and declared.one_item is not None:
        return declared.one_item(items)
    return _image_one_item(items)


def task_of(modalities_of_sides: tuple[str, ...]) -> str:
    """The registry task that data of these side modalities is for: ``('text', 'image')`` -> 'text-to-image',
    ``('image',)`` -> 'image-to-image'."""
    first, last = modalities_of_sides[0], modalities_of_sides[-1]
    return f'{first}-to-{last}'
