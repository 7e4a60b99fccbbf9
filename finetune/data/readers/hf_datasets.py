"""Hugging Face ``datasets.Dataset`` objects of 2 or 3 columns, named as in a CSV header; recognised by their
``column_names`` and ``features`` without importing the library. A ``DatasetDict`` (several splits) is refused
with the split to pass instead."""
from __future__ import annotations

from typing import Any

from ...errors import InputError
from ..training_data import TrainingData
from .base import Reader, Table


def dataset_table(dataset: Any) -> Table:
    """The rows of a ``datasets.Dataset``, its column names as the header. Raises InputError unless it has 2 or
    3 columns."""
    columns = list(dataset.column_names)
    if len(columns) not in (2, 3):
        raise InputError(f'dataset has columns {columns}; expected 2 (item, label / query, doc / text, image) or '
                         f'3 (a, b, score). Select them with dataset.select_columns([...]).')
    data = {c: list(dataset[c]) for c in columns}
    rows = list(zip(*(data[c] for c in columns)))
    return Table(rows, f'datasets.Dataset({", ".join(columns)})', columns)


def from_hf_dataset(dataset: Any, kind: str | None = None) -> TrainingData:
    """A Hugging Face ``datasets.Dataset`` with 2 or 3 columns (named as in a CSV header). Returns the data, its
    kind detected unless `kind` is given. Raises InputError."""
    return dataset_table(dataset).to_data(kind)


def _is_dataset(source: Any) -> bool:
    return hasattr(source, 'column_names') and hasattr(source, 'features')


def _is_dataset_dict(source: Any) -> bool:
    """A ``datasets.DatasetDict`` (or IterableDatasetDict): a dict of split name -> dataset."""
    return isinstance(source, dict) and type(source).__name__.endswith('DatasetDict') and \
        all(_is_dataset(split) for split in source.values())


def split_error(splits: Any, name: str) -> InputError:
    """The error for a DatasetDict given as `name`: its splits, and the one to pass (train for training data,
    else validation or test where there is one)."""
    names = [str(split) for split in splits]
    preferred = ('train',) if name.startswith('train') else ('validation', 'valid', 'dev', 'test')
    example = next((split for split in preferred if split in names), names[0] if names else 'train')
    return InputError(f'{name}: a datasets.{type(splits).__name__} with splits {", ".join(map(repr, names))}; pass '
                      f'one split, e.g. data[{example!r}].')


class DatasetReader(Reader):
    """A ``datasets.Dataset`` (anything with ``column_names`` and ``features``); a DatasetDict is refused naming
    its splits."""

    name = 'datasets'

    def accepts(self, source: Any) -> bool:
        return _is_dataset(source) or _is_dataset_dict(source)

    def read(self, source: Any, name: str, delimiter: str = ',') -> Table:
        if _is_dataset_dict(source):
            raise split_error(source, name)
        return dataset_table(source)
