"""Image preprocessing shared by image families: any item -> a normalized ``(3, S, S)`` tensor.

Items may be file paths, PIL images, ``(H, W)`` / ``(H, W, 3|4)`` uint8 or float arrays, or
``(3, H, W)`` tensors. Each is converted to RGB, resized so its shorter side is ``resize_size``,
centre-cropped to ``image_size`` and normalized with ``mean`` / ``std``.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import InputError
from .options import Option, float_triple, one_of, positive_int

INTERPOLATIONS = ('bilinear', 'bicubic', 'nearest')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_preprocess_options(image_size: int = 224, resize_size: int = 256,
                             mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD,
                             interpolation: str = 'bilinear') -> tuple[Option, ...]:
    """The ``preprocess_options`` schema of an image family, with that family's defaults."""
    return (
        Option('image_size', 'int', image_size, 'side of the square crop the model sees', positive_int()),
        Option('resize_size', 'int', resize_size, 'the shorter image side is resized to this before cropping',
               positive_int()),
        Option('mean', 'tuple[3]', tuple(mean), 'per-channel mean subtracted after scaling to [0, 1]',
               float_triple),
        Option('std', 'tuple[3]', tuple(std), 'per-channel standard deviation divided by', float_triple),
        Option('interpolation', 'str', interpolation, 'resize filter: ' + ', '.join(INTERPOLATIONS),
               one_of(INTERPOLATIONS)),
    )


def file_problem(path: str) -> str | None:
    """Why `path` is not a readable, non-empty file, or None."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return 'does not exist'
    except OSError as exc:
        return f'cannot be read ({exc.strerror or exc})'
    if not os.path.isfile(path):
        return 'is not a file'
    if stat.st_size == 0:
        return 'is empty'
    if not os.access(path, os.R_OK):
        return 'cannot be read (no permission)'
    return None


def image_file_problem(path: str) -> str | None:
    """Why `path` is not an image PIL can decode, judged from its header alone, or None."""
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - the header is parsed; the pixels are not read
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
        return f'is not an image that can be decoded ({type(exc).__name__}: {exc})'
    return None


#: PIL modes of more than 8 bits per pixel, which ``convert('RGB')`` would clip instead of scale
HIGH_DEPTH_MODES = ('I', 'I;16', 'I;16L', 'I;16B', 'I;16N', 'F')


def _rgb(img: Image.Image, index: int) -> Image.Image:
    """`img` as 8-bit RGB; 16-bit, 32-bit integer and float images are scaled to 0..255, not clipped."""
    if img.mode not in HIGH_DEPTH_MODES:
        return img.convert('RGB')
    return _array_to_pil(np.asarray(img), index)


def _to_8bit(arr: np.ndarray, index: int) -> np.ndarray:
    """A numeric image array as uint8: 8-bit integers as they are, 16-bit integers (any byte order) scaled from
    0..65535; wider integers, which carry no bit depth, kept when all values fit 0..255, else scaled from
    0..65535 or their type's range; floats times 255 when all lie in [0, 1], else clipped to 0..255."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f'item {index}: image array of dtype {arr.dtype} is not real numbers.')
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.isfinite(arr).all():
            raise InputError(f'item {index}: the image array holds NaN or infinite values '
                             f'({int((~np.isfinite(arr)).sum()):,} of {arr.size:,}).')
        scale = 255.0 if arr.size and float(arr.max()) <= 1.0 else 1.0
        return np.clip(arr.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    if arr.size and int(arr.min()) < 0:
        raise InputError(f'item {index}: the image array of dtype {arr.dtype} holds negative values; expected '
                         f'pixels from 0 up.')
    if arr.dtype.itemsize == 1:
        return arr.astype(np.uint8)
    if arr.dtype.itemsize == 2:  # 16-bit pixels, whatever their byte order or values
        depth_max = 65535.0
    else:  # wider integers carry no bit depth: 8-bit values stay, 16-bit ones scale, larger by the type's range
        top = int(arr.max()) if arr.size else 0
        if top <= 255:
            return arr.astype(np.uint8)
        depth_max = 65535.0 if top <= 65535 else float(np.iinfo(arr.dtype).max)
    return np.round(arr.astype(np.float64) * (255.0 / depth_max)).astype(np.uint8)


def _array_to_pil(arr: np.ndarray, index: int) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InputError(f'item {index}: an image array must be (H, W), (H, W, 3) or (H, W, 4), '
                         f'got shape {arr.shape}.')
    return Image.fromarray(_to_8bit(arr, index)).convert('RGB')


def _to_pil(item: Any, index: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return _rgb(item, index)
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.isfile(path):
            raise InputError(f'item {index}: image file {path!r} does not exist.')
        try:
            with Image.open(path) as img:
                return _rgb(img, index)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InputError(f'item {index}: {path!r} could not be decoded as an image ({exc}).') from exc
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        if item.dim() == 3 and item.shape[0] in (1, 3, 4):
            item = item.permute(1, 2, 0)
        item = item.numpy()
    if isinstance(item, np.ndarray):
        return _array_to_pil(item, index)
    raise InputError(f'item {index}: an image model takes file paths, PIL images, arrays or tensors, '
                     f'got {type(item).__name__}' + (f' {item[:40]!r}' if isinstance(item, str) else '') + '.')


class ImagePreprocessor:
    """Callable: a list of image items -> a float tensor ``(N, 3, image_size, image_size)``."""

    def __init__(self, image_size: int = 224, resize_size: int = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 interpolation: str = 'bilinear'):
        self.image_size, self.resize_size = image_size, max(resize_size, image_size)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.filter = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC,
                       'nearest': Image.NEAREST}[interpolation]

    def one(self, item: Any, index: int = 0) -> torch.Tensor:
        img = _to_pil(item, index)
        w, h = img.size
        scale = self.resize_size / min(w, h)
        # the long side is truncated, as torchvision's Resize does, so crops match its pixels
        nw, nh = max(self.image_size, int(w * scale)), max(self.image_size, int(h * scale))
        img = img.resize((nw, nh), self.filter)
        left, top = (nw - self.image_size) // 2, (nh - self.image_size) // 2
        img = img.crop((left, top, left + self.image_size, top + self.image_size))
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return (t - self.mean) / self.std

    def __call__(self, items: Sequence[Any]) -> torch.Tensor:
        if isinstance(items, (str, os.PathLike, Image.Image)):
            items = [items]
        if len(items) == 0:
            raise InputError('no items to preprocess: expected a non-empty list of images.')
        return torch.stack([self.one(item, i) for i, item in enumerate(items)])


def check_image_batch(batch: Any, model: str, image_size: int | None = None) -> None:
    """Raise InputError unless `batch` is a float ``(N, 3, H, W)`` tensor (of side `image_size` if given)."""
    if not isinstance(batch, torch.Tensor):
        raise InputError(f'{model!r} is an image model: expected a (N, 3, H, W) tensor, got '
                         f'{type(batch).__name__}. Use model.encode(items) for paths, PIL images or arrays.')
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise InputError(f'{model!r} expects images as a (N, 3, H, W) tensor, got shape {tuple(batch.shape)}.')
    if not batch.is_floating_point():
        raise InputError(f'{model!r} expects a float tensor (normalized pixels), got {batch.dtype}.')
    if image_size is not None and tuple(batch.shape[2:]) != (image_size, image_size):
        raise InputError(f'{model!r} was built for {image_size}x{image_size} images, got '
                         f'{batch.shape[2]}x{batch.shape[3]}. Resize the input, or build the model with '
                         f"model_options={{'preprocess_options': {{'image_size': {batch.shape[2]}}}}}.")
