"""Rows to batches for a DataLoader: the dataset of a :class:`TrainingData` and its collator.

The collator runs in DataLoader worker processes (tokenization and image decoding leave the training loop).
An error it raises there would reach the user wrapped by torch ('Caught InputError in DataLoader worker
process 0' and a long traceback), so it travels inside the batch instead and :func:`raise_worker_error`
raises it, as it was, in the training loop.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

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
    by `where(row)` (see the module docstring)."""

    def __init__(self, kind: str | DataKind, preprocess_a: Callable, preprocess_b: Callable | None,
                 where: Callable[[tuple], str] | None = None):
        self.kind = get_kind(kind)
        self.preprocess_a, self.preprocess_b, self.where = preprocess_a, preprocess_b, where

    def __call__(self, rows: Sequence[tuple]) -> dict[str, Any]:
        try:
            return self.collate(rows)
        except FinetuneError as exc:
            return {WORKER_ERROR: self._locate(rows, exc)}

    def collate(self, rows: Sequence[tuple]) -> dict[str, Any]:
        """The batch of `rows`; raises what the preprocessing raises."""
        return self.kind.collate(rows, self.preprocess_a, self.preprocess_b)

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


def raise_worker_error(batch: Any) -> None:
    """Raise the error a DataLoader worker put in `batch` instead of making it."""
    if isinstance(batch, dict) and WORKER_ERROR in batch:
        raise batch[WORKER_ERROR]
