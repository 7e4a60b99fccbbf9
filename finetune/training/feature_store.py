"""A store of items' backbone features: in memory while a byte budget lasts, then in a raw file on disk.

:class:`FeatureStore` keeps each item's :class:`~finetune.backbone.Features` by slot (0, 1, ... in the order
added), unpadded (token sequences up to their last real token, with their mask row), and hands a list of slots
back as one batch, padded again with zeros. Its stores share one :class:`MemoryBudget`; what does not fit goes
to a file, read back item by item, so the memory stays at the budget. Nothing is read back but raw numbers (no
pickle), and the file is removed when the store is closed or forgotten. The frozen-feature cache
(:mod:`finetune.training.features`) keeps one store per model; the store itself knows nothing of training.
"""
from __future__ import annotations

import os
import shutil
import weakref
from typing import Sequence

import torch

from ..backbone import Features


class CacheRefused(Exception):
    """A store cannot hold the features (over the memory budget with no file to spill to, a full disk)."""


class MemoryBudget:
    """The bytes that the stores sharing it may keep in memory: ``total``, of which ``left`` are not taken."""

    def __init__(self, total: int):
        self.total, self.left = total, total

    def take(self, n: int) -> bool:
        """Take `n` bytes; returns False (nothing taken) when fewer than `n` are left."""
        if n > self.left:
            return False
        self.left -= n
        return True


class FeatureStore:
    """Items' features by slot (0, 1, ... in the order added), unpadded: in memory while the budget lasts, then
    appended to a raw file at `path` (None: no file, CacheRefused instead)."""

    def __init__(self, budget: MemoryBudget, path: str | None):
        self.budget, self.path = budget, path
        self.memory: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.disk: list[tuple[int, tuple, int]] = []  # per item on disk: offset, feature shape, mask length
        self.dtypes: tuple[torch.dtype, torch.dtype | None] | None = None
        self.memory_bytes = self.disk_bytes = 0
        self._file = None
        self._finalizer = None

    def __len__(self) -> int:
        return len(self.memory) + len(self.disk)

    def add_batch(self, features: Features, total: int) -> None:
        """Keep each item of a batch of `features` (of `total` items to come in all). Raises CacheRefused when
        the first batch shows that the items cannot fit in memory and there is no file to keep the rest in."""
        tensor = features.tensor.detach().cpu()
        mask = features.mask.detach().cpu() if features.mask is not None else None
        if mask is None:
            items = [(tensor[i].clone(), None) for i in range(tensor.shape[0])]
        else:
            items = [(tensor[i, :n].clone(), mask[i, :n].clone()) for i, n in enumerate(_real_lengths(mask))]
        if self.dtypes is None:
            self.dtypes = (tensor.dtype, mask.dtype if mask is not None else None)
            expected = sum(_item_bytes(*item) for item in items) * total // len(items)
            if self.path is None and expected > self.budget.left:
                raise CacheRefused(f'the features of {total:,} items need about {size_text(expected)}, more than the '
                                   f"memory budget ({size_text(self.budget.total)}, feature_cache={{'max_memory_mb': "
                                   f'N}}), and there is no output_dir to keep the rest in')
        for item in items:
            self.add(*item, total)

    def add(self, tensor: torch.Tensor, mask: torch.Tensor | None, total: int) -> None:
        """Keep one item's features (and mask row)."""
        size = _item_bytes(tensor, mask)
        if not self.disk and self.budget.take(size):
            self.memory.append((tensor, mask))
            self.memory_bytes += size
            return
        if self._file is None:
            self._open(size * (total - len(self)))
        self.disk.append((self.disk_bytes, tuple(tensor.shape), -1 if mask is None else int(mask.shape[0])))
        for part in (tensor, mask) if mask is not None else (tensor,):
            self._file.write(part.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        self.disk_bytes += size

    def _open(self, needed: int) -> None:
        if self.path is None:
            raise CacheRefused(f'the features need more than the memory budget ({size_text(self.budget.total)}, '
                               f"feature_cache={{'max_memory_mb': N}}) and there is no output_dir to keep the rest "
                               f'in')
        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise CacheRefused(f'{folder} has {size_text(free)} free, the features need about {size_text(needed)} more')
        self._file = open(self.path, 'w+b')
        self._finalizer = weakref.finalize(self, _remove, self._file, self.path)

    def finish_writing(self) -> None:
        """Writing done: what was written is flushed, to be read back."""
        if self._file is not None:
            self._file.flush()

    def get(self, slot: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One item's features and mask row (None for features without a mask)."""
        if slot < len(self.memory):
            return self.memory[slot]
        offset, shape, mask_length = self.disk[slot - len(self.memory)]
        dtype, mask_dtype = self.dtypes
        tensor = self._read(offset, shape, dtype)
        if mask_length < 0:
            return tensor, None
        return tensor, self._read(offset + _nbytes(tensor), (mask_length,), mask_dtype)

    def _read(self, offset: int, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        count = 1
        for n in shape:
            count *= n
        buffer = bytearray(count * torch.empty((), dtype=dtype).element_size())
        self._file.seek(offset)
        self._file.readinto(buffer)
        return torch.frombuffer(buffer, dtype=dtype).reshape(shape)

    def batch(self, slots: Sequence[int]) -> Features:
        """The items at `slots` as one batch: stacked, or (token sequences) padded with zeros, masks rebuilt."""
        items = [self.get(slot) for slot in slots]
        if items[0][1] is None:
            return Features(torch.stack([t for t, _ in items]))
        pad = torch.nn.utils.rnn.pad_sequence
        return Features(pad([t for t, _ in items], batch_first=True), pad([m for _, m in items], batch_first=True))

    def close(self) -> None:
        """Forget the features; the file, if any, is removed."""
        self.budget.left += self.memory_bytes
        self.memory, self.disk, self.memory_bytes, self.disk_bytes = [], [], 0, 0
        if self._finalizer is not None:
            self._finalizer()


def _remove(file, path: str) -> None:
    file.close()
    if os.path.exists(path):
        os.remove(path)


def _real_lengths(mask: torch.Tensor) -> list[int]:
    """Per row of `mask`, the length up to its last real (non-zero) position; at least 1."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return ((mask != 0) * positions).amax(dim=1).clamp(min=1).tolist()


def _item_bytes(tensor: torch.Tensor, mask: torch.Tensor | None) -> int:
    return _nbytes(tensor) + (_nbytes(mask) if mask is not None else 0)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def size_text(n: int) -> str:
    """`n` bytes for a reader: '512 B', '1.5 KiB', '2.0 MiB', '1.25 GiB'."""
    for unit in ('B', 'KiB', 'MiB'):
        if n < 1024:
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    return f'{n:.2f} GiB'


__all__ = ['CacheRefused', 'FeatureStore', 'MemoryBudget', 'size_text']
