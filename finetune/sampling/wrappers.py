"""Samplers over another batch sampler, for the training loop: :class:`SeededBatches` (each batch carries the seed of
its random draws), :class:`SkipBatches` (a resumed epoch continues where it stopped) and :class:`ShardedBatches`
(one process's share of the batches)."""
from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import numpy as np
from torch.utils.data import Sampler


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of the random draws (augmentation, sampled points) of batch `index` of `epoch` in a run of `seed`:
    a 63-bit number of these three alone, so a batch draws the same views whichever worker makes it, however many
    batches that worker made before, and in a resumed run as in the run it continues."""
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1


class SeededBatch(list):
    """The row indices of one batch, and ``seed``: the seed its collator draws the batch's random views from (see
    :func:`~finetune.data.batches.seeded_draws`)."""

    def __init__(self, indices: Iterable[int], seed: int):
        super().__init__(indices)
        self.seed = int(seed)


class SeededBatches(Sampler[list[int]]):
    """The batches of `batch_sampler`, each a :class:`SeededBatch` whose seed is :func:`batch_seed` of the run's
    `seed`, the epoch (``set_epoch``, passed on) and the batch's place in the epoch. Put it under the sharding and
    the skipping, so that the place counts every batch of the epoch."""

    def __init__(self, batch_sampler: Sampler, seed: int):
        super().__init__()
        self.batch_sampler, self.seed, self.epoch = batch_sampler, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.batch_sampler, 'set_epoch'):
            self.batch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[SeededBatch]:
        for index, indices in enumerate(self.batch_sampler):
            yield SeededBatch(indices, batch_seed(self.seed, self.epoch, index))

    def __len__(self) -> int:
        return len(self.batch_sampler)


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
