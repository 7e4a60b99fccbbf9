"""Class-balanced batches for labeled data: every batch holds several classes with several items each, so every
item has positives and negatives in its batch (:class:`ClassBalancedBatchSampler`)."""
from __future__ import annotations

import warnings
from typing import Hashable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..errors import InputError
from .common import _positive_int, _to_list


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
