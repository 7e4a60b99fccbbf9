"""Duplicate-free batches for pair data: no key (a query, a document text) appears twice in a batch, so in-batch
negatives are never copies of the positive (:class:`NoDuplicatesBatchSampler`); optionally rows of similar length
batched together."""
from __future__ import annotations

import itertools
import warnings
from collections import deque
from typing import Any, Hashable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..errors import InputError
from .common import _positive_int, _to_list


#: with lengths per side, the runs of batches (within a pool sorted by the longer side) sorted by the other side
SUB_POOL = 4


class NoDuplicatesBatchSampler(Sampler[list[int]]):
    """Batches in which no key appears twice.

    ``group_keys`` has one entry per row: a key (any hashable: the query text, a query id), or a tuple /
    list / set of keys when a row has several (``(query, positive_text)``); no key may then appear twice
    in a batch. Keys are compared across positions: pass ``('q', text)`` and ``('d', text)`` if a query
    and a document with the same text should not clash. Strings are single keys.

    Each epoch, rows are shuffled with the rows sharing a key spread evenly over the epoch, then packed
    greedily; a row whose key is already in the current batch waits and goes first into the next one.

    Every row appears exactly once per epoch, except: with ``drop_last=True`` only full batches are
    yielded and the rows that do not fill one are left out of that epoch (a different few each epoch).
    With ``drop_last=False`` the rows left at the end go into smaller batches, as many as needed; when a
    key is on more rows than an epoch has full batches, that can be several (a warning says so at
    construction). ``len()`` is exact: it plans the current epoch (and keeps the plan for ``iter``).
    """

    def __init__(self, group_keys: Sequence[Any], batch_size: int, seed: int = 0, drop_last: bool = False):
        super().__init__()
        rows = _to_list(group_keys)
        self.batch_size = _positive_int('batch_size', batch_size)
        if self.batch_size > len(rows):
            raise InputError(f'NoDuplicatesBatchSampler: batch_size {self.batch_size} is larger than the number of '
                             f'rows, {len(rows)}.')
        self.seed, self.drop_last, self.epoch = int(seed), bool(drop_last), 0
        self.num_rows = len(rows)

        ids: dict[Hashable, int] = {}
        row_keys: list[tuple[int, ...]] = []
        try:
            for entry in rows:
                if isinstance(entry, (set, frozenset)):  # a fixed order: set order changes with the hash seed
                    entry = sorted(entry, key=repr)
                if isinstance(entry, (tuple, list)):
                    # dict.fromkeys: a row whose two sides are equal must not clash with itself
                    row_keys.append(tuple(dict.fromkeys(ids.setdefault(k, len(ids)) for k in entry)))
                else:
                    row_keys.append((ids.setdefault(entry, len(ids)),))
        except TypeError as e:
            raise InputError(f'NoDuplicatesBatchSampler: keys must be hashable ({e}).') from e
        self._row_keys = row_keys
        flat = np.fromiter(itertools.chain.from_iterable(row_keys), dtype=np.int64)
        counts = np.bincount(flat, minlength=len(ids))
        # rows are spread by their most frequent key; a row without keys is a group of its own
        frequency = counts.tolist()
        self._primary = np.fromiter(
            (keys[0] if len(keys) == 1 else max(keys, key=frequency.__getitem__) if keys else len(ids) + i
             for i, keys in enumerate(row_keys)), dtype=np.int64, count=len(rows))
        self._plan: tuple[int, list[list[int]]] | None = None
        self._lengths: np.ndarray | None = None
        self.pool = 0

        full_batches = len(rows) // self.batch_size
        if len(ids) and counts.max() > full_batches:
            top = int(counts.argmax())
            key = next(k for k, v in ids.items() if v == top)
            shown = repr(key) if len(repr(key)) <= 60 else repr(key)[:57] + '...'
            fate = 'are left out of each epoch' if self.drop_last else 'go into extra, smaller batches'
            warnings.warn(f'NoDuplicatesBatchSampler: key {shown} is on {int(counts.max())} rows but an epoch has '
                          f'only {full_batches} full batches of {self.batch_size}; the rows that cannot be placed '
                          f'without a duplicate {fate}.', UserWarning, stacklevel=2)

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of `epoch` (each epoch's batches differ; the same epoch gives the same batches)."""
        self.epoch = int(epoch)

    def group_by_length(self, lengths: Sequence[float] | Sequence[Sequence[float]], pool: int = 16) -> None:
        """Batches of rows of similar length (less padding for texts): each epoch's shuffled order is cut into
        pools of `pool` batches, each pool sorted by length before the rows are packed (no key twice in a
        batch, as always), and the epoch's batches are then shuffled. ``pool=0`` turns it off.

        `lengths` has one number per row, or one per side of each row (a query and a document are padded
        separately): then each pool is sorted by the side that is longer on average, and each run of
        :data:`SUB_POOL` batches within it by the other side, so both sides of a batch are of similar length."""
        pool = _positive_int('pool', pool, minimum=0)
        table = np.asarray(lengths, dtype=np.float64)
        if table.ndim == 1:
            table = table[:, None]
        if pool and (table.ndim != 2 or len(table) != self.num_rows):
            raise InputError(f'NoDuplicatesBatchSampler.group_by_length: {len(table)} lengths for '
                             f'{self.num_rows} rows (expected one number, or one per side, for each row).')
        self._lengths = table[:, np.argsort(-table.mean(0), kind='stable')] if pool else None
        self.pool, self._plan = pool, None

    def _sorted_pools(self, order: np.ndarray) -> np.ndarray:
        """`order` cut into pools of :attr:`pool` batches, each sorted by length (ties in the shuffled order)."""
        size, table = self.batch_size, self._lengths

        def by(column: int, rows: np.ndarray, window: int) -> np.ndarray:
            parts = np.split(rows, range(window, len(rows), window))
            return np.concatenate([p[np.argsort(table[p, column], kind='stable')] for p in parts])

        order = by(0, order, self.pool * size)
        return by(1, order, SUB_POOL * size) if table.shape[1] > 1 else order

    def __len__(self) -> int:
        return len(self._batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        yield from (list(batch) for batch in self._batches(self.epoch))

    # -------------------------------------------------------------- one epoch

    def _batches(self, epoch: int) -> list[list[int]]:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self._make_plan(epoch))
        return self._plan[1]

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        """A shuffle in which the rows of each primary key are spread evenly."""
        perm = rng.permutation(self.num_rows)
        perm = perm[np.argsort(self._primary[perm], kind='stable')]  # grouped by key, random within
        group = self._primary[perm]
        first = np.searchsorted(group, group, side='left')
        last = np.searchsorted(group, group, side='right')
        keys = (np.arange(self.num_rows) - first + rng.random(self.num_rows)) / (last - first)
        return perm[np.argsort(keys, kind='stable')]

    def _make_plan(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        row_keys, size = self._row_keys, self.batch_size
        batches: list[list[int]] = []
        batch: list[int] = []
        used: set[int] = set()
        waiting: dict[int, deque] = {}  # blocking key -> rows waiting for a batch without it

        def place(row: int) -> int | None:
            """Put `row` in the batch; or return the key that blocks it."""
            keys = row_keys[row]
            for k in keys:
                if k in used:
                    return k
            batch.append(row)
            used.update(keys)
            return None

        def wait(row: int, key: int) -> None:
            queue = waiting.get(key)
            if queue is None:
                queue = waiting[key] = deque()
            queue.append(row)

        def emit() -> None:
            batches.append(batch.copy())
            batch.clear()
            used.clear()

        def give_turns(window: int | None) -> None:
            """One waiting row per blocking key (the first `window` keys) joins the batch while it has room."""
            blocking = list(waiting) if window is None else list(itertools.islice(waiting, window))
            for k in blocking:
                if len(batch) == size:
                    return
                queue = waiting.get(k)
                if queue is None:
                    continue
                row = queue.popleft()
                if not queue:
                    del waiting[k]
                blocked = place(row)
                if blocked is not None:
                    wait(row, blocked)

        order = self._order(rng)
        if self._lengths is not None:
            order = self._sorted_pools(order)
        for row in order.tolist():
            blocked = place(row)
            if blocked is not None:
                wait(row, blocked)
                continue
            while len(batch) == size:
                emit()
                give_turns(2 * size)
        # the end of the stream: waiting rows fill batches, one row per blocking key per batch
        while waiting:
            if len(batch) == size:
                emit()
            give_turns(None)
            if len(batch) == size:
                continue
            # every waiting key had its turn and the batch is still not full: the rest cannot fill one
            if self.drop_last:
                waiting.clear()
                batch.clear()
                break
            emit()
        if batch and (len(batch) == size or not self.drop_last):
            emit()
        if not batches:
            raise InputError(f'NoDuplicatesBatchSampler: no batch of {size} rows without a repeated key can be formed '
                             f'(too few distinct keys); lower batch_size or pass drop_last=False.')
        if self._lengths is not None:  # the pools sorted short to long: the batches in a random order again
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches
