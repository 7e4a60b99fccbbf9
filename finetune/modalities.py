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

from .errors import InputError
from .registry import REGISTRY

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')


@dataclass(frozen=True)
class Modality:
    """A kind of item a model embeds.

    ``extensions``: the file extensions of its items (lower case, with the dot). ``recognize(item)``: True
    for an in-memory item of this modality (checked before the core's image arrays, so a plugin may claim
    ``(N, 3)`` arrays). ``one_item(items)``: True when `items`, given to ``encode``, is a single item rather
    than a sequence of them. ``description``: what its items are, for messages. ``points(item)``: an ``(N, 3)``
    array of points that draws the item (run reports show such items as a rendered point cloud)."""

    name: str
    extensions: tuple[str, ...] = ()
    recognize: Callable[[Any], bool] | None = None
    one_item: Callable[[Any], bool] | None = None
    description: str = ''
    samples: Callable[[], list] | None = None
    points: Callable[[Any], np.ndarray] | None = None


def _is_image_object(item: Any) -> bool:
    return type(item).__module__.startswith('PIL.')


def _image_one_item(items: Any) -> bool:
    """A path, a PIL image or one image array is one item; a 4-D array is a stack of images."""
    if isinstance(items, (np.ndarray,)) or type(items).__name__ == 'Tensor':
        return items.ndim != 4
    return isinstance(items, (str, os.PathLike)) or _is_image_object(items)


SAMPLE_TEXTS = (
    'a man is eating food', 'the dog runs fast across the green field', 'a woman plays the piano',
    'red car', 'An old house by the sea, under a big blue sky, with a small tree in front of it.',
    'happy', 'the cat is sad because the bread is gone', 'two children are playing guitar and singing loudly '
    'in the park on a sunny afternoon while their parents watch', 'slow', 'Tree, sky, sea: 3 words!',
    'a photo of a dog', 'numbers 1234 5678 and symbols #@%',
)


def _text_samples() -> list[str]:
    return list(SAMPLE_TEXTS)


def _image_samples() -> list[np.ndarray]:
    """Twelve generated images of several sizes and aspect ratios: gradients, stripes, blocks and noise."""
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(64, 64), (48, 80), (96, 40), (40, 40), (120, 90), (33, 57)] * 2):
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([x / w, y / h, ((x + y) % (8 + i)) / (8 + i)], axis=-1)
        if i % 3 == 1:
            base = base * (np.sin(x / (2 + i))[..., None] > 0)
        if i % 3 == 2:
            base = 0.5 * base + 0.5 * rng.random((h, w, 3), dtype=np.float32)
        out.append((np.clip(base, 0, 1) * 255).astype(np.uint8))
    return out


TEXT = Modality('text', description='strings', samples=_text_samples)
IMAGE = Modality('image', IMAGE_EXTENSIONS, _is_image_object, _image_one_item,
                 'image files (' + ' '.join(IMAGE_EXTENSIONS) + '), PIL images or (H, W[, C]) arrays',
                 samples=_image_samples)


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


def array_items(items: Any) -> Any:
    """The elements of a numpy array of dtype str or object (texts, paths, PIL images) as a list, each one item
    (a 0-D array is one item); anything else as it is: a numeric array is an item itself (an image, a point
    cloud) or a stack of them. Raises InputError for a str or object array of more than one dimension."""
    if not isinstance(items, np.ndarray) or items.dtype.kind not in 'UO':
        return items
    if items.ndim > 1:
        raise InputError(f'items: a {items.ndim}-D array of shape {items.shape}; expected one item '
                         f'per element: a 1-D array or a list, e.g. array.ravel().')
    return [items.item()] if items.ndim == 0 else items.tolist()


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
