"""Queries and corpus for synthesis: a list, a text file (one per line), a CSV column or a datasets.Dataset.

Texts are read as they are: a line such as ``how do I open photo.jpg`` stays a text (it is never taken for a
file to load). Where the source has several columns, the column is chosen by name for its role (a query
column for the queries, a document column for the corpus); a header of one cell that names such a column is a
header, not a text."""
from __future__ import annotations

import os
from typing import Any

from ..errors import InputError

#: column names that hold the texts, for each role, in order of preference
COLUMNS = {
    'query_data': ('query', 'question', 'anchor', 'text', 'sentence', 'item'),
    'corpus_data': ('document', 'doc', 'passage', 'positive', 'text', 'sentence', 'item'),
}


def read_texts(data: Any, name: str) -> list[str]:
    """The distinct texts of `data` (first occurrences, in order). Raises InputError naming `name` for a file that
    does not exist, an empty source, a source with several columns none of which is named for `name`'s role, or
    an item that is not a non-empty text."""
    if isinstance(data, (str, os.PathLike)):
        texts = _file_texts(os.fspath(data), name)
    elif hasattr(data, 'column_names') and hasattr(data, 'features'):
        columns = list(data.column_names)
        texts = list(data[_column(columns, name, 'the dataset', 'Select it with dataset.select_columns([...]).')])
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


def _column(columns: list[str], name: str, where: str, hint: str) -> str:
    """The column of `columns` that holds `name`'s texts: the only one, else the first named for its role."""
    if len(columns) == 1:
        return columns[0]
    lowered = {c.strip().lower(): c for c in columns}
    found = next((lowered[c] for c in COLUMNS[name] if c in lowered), None)
    if found is None:
        raise InputError(f'{name}: {where} has the columns {", ".join(map(repr, columns))}; expected one column, or '
                         f'one named {", ".join(COLUMNS[name])}. {hint}')
    return found


def _file_texts(path: str, name: str) -> list[str]:
    from ..data.readers.files import csv_rows, delimiter_for
    if not os.path.isfile(path):
        what = 'a folder' if os.path.isdir(path) else 'no file'
        raise InputError(f'{name}: {path!r} is {what}; expected a text file (one text per line), a CSV file (its '
                         f'text column) or a list of texts.')
    if not path.lower().endswith(('.csv', '.tsv')):
        try:
            with open(path, encoding='utf-8-sig') as f:
                return [line.rstrip('\r\n') for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f'{name}: cannot read {path!r}: {exc}') from None
    rows, _ = csv_rows(path, delimiter_for(path))
    if not rows:
        return []
    first = [cell.strip() for cell in rows[0]]
    if len(first) == 1:  # one column: its first cell is a header when it names a text column
        known = {c for names in COLUMNS.values() for c in names} | {'texts', 'documents', 'queries', 'corpus'}
        return [row[0] for row in (rows[1:] if first[0].lower() in known else rows)]
    column = first.index(_column(first, name, os.path.basename(path), 'Name the text column in the header.'))
    return [row[column] if len(row) > column else '' for row in rows[1:]]
