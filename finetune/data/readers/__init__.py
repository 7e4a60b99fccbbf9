"""The readers of data sources, one module per format, and their registry: :func:`load_data
<finetune.data.loading.load_data>` reads a source with the first registered reader that accepts it.

A new format is one module with a :class:`Reader` subclass, passed to :func:`register_reader` (``before=`` a
built-in reader where it must be asked earlier, say before ``'rows'``, which takes any iterable).
"""
from __future__ import annotations

from typing import Any

from ...errors import InputError
from .arrays import ArrayReader
from .base import Reader, Table
from .files import FileReader
from .folders import FolderReader
from .frames import FrameReader
from .hf_datasets import DatasetReader
from .rows import RowsReader

__all__ = ['Reader', 'Table', 'reader_for', 'reader_names', 'register_reader']

_READERS: dict[str, Reader] = {}


def register_reader(reader: Reader, before: str | None = None) -> Reader:
    """Make `reader` (an instance of a :class:`Reader` subclass) known by its name, asked last or just before
    the reader called `before`; a reader of a name already known replaces it in its place. Returns `reader`.

    Raises InputError for a reader without a name, or a `before` that names no reader."""
    if not isinstance(reader, Reader) or not reader.name:
        raise InputError(f'register_reader: {reader!r} must be a Reader instance with a name.')
    if before is not None and before not in _READERS:
        raise InputError(f'register_reader: no reader named {before!r} to go before; readers: '
                         f'{", ".join(_READERS)}.')
    if before is None or reader.name in _READERS:
        _READERS[reader.name] = reader
        return reader
    ordered = list(_READERS.items())
    at = [name for name, _ in ordered].index(before)
    _READERS.clear()
    _READERS.update(ordered[:at] + [(reader.name, reader)] + ordered[at:])
    return reader


def reader_names() -> tuple[str, ...]:
    """The names of the registered readers, in the order they are asked."""
    return tuple(_READERS)


def reader_for(source: Any) -> Reader | None:
    """The first registered reader that accepts `source`, or None."""
    return next((reader for reader in _READERS.values() if reader.accepts(source)), None)


for _reader in (FolderReader(), FileReader(), DatasetReader(), FrameReader(), ArrayReader(), RowsReader()):
    register_reader(_reader)
