"""Python rows: a list (or any iterable) of tuples or lists of cells, or of dicts whose keys name the columns
(the first dict's keys are the header). A dict on its own is refused with what to pass instead."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from ...errors import InputError
from .base import Reader, Table


class RowsReader(Reader):
    """Any iterable of rows; asked last, as most sources are iterable."""

    name = 'rows'

    def accepts(self, source: Any) -> bool:
        return isinstance(source, Iterable)

    def read(self, source: Any, name: str, delimiter: str = ',') -> Table:
        if isinstance(source, Mapping):
            raise InputError(f'{name}: got a dict; pass a list of rows such as [(item, label), ...] or a CSV path.')
        rows = list(source)
        if not rows:
            raise InputError(f'{name} is empty: expected rows such as (item, label), (query, doc) or (a, b, score).')
        if all(isinstance(r, Mapping) for r in rows):
            header = list(rows[0])
            return Table([[r.get(k) for k in header] for r in rows], name, header)
        bad = next((i for i, r in enumerate(rows) if isinstance(r, str) or not isinstance(r, (list, tuple))), None)
        if bad is not None:
            raise InputError(f'{name}, row {bad}: {rows[bad]!r} is not a row; expected tuples such as (item, label), '
                             f'(query, doc) or (a, b, score).')
        return Table(rows, name)
