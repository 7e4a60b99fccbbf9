"""Plain shuffled batches (:class:`ShuffledBatchSampler`): full batches of a fresh random order each epoch."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from .common import _positive_int


class ShuffledBatchSampler(Sampler[list[int]]):
    """Full batches of a fresh random order of ``0..n-1`` each epoch, reproducible per seed and epoch; the
    ``n % batch_size`` rows left over are a different few each epoch."""

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        super().__init__()
        self.n = _positive_int('n', n)
        self.batch_size = _positive_int('batch_size', batch_size)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of `epoch`."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        for start in range(0, self.n - self.batch_size + 1, self.batch_size):
            yield order[start:start + self.batch_size]

    def __len__(self) -> int:
        return self.n // self.batch_size
