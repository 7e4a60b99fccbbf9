"""pandas and polars DataFrames of 2 or 3 columns, recognised without importing either: their rows, their column
names read as a CSV header. A Series (one column) is refused with what to pass instead."""
from __future__ import annotations

from typing import Any

from ...errors import InputError
from ..training_data import TrainingData
from .base import Reader, Table


def _is_data_frame(data: Any) -> bool:
    """A pandas or polars DataFrame, recognised without importing either."""
    return type(data).__name__ == 'DataFrame' and hasattr(data, 'columns') and (
        hasattr(data, 'itertuples') or hasattr(data, 'iter_rows'))


def _is_series(data: Any) -> bool:
    return type(data).__name__ == 'Series' and hasattr(data, 'to_frame')


def frame_table(frame: Any, name: str = 'train_data') -> Table:
    """The rows of a pandas (or polars) DataFrame, its column names as a header (default integer column names
    are no header). Raises InputError for a frame without rows."""
    columns = list(frame.columns)
    if hasattr(frame, 'itertuples'):
        rows = [list(row) for row in frame.itertuples(index=False, name=None)]
    else:
        rows = [list(row) for row in frame.iter_rows()]
    if not rows:
        raise InputError(f'{name}: the DataFrame has no rows.')
    header = [str(c) for c in columns] if not all(isinstance(c, int) for c in columns) else None
    where = f'{name} (DataFrame with columns {", ".join(map(str, columns))})'
    return Table(rows, where if len(where) < 120 else f'{name} (DataFrame)', header)


def from_data_frame(frame: Any, name: str = 'train_data', kind: str | None = None) -> TrainingData:
    """A pandas (or polars) DataFrame of 2 or 3 columns: its rows, its column names read as a CSV header
    (default integer column names are no header). Returns the data, its kind detected unless `kind` is given.
    Raises InputError."""
    return frame_table(frame, name).to_data(kind)


class FrameReader(Reader):
    """A pandas or polars DataFrame; a Series is taken only to be refused with a clear message."""

    name = 'frames'

    def accepts(self, source: Any) -> bool:
        return _is_data_frame(source) or _is_series(source)

    def read(self, source: Any, name: str, delimiter: str = ',') -> Table:
        if not _is_data_frame(source):
            raise InputError(f'{name}: got a {type(source).__module__.split(".")[0]} Series (one column); pass a '
                             f'DataFrame with 2 columns (item, label / query, doc) or 3 (a, b, score).')
        return frame_table(source, name)
