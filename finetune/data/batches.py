"""Rows to batches for a DataLoader: the dataset of a :class:`TrainingData` and its collator.

The collator runs in DataLoader worker processes (tokenization and image decoding leave the training loop).
An error it raises there would reach the user wrapped by torch ('Caught InputError in DataLoader worker
process 0' and a long traceback), so it travels inside the batch instead and :func:`raise_worker_error`
raises it, as it was, in the training loop.

A batch whose row indices carry a seed (a :class:`~finetune.sampling.wrappers.SeededBatch`, as the training
loop's batches do) is collated with Python's, NumPy's and torch's generators seeded by it
(:func:`seeded_draws`): its random views are the same whichever worker makes it and however many batches that
worker made before, so a resumed run, or one with another number of workers, draws what the first run drew.
"""
from __future__ import annotations

import contextlib
import random
import re
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import FinetuneError
from .kinds import DataKind, get_kind
from .training_data import TrainingData

#: the key of a batch that carries an error raised while a DataLoader worker made it
WORKER_ERROR = '__finetune_error__'


class RowsDataset(torch.utils.data.Dataset):
    """Row i of a :class:`TrainingData`, as its kind shapes it: ``(item, group)``, ``(a, b, group)``,
    ``(a, b, score)``, ..."""

    def __init__(self, data: TrainingData):
        self.data = data
        self.kind = data.data_kind

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.kind.row(self.data, i)

    def __getitems__(self, indices: Sequence[int]) -> list:
        """The rows of one batch (what a DataLoader asks for); the seed of a batch's random draws, when its indices
        carry one (``indices.seed``), goes on with its rows to the collator."""
        rows = [self.kind.row(self.data, i) for i in indices]
        seed = getattr(indices, 'seed', None)
        return rows if seed is None else SeededRows(rows, seed)

    def where(self, row: tuple) -> str:
        """Where `row` is in the data ('train.csv, line 12'): the first row equal to it in every cell."""
        index = next((i for i in range(len(self.data)) if _same_row(self.kind.row(self.data, i), row)), None)
        return self.data.where(index) if index is not None else self.data.source


def _same_row(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y or _same(x, y) for x, y in zip(a, b))


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - arrays and other items without a plain ==
        return False


class Collator:
    """Rows -> model inputs, by the data kind; a FinetuneError travels in the batch, located at its data row
    by `where(row)` (see the module docstring). `guide`: the (side a, side b) preprocessing of a loss's guide
    model, whose batch of the same rows goes under ``batch['guide']`` (see :mod:`finetune.training.guide`)."""

    def __init__(self, kind: str | DataKind, preprocess_a: Callable, preprocess_b: Callable | None,
                 where: Callable[[tuple], str] | None = None,
                 guide: tuple[Callable, Callable | None] | None = None):
        self.kind = get_kind(kind)
        self.preprocess_a, self.preprocess_b, self.where = preprocess_a, preprocess_b, where
        self.guide = guide

    def __call__(self, rows: Sequence[tuple]) -> dict[str, Any]:
        seed = getattr(rows, 'seed', None)
        with seeded_draws(seed) if seed is not None else contextlib.nullcontext():
            try:
                return self.collate(rows)
            except FinetuneError as exc:
                return {WORKER_ERROR: self._locate(rows, exc)}

    def collate(self, rows: Sequence[tuple]) -> dict[str, Any]:
        """The batch of `rows`; raises what the preprocessing raises."""
        batch = self.kind.collate(rows, self.preprocess_a, self.preprocess_b)
        if self.guide is not None:
            batch['guide'] = self.kind.collate(rows, *self.guide)
        return batch

    def _locate(self, rows: Sequence[tuple], error: FinetuneError) -> FinetuneError:
        """`error` again, prefixed with the data row that causes it (found by collating rows one by one)."""
        if self.where is None:
            return error
        for row in rows:
            try:
                self.collate([row])
            except FinetuneError as exc:
                message = re.sub(r'^item \d+: ', '', str(exc))
                return type(exc)(f'{self.where(row)}: {message}')
        return error


class SeededRows(list):
    """The rows of one batch, and ``seed``: the seed of its random draws (see :func:`seeded_draws`)."""

    def __init__(self, rows: Sequence[tuple], seed: int):
        super().__init__(rows)
        self.seed = int(seed)


@contextlib.contextmanager
def seeded_draws(seed: int) -> Iterator[None]:
    """Inside: Python's, NumPy's (global) and torch's CPU generators seeded from `seed` (each with its own word of
    it); after, in the training process: each as it was, so that its own draws (dropout) go on untouched. (A
    DataLoader worker's generators serve its batches alone, each seeding them again: they are left as they are.)
    A family's training preprocessing draws its random views from these generators; one of its own, or one
    seeded from the clock, is not reproducible this way."""
    words = _split_mix(int(seed), 3)
    in_worker = torch.utils.data.get_worker_info() is not None
    saved = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
    random.seed(words[0])
    np.random.seed(np.array([words[1] & 0xFFFFFFFF, words[1] >> 32], dtype=np.uint32))
    torch.default_generator.manual_seed(words[2])
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def _split_mix(seed: int, count: int) -> list[int]:
    """`count` 64-bit words of `seed` (SplitMix64's outputs): cheap, and far apart for near seeds."""
    mask, out, state = 0xFFFFFFFFFFFFFFFF, [], seed & 0xFFFFFFFFFFFFFFFF
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def raise_worker_error(batch: Any) -> None:
    """Raise the error a DataLoader worker put in `batch` instead of making it."""
    if isinstance(batch, dict) and WORKER_ERROR in batch:
        raise batch[WORKER_ERROR]


def text_lengths(data) -> list[tuple[int, ...]] | None:
    """The length in characters of each text side of each row (a data kind's extra document columns, such as
    the hard negatives of margin-triplets, included); None when no side is text."""
    sides = [side for side, modality in zip((data.a, data.b), data.modalities) if modality == 'text']
    if data.modalities[-1] == 'text':  # extra columns are documents, of the second side's modality
        sides += [column for column in (data.extra or {}).values()
                  if len(column) == len(data.a) and all(isinstance(item, str) for item in column)]
    if not sides:
        return None
    return list(zip(*([len(item) for item in side] for side in sides)))
