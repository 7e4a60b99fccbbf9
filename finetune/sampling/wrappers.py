"""Samplers over another batch sampler, for the training loop: :class:`SkipBatches` (a resumed epoch continues
where it stopped) and :class:`ShardedBatches` (one process's share of the batches)."""
from __future__ import annotations

import itertools
from typing import Iterator

from torch.utils.data import Sampler


class SkipBatches(Sampler[list[int]]):
    """The batches of `batch_sampler` from the ``skip``-th on (a checkpoint resumed mid-epoch continues where
    it stopped; set ``skip`` back to 0 for the next epochs). ``set_epoch`` is passed on."""

    def __init__(self, batch_sampler: Sampler, skip: int = 0):
        super().__init__()
        self.batch_sampler, self.skip = batch_sampler, int(skip)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, 'set_epoch'):
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


class ShardedBatches(Sampler[list[int]]):
    """Process `rank`'s share of `batch_sampler` among `num_processes`: every N-th batch from its rank on. The
    epoch is filled up to a multiple of N with its first batches again, so every process takes as many steps."""

    def __init__(self, batch_sampler: Sampler, num_processes: int, rank: int):
        super().__init__()
        self.batch_sampler, self.num_processes, self.rank = batch_sampler, int(num_processes), int(rank)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, 'set_epoch'):
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        batches = list(self.batch_sampler)
        if batches and len(batches) % self.num_processes:
            missing = self.num_processes - len(batches) % self.num_processes
            batches += [batches[i % len(batches)] for i in range(missing)]
        return iter(batches[self.rank::self.num_processes])

    def __len__(self) -> int:
        return -(-len(self.batch_sampler) // self.num_processes)
