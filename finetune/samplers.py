"""Batch samplers: which rows of a data set go into one batch.

Both are ``torch.utils.data.Sampler`` subclasses that yield lists of data-set indices (pass them as a
``DataLoader``'s ``batch_sampler``). Both are deterministic for a given ``seed`` and epoch; call
``set_epoch(epoch)`` before each epoch (the training loop does) for a new shuffle.

* :class:`ClassBalancedBatchSampler` (labeled data): every batch holds several classes with several
  items each, so every item has positives and negatives in its batch.
* :class:`NoDuplicatesBatchSampler` (pair data): no key (a query, a document text) appears twice in a
  batch, so in-batch negatives are never copies of the positive.

Both plan an epoch in (near) linear time: 100k rows take a fraction of a second.
"""
from __future__ import annotations

import itertools
import warnings
from collections import deque
from typing import Any, Hashable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from .errors import InputError
from .validators import integer


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int of at least `minimum` (numpy integers too); OptionError naming `name` otherwise."""
    return integer(name, int(value) if isinstance(value, np.integer) else value, minimum)


def _to_list(values: Any) -> list:
    if hasattr(values, 'tolist'):  # torch tensors, numpy arrays: plain Python values
        values = values.tolist()
    return list(values)


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values), dtype=np.int64)
    np.cumsum(values[:-1], out=out[1:])
    return out


def _spread(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``repeat(arange(len(counts)), counts)`` that spreads each value evenly.

    Copy j of a value with c copies gets the random position ``(j + u) / c``, u ~ U(0, 1): its copies land
    one in each 1/c-th of the sequence, so two copies rarely fall close together.
    """
    values = np.repeat(np.arange(len(counts)), counts)
    j = np.arange(len(values)) - np.repeat(_exclusive_cumsum(counts), counts)
    keys = (j + rng.random(len(values))) / counts[values]
    return values[np.argsort(keys, kind='stable')]


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size // items_per_class`` classes with ``items_per_class`` items each.

    Items are grouped by class within a batch. Over an epoch each class is chosen about
    ``ceil(size / items_per_class)`` times, spread evenly, and its items are taken in a fresh random order
    each epoch, so an epoch shows (nearly) every item once. The epoch has ``n // batch_size`` batches
    (``ceil`` with ``drop_last=False``), n counting the items of the classes used; every batch is full.

    Choices, each announced by a ``UserWarning`` rather than an error:

    * A class with a single item cannot give a positive: such classes are left out (the warning says how
      many). Only when no class has two items is it an :class:`~finetune.errors.InputError`.
    * A class with fewer items than ``items_per_class`` repeats its items to fill its group (sampling
      with replacement, each item used before any repeats).
    * ``items_per_class`` is changed when it cannot work: capped at ``batch_size // 2`` (a batch needs
      two classes) and at the largest class; when it does not divide ``batch_size`` it becomes the
      nearest divisor (the largest one below it, else the smallest above); when there are fewer classes
      than ``batch_size // items_per_class``, every class goes into every batch with more items each. If
      no divisor exists (a prime batch size) the groups differ by one item.

    The adjusted value is ``self.items_per_class``; ``self.group_sizes`` lists the group sizes of a batch.
    """

    def __init__(self, labels: Sequence[Hashable], batch_size: int, items_per_class: int = 4,
                 drop_last: bool = True, seed: int = 0):
        super().__init__()
        self.batch_size = _positive_int('batch_size', batch_size, minimum=4)
        requested = _positive_int('items_per_class', items_per_class, minimum=2)
        self.drop_last, self.seed, self.epoch = bool(drop_last), int(seed), 0

        labels = _to_list(labels)
        if not labels:
            raise InputError('ClassBalancedBatchSampler: no labels given.')
        index: dict[Hashable, int] = {}
        try:
            codes = np.fromiter((index.setdefault(label, len(index)) for label in labels), dtype=np.int64,
                                count=len(labels))
        except TypeError as e:
            raise InputError(f'ClassBalancedBatchSampler: labels must be hashable ({e}).') from e
        counts = np.bincount(codes)
        if len(counts) < 2:
            raise InputError(f'ClassBalancedBatchSampler needs at least 2 classes, got 1 '
                             f'({next(iter(index))!r} on all {len(labels)} items).')
        usable = counts >= 2
        if not usable.any():
            raise InputError(f'ClassBalancedBatchSampler: each of the {len(counts)} classes has a single item, so no '
                             f'item has a positive. Give classes at least 2 items, or train on pairs.')
        if usable.sum() < 2:
            raise InputError('ClassBalancedBatchSampler needs at least 2 classes with 2 or more items, got 1 '
                             '(a class with a single item cannot give a positive).')
        singles = int((~usable).sum())
        if singles:
            warnings.warn(f'ClassBalancedBatchSampler: {singles} of {len(counts)} classes have a single item and '
                          f'cannot give a positive; they are left out of the batches.', UserWarning, stacklevel=2)

        # the classes used, renumbered 0..C-1; their items grouped by class
        new_code = np.full(len(counts), -1, dtype=np.int64)
        new_code[usable] = np.arange(int(usable.sum()))
        codes = new_code[codes]
        self._items = np.flatnonzero(codes >= 0)
        self._codes = codes  # per data-set index; -1 = left out
        self._sizes = counts[usable]
        self._offsets = _exclusive_cumsum(self._sizes)
        self.num_classes = len(self._sizes)
        self.num_items = int(self._sizes.sum())

        if self.drop_last:
            self._num_batches = self.num_items // self.batch_size
        else:
            self._num_batches = -(-self.num_items // self.batch_size)
        if self._num_batches == 0:
            raise InputError(f'ClassBalancedBatchSampler: batch_size {self.batch_size} is larger than the '
                             f'{self.num_items} items of the classes used, so drop_last=True leaves no batch. '
                             f'Lower batch_size or pass drop_last=False.')

        self.items_per_class, self.group_sizes, reasons = self._plan_groups(requested)
        self.classes_per_batch = len(self.group_sizes)
        if reasons:
            if len(set(self.group_sizes)) == 1:
                now = f'{self.items_per_class} ({self.classes_per_batch} classes x {self.items_per_class} items)'
            else:
                now = (f'{self.items_per_class} ({self.classes_per_batch} classes with {min(self.group_sizes)} to '
                       f'{max(self.group_sizes)} items)')
            warnings.warn(f'ClassBalancedBatchSampler: items_per_class={requested} changed to {now} per batch of '
                          f'{self.batch_size}: {"; ".join(reasons)}.', UserWarning, stacklevel=2)

    def _plan_groups(self, m: int) -> tuple[int, tuple[int, ...], list[str]]:
        bs, reasons = self.batch_size, []
        if m > bs // 2:
            m = bs // 2
            reasons.append(f'a batch of {bs} must hold at least 2 classes')
        largest = int(self._sizes.max())
        if m > largest:
            m = largest
            reasons.append(f'no class has more than {largest} items')
        if bs % m:
            divisors = [d for d in range(2, bs // 2 + 1) if bs % d == 0]
            if divisors:
                below = [d for d in divisors if d <= m]
                new = max(below) if below else min(divisors)
                reasons.append(f'{m} does not divide batch_size {bs}')
                m = new
        classes, all_classes = bs // m, False
        if classes > self.num_classes:
            classes, all_classes = self.num_classes, True
            reasons.append(f'only {self.num_classes} classes have 2 or more items, so each batch holds all of them')
        base, extra = divmod(bs, classes)
        if extra and not all_classes:
            reasons.append(f'{m} does not divide batch_size {bs}, which has no divisor to use instead, so {extra} '
                           f'classes get {base + 1} items')
        return base, tuple([base + 1] * extra + [base] * (classes - extra)), reasons

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of `epoch` (each epoch's batches differ; the same epoch gives the same batches)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches(self.epoch).tolist()

    # -------------------------------------------------------------- one epoch

    def _batches(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        # the items of the classes used, grouped by class, each class in a fresh random order
        order = rng.permutation(self._items)
        order = order[np.argsort(self._codes[order], kind='stable')]

        m, sizes = self.items_per_class, self._sizes
        stream = _spread(-(-sizes // m), rng)  # class c about ceil(size_c / m) times, evenly spread
        slot_class = self._pick_classes(stream, rng).ravel()  # (batches x classes_per_batch)
        slot_size = np.tile(np.asarray(self.group_sizes, dtype=np.int64), self._num_batches)

        # each slot continues where the previous slot of its class stopped, cycling through the class
        by_class = np.argsort(slot_class, kind='stable')
        cls_sorted, size_sorted = slot_class[by_class], slot_size[by_class]
        before = _exclusive_cumsum(size_sorted)
        run_start = np.searchsorted(cls_sorted, cls_sorted, side='left')
        start = np.empty_like(before)
        start[by_class] = before - before[run_start]

        slot_of = np.repeat(np.arange(len(slot_class)), slot_size)
        within = np.arange(len(slot_of)) - np.repeat(_exclusive_cumsum(slot_size), slot_size)
        cls = slot_class[slot_of]
        positions = self._offsets[cls] + (start[slot_of] + within) % sizes[cls]
        return order[positions].reshape(self._num_batches, self.batch_size)

    def _pick_classes(self, stream: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(batches, classes_per_batch) class ids, distinct within a batch, following `stream`.

        A class met again while it is already in the batch waits for the next batch; when the stream
        runs out, the rest is filled with random classes; what is left of the stream is not used.
        """
        per_batch, total = self.classes_per_batch, self._num_batches
        out: list[list[int]] = []
        waiting: dict[int, int] = {}  # class -> times it waits, in order of arrival
        stream_list, position = stream.tolist(), 0
        while len(out) < total:
            batch: list[int] = []
            chosen: set[int] = set()
            for c in list(waiting):
                if len(batch) == per_batch:
                    break
                batch.append(c)
                chosen.add(c)
                waiting[c] -= 1
                if not waiting[c]:
                    del waiting[c]
            while len(batch) < per_batch and position < len(stream_list):
                c = stream_list[position]
                position += 1
                if c in chosen:
                    waiting[c] = waiting.get(c, 0) + 1
                else:
                    batch.append(c)
                    chosen.add(c)
            while len(batch) < per_batch:
                if self.num_classes <= 4 * per_batch:
                    candidates = rng.permutation(self.num_classes).tolist()
                else:
                    candidates = rng.integers(self.num_classes, size=4 * per_batch).tolist()
                for c in candidates:
                    if c not in chosen:
                        batch.append(c)
                        chosen.add(c)
                        if len(batch) == per_batch:
                            break
            out.append(batch)
        return np.asarray(out, dtype=np.int64).reshape(total, per_batch)


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


__all__ = ['ClassBalancedBatchSampler', 'NoDuplicatesBatchSampler']


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
