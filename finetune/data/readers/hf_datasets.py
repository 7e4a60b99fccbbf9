"""Hugging Face ``datasets.Dataset`` objects of 2 or 3 columns, named as in a CSV header; recognised by their
``column_names`` and ``features`` without importing the library."""
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


class DatasetReader(Reader):
    """A ``datasets.Dataset`` (anything with ``column_names`` and ``features``)."""

    name = 'datasets'

    def accepts(self, source: Any) -> bool:
        return hasattr(source, 'column_names') and hasattr(source, 'features')

    def read(self, source: Any, name: str, delimiter: str = ',') -> Table:
        return dataset_table(source)
