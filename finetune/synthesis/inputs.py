"""Queries and corpus for synthesis: a list, a text file (one per line), a CSV column or a datasets.Dataset."""
from __future__ import annotations

import os
from typing import Any

from ..errors import InputError

#: column names that hold the texts of a dataset with several columns
TEXT_COLUMNS = ('query', 'text', 'document', 'doc', 'passage', 'sentence', 'question', 'item')


def read_texts(data: Any, name: str) -> list[str]:
    """The distinct texts of `data` (first occurrences, in order). Raises InputError naming `name` for a file that
    does not exist, an empty source, or an item that is not a non-empty text."""
    from ..data.loading import read_items
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.isfile(path):
            what = 'a folder' if os.path.isdir(path) else 'no file'
            raise InputError(f'{name}: {path!r} is {what}; expected a text file (one text per line), a CSV file (its '
                             f'text column) or a list of texts.')
        texts = read_items(path)
    elif hasattr(data, 'column_names') and hasattr(data, 'features'):
        texts = _dataset_column(data, name)
    elif isinstance(data, (list, tuple)):
        texts = list(data)
    else:
        raise InputError(f'{name}: cannot read a {type(data).__name__}; expected a list of texts, a text file, a CSV '
                         f'file or a datasets.Dataset.')
    if not texts:
        raise InputError(f'{name} is empty: expected at least one text.')
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InputError(f'{name}, item {i}: {text!r} is not a non-empty text.')
    return list(dict.fromkeys(texts))


def _dataset_column(dataset: Any, name: str) -> list:
    columns = list(dataset.column_names)
    if len(columns) == 1:
        return list(dataset[columns[0]])
    column = next((c for c in columns if c.lower() in TEXT_COLUMNS), None)
    if column is None:
        raise InputError(f'{name}: the dataset has columns {columns}; expected one column, or one named '
                         f'{", ".join(TEXT_COLUMNS)}. Select it with dataset.select_columns([...]).')
    return list(dataset[column])
