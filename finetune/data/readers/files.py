"""Files of rows: CSV / TSV (a first row of known column names is a header) and JSON lines (one object per
line, its keys the columns); and :func:`read_items`, the items of a file to encode.

Relative paths of file items (images, or the files of a plugin's modality) are resolved against the file's folder.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any

from ...errors import InputError
from ...modalities import file_extensions, modalities
from ..detect import KNOWN_HEADERS, LABEL_NAMES, SCORE_NAMES, header_names
from ..training_data import TrainingData
from .base import Reader, Table

#: one-column CSV headers: a lone word such as 'title' may be an item, these name the column
ITEM_COLUMN_NAMES = {'item', 'items', 'text', 'texts', 'image', 'image_path', 'path', 'file', 'caption', 'sentence',
                     'document'}


def delimiter_for(path: str, default: str = ',') -> str:
    """The field separator of the delimited text file `path`: a tab for .tsv, else `default`."""
    return '\t' if path.lower().endswith('.tsv') else default


def csv_rows(path: str, delimiter: str) -> tuple[list[list[str]], list[int]]:
    """The non-blank rows of a CSV file and the file line each starts on. Raises InputError."""
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:  # -sig: Excel's CSV starts with a BOM
            reader = csv.reader(f, delimiter=delimiter)
            rows, lines, end = [], [], 0
            for row in reader:  # blank lines are skipped, but counted in line numbers
                start, end = end + 1, reader.line_num
                if any(c.strip() for c in row):
                    rows.append(row)
                    lines.append(start)
    except OSError as exc:
        raise InputError(f'cannot read {path!r}: {exc}') from exc
    except UnicodeDecodeError as exc:
        raise InputError(f'{path}: not UTF-8 text ({exc}).') from exc
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
        raise InputError(f'{os.path.basename(path)}, line {reader.line_num}: cannot parse: {exc}.') from exc
    return rows, lines


def _resolve_media(cell: str, folder: str) -> str:
    """A relative path of a file item (an image, or a file of a plugin's modality) resolved against `folder`
    (the CSV's); other cells unchanged."""
    stripped = cell.strip()
    if stripped.lower().endswith(file_extensions()) and not os.path.isabs(stripped):
        return os.path.join(folder, stripped)
    return cell


def csv_table(path: str, delimiter: str = ',', header: bool | str = 'auto') -> Table:
    """The rows of a CSV file of 2 or 3 columns; a first row of known column names is a header (`header`: True
    or False decides). Returns them with the line of each. Raises InputError."""
    rows, lines = csv_rows(path, delimiter)
    if not rows:
        raise InputError(f'{path} is empty: expected rows such as item,label or query,doc or a,b,score.')
    first = [c.strip().lower() for c in rows[0]]
    has_header = header is True or (header == 'auto' and all(c in header_names() for c in first))
    body = rows[1:] if has_header else rows
    if not body:
        raise InputError(f'{path}: a header and no rows.')
    folder = os.path.dirname(os.path.abspath(path))
    body = [[_resolve_media(c, folder).strip() for c in row] for row in body]
    return Table(body, os.path.basename(path), first if has_header else None, lines[1:] if has_header else lines)


def read_csv(path: str, delimiter: str = ',', header: bool | str = 'auto', kind: str | None = None) -> TrainingData:
    """Read a CSV file of 2 or 3 columns; a first row of known column names is a header.

    Relative image paths are resolved against the CSV's folder. Returns the data, its kind detected unless
    `kind` is given. Raises InputError with the line number.
    """
    return csv_table(path, delimiter, header).to_data(kind)


def jsonl_table(path: str) -> Table:
    """The rows of a JSON-lines file, one object per line: the first object's keys are the columns (a header).
    Returns them with the line of each. Raises InputError naming the line of anything else."""
    rows, lines, header = [], [], None
    try:
        with open(path, encoding='utf-8-sig') as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise InputError(f'{os.path.basename(path)}, line {number}: not JSON ({exc}).') from None
                if not isinstance(record, dict):
                    raise InputError(f'{os.path.basename(path)}, line {number}: expected a JSON object, got '
                                     f'{type(record).__name__}.')
                header = header or list(record)
                rows.append([record.get(k) for k in header])
                lines.append(number)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f'cannot read {path!r}: {exc}') from exc
    if not rows:
        raise InputError(f'{path} is empty: expected one JSON object per line.')
    return Table(rows, os.path.basename(path), header, lines)


def read_jsonl(path: str, kind: str | None = None) -> TrainingData:
    """A JSON-lines file, one object per line, read as data only: the first object's keys are the columns (a
    header). Returns the data, its kind detected unless `kind` is given. Raises InputError naming the line of
    anything else."""
    return jsonl_table(path).to_data(kind)


def read_items(path: str) -> list[str]:
    """The items of a file to encode: one per line of a text file, or one column of a CSV.

    In a CSV with a header (known column names), the item column is the first not named as a label or a
    score, so 'label,text' files give their texts; without one it is the first column (a lone column named
    like a modality, 'image' say, is a header too). Relative file paths are resolved against the file's
    folder, as :func:`read_csv` does. Returns the items. Raises InputError."""
    folder = os.path.dirname(os.path.abspath(path))
    if path.lower().endswith(('.csv', '.tsv')):
        rows, _ = csv_rows(path, delimiter_for(path))
        first = [c.strip().lower() for c in rows[0]] if rows else []
        header = (len(first) > 1 and all(c in KNOWN_HEADERS for c in first)) or (
            len(first) == 1 and first[0] in ITEM_COLUMN_NAMES | {m.name for m in modalities()})
        column = next((i for i, c in enumerate(first) if c not in LABEL_NAMES | SCORE_NAMES), 0) if header else 0
        items = [row[column] for row in (rows[1:] if header else rows) if len(row) > column]
    else:
        try:
            with open(path, encoding='utf-8-sig') as f:
                items = [line.rstrip('\r\n') for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f'cannot read {path!r}: {exc}') from exc
    if not items:
        raise InputError(f'{path!r} holds no items.')
    return [_resolve_media(item, folder) for item in items]


class FileReader(Reader):
    """A path to a file: CSV / TSV / .txt rows, or JSON lines (.jsonl)."""

    name = 'files'

    def accepts(self, source: Any) -> bool:
        return isinstance(source, (str, os.PathLike)) and not os.path.isdir(os.fspath(source))

    def read(self, source: Any, name: str, delimiter: str = ',') -> Table:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise InputError(f'{name}: {path!r} does not exist (expected a CSV file or a folder of class folders).')
        if path.lower().endswith('.jsonl'):
            return jsonl_table(path)
        if not path.lower().endswith(('.csv', '.tsv', '.txt')):
            raise InputError(f'{name}: {path!r} is not a CSV file (.csv/.tsv) or a folder (JSON lines, .jsonl, are '
                             f'read too).')
        return csv_table(path, delimiter=delimiter_for(path, delimiter))
