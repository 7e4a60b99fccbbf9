"""Reading training and evaluation data into one shape, :class:`TrainingData`, with its kind detected.

Kinds (Jina Finetuner's layouts):

* ``labeled``: ``item, label`` rows — items of one label are positives of each other;
* ``pairs``: ``query, doc`` rows — rows sharing a query share a label;
* ``scored``: ``a, b, score`` rows, score in [0, 1];
* ``text-image``: a text beside an image (a path, PIL image or array): pairs across two modalities.

Sources: a list of tuples (or dicts), a CSV file, a folder with one sub-folder per class, or a Hugging
Face ``datasets.Dataset``. Every mistake is reported with the row (CSV line) that caused it.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence


from ..errors import InputError
from ..modalities import file_extensions, item_modality, modalities
from .kinds import kind_names

#: header names that say what a column is
LABEL_NAMES = {'label', 'labels', 'class', 'category', 'target'}
SCORE_NAMES = {'score', 'similarity', 'relevance', 'label_score'}
IMAGE_NAMES = {'image', 'img', 'image_path', 'path', 'file'}
TEXT_NAMES = {'text', 'caption', 'query', 'doc', 'document', 'item', 'sentence', 'sentence1', 'sentence2', 'a',
              'b', 'anchor', 'positive', 'question', 'answer', 'passage', 'title'}
KNOWN_HEADERS = LABEL_NAMES | SCORE_NAMES | IMAGE_NAMES | TEXT_NAMES


@dataclass
class TrainingData:
    """Data in one of :data:`KINDS`. ``a`` holds items / queries / texts, ``b`` docs / images / second
    sentences; ``groups`` the label id of each row (class for labeled data, query group for pairs);
    ``scores`` the score of each scored pair; ``label_names[g]`` the original label of group ``g``."""

    kind: str
    a: list
    b: list | None = None
    groups: list[int] | None = None
    scores: list[float] | None = None
    label_names: list = field(default_factory=list)
    source: str = 'data'
    #: the file line of each row, for data read from a file (None: rows are counted from 0)
    lines: list[int] | None = None
    #: further columns of kinds that have them (name -> one value per row)
    extra: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.a)

    def where(self, index: int) -> str:
        """Where row `index` came from, for messages: 'train.csv, line 12' or 'train_data, row 11'."""
        if self.lines is not None and 0 <= index < len(self.lines):
            return f'{self.source}, line {self.lines[index]}'
        return f'{self.source}, row {index}'

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality of each side, read off the first row."""
        sides = [self.a] + ([self.b] if self.b is not None else [])
        return tuple(item_modality(side[0]) for side in sides)

    @property
    def data_kind(self):
        """The :class:`~finetune.data.kinds.DataKind` object of :attr:`kind`."""
        from .kinds import get_kind
        return get_kind(self.kind)

    def describe(self) -> str:
        """One line: what this data is, as detected."""
        return self.data_kind.describe(self)


def _is_number(cell: Any) -> bool:
    if isinstance(cell, bool):
        return False
    if isinstance(cell, (int, float)):
        return math.isfinite(cell)
    try:
        return math.isfinite(float(cell))
    except (TypeError, ValueError):
        return False


def _group_ids(values: Sequence[Any]) -> tuple[list[int], list]:
    names: dict[Any, int] = {}
    ids = [names.setdefault(_hashable(v), len(names)) for v in values]
    return ids, list(names)


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return id(value)


def _where(source: str, index: int, line_offset: int | Sequence[int]) -> str:
    if not isinstance(line_offset, int):  # the file line of each row
        return f'{source}, line {line_offset[index]}'
    return f'{source}, line {index + line_offset}' if line_offset else f'{source}, row {index}'


def from_rows(rows: Sequence[Sequence[Any]], source: str, header: Sequence[str] | None = None,
              kind: str | None = None, line_offset: int | Sequence[int] = 0) -> TrainingData:
    """Build TrainingData from rows of 2 (item, label | query, doc | text, image) or 3 (a, b, score) cells.

    `line_offset` turns a row index into a file line number in messages (or is the line of each row).
    Raises InputError.
    """
    if kind is not None and kind not in kind_names():
        raise InputError(f'{source}: unknown data kind {kind!r}; expected one of {", ".join(kind_names())}.')
    if not rows:
        raise InputError(f'{source} is empty: expected rows such as (item, label), (query, doc) or (a, b, score).')
    if kind is None and header:
        kind = _kind_of_header(header)
    if kind is not None:
        from .kinds import get_kind
        own = get_kind(kind).read_rows(rows, header, source, _row_lines(len(rows), line_offset))
        if own is not None:
            return own
    width = len(header) if header else len(rows[0])
    like = 'the header' if header else 'the first row'
    if width not in (2, 3):
        raise InputError(f'{_where(source, 0, line_offset)}: {width} columns; expected 2 (item, label / query, doc '
                         f'/ text, image) or 3 (a, b, score).')
    for i, row in enumerate(rows):
        if len(row) != width:
            raise InputError(f'{_where(source, i, line_offset)}: {len(row)} columns, expected {width} like '
                             f'{like}.')
        for j, cell in enumerate(row):
            if cell is None or (isinstance(cell, float) and math.isnan(cell)) or (
                    isinstance(cell, str) and not cell.strip()):
                raise InputError(f'{_where(source, i, line_offset)}: column {j + 1} is empty.')
    names = [str(h).strip().lower() for h in header] if header else [''] * width
    a = [r[0] for r in rows]
    b = [r[1] for r in rows]
    if width == 2 and names[0] in LABEL_NAMES and names[1] not in LABEL_NAMES and kind in (None, 'labeled'):
        a, b, names = b, a, names[::-1]  # a 'label, text' header: the items are in the second column
    if width == 3 and kind not in (None, 'scored'):
        raise InputError(f'{source}: kind={kind!r} takes 2 columns, got 3 (a, b, score rows are scored data).')
    lines = _row_lines(len(rows), line_offset)
    if width == 3 or kind == 'scored':
        if width != 3:
            raise InputError(f'{source}: scored data needs 3 columns (a, b, score), got {width}.')
        scores = []
        for i, row in enumerate(rows):
            if not _is_number(row[2]) or not 0.0 <= float(row[2]) <= 1.0:
                raise InputError(f'{_where(source, i, line_offset)}: score {row[2]!r} is not a number in [0, 1].')
            scores.append(float(row[2]))
        _check_one_modality(a, 'the first column', source, line_offset)
        _check_one_modality(b, 'the second column', source, line_offset)
        groups, labels = _group_ids(a)
        return TrainingData('scored', a, b, groups, scores, labels, source, lines)
    if kind is None:
        kind = _detect_two_columns(a, b, names)
    _check_one_modality(a, 'the item column' if kind == 'labeled' else 'the first column', source, line_offset)
    if kind == 'labeled':
        groups, labels = _group_ids(b)
        return TrainingData('labeled', a, None, groups, None, labels, source, lines)
    _check_one_modality(b, 'the second column', source, line_offset)
    if kind == 'text-image':
        if item_modality(a[0]) == 'image' and item_modality(b[0]) == 'text':
            a, b = b, a  # text first, image second
    groups, labels = _group_ids(a)
    return TrainingData(kind, a, b, groups, None, labels, source, lines)


def _kind_columns(name: str) -> tuple[str, ...]:
    from .kinds import get_kind
    return get_kind(name).columns


def _kind_of_header(header: Sequence[str]) -> str | None:
    """The registered kind with a layout of its own (its ``read_rows``) whose columns the header names, or None."""
    from .kinds import DataKind, get_kind
    names = {str(h).strip().lower() for h in header}
    for name in kind_names():
        kind = get_kind(name)
        if type(kind).read_rows is not DataKind.read_rows and set(kind.columns) <= names:
            return name
    return None


def read_jsonl(path: str, kind: str | None = None) -> TrainingData:
    """A JSON-lines file, one object per line, read as data only: the first object's keys are the columns (a
    header). Raises InputError naming the line of anything else."""
    import json
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
    return from_rows(rows, source=os.path.basename(path), header=header, kind=kind, line_offset=lines)


def _row_lines(n: int, line_offset: int | Sequence[int]) -> list[int] | None:
    if not isinstance(line_offset, int):
        return list(line_offset)
    return [i + line_offset for i in range(n)] if line_offset else None


def _check_one_modality(column: list, what: str, source: str, line_offset: int | Sequence[int]) -> None:
    """InputError at the first row whose item is of another modality than the first row's: the kind and the
    model are chosen from row 0, so an image path among texts would otherwise train as a sentence."""
    first = item_modality(column[0])
    for i, item in enumerate(column):
        modality = item_modality(item)
        if modality != first:
            shown = repr(item)[:80]
            raise InputError(f'{_where(source, i, line_offset)}: {what} holds {_modality_name(modality)} ({shown}) '
                             f'but the first row holds {_modality_name(first)} ({repr(column[0])[:80]}); a column '
                             f'must hold one kind of item. Fix the row, or split the data by kind.')


def _modality_name(modality: str) -> str:
    if modality == 'other':
        return 'a value that is no item (a number, ...)'
    return f'{"an" if modality[0] in "aeiou" else "a"} {modality} item'



def _detect_two_columns(a: list, b: list, names: list[str]) -> str:
    """labeled, pairs or text-image, from column names where known, else from the cells."""
    if names[1] in LABEL_NAMES:
        return 'labeled'
    mod_a, mod_b = item_modality(a[0]), item_modality(b[0])
    if mod_b == 'other':
        return 'labeled'  # numbers or other hashables in the second column are labels
    across = 'text-image' if {mod_a, mod_b} == {'text', 'image'} else 'labeled'
    if mod_a == mod_b != 'text' or names[1] in TEXT_NAMES | IMAGE_NAMES:
        return across if mod_a != mod_b else 'pairs'
    if mod_a == 'text' and mod_b == 'image':
        return 'text-image'  # an image is no label: texts sharing an image are several captions of it
    # a text column beside items: labels repeat across many rows, captions and documents mostly do not
    labels_repeat = len(set(map(_hashable, b))) <= max(1, len(b) // 2)
    if labels_repeat:
        return 'labeled'
    return across if mod_a != mod_b else 'pairs'


def _delimiter(path: str, default: str = ',') -> str:
    return '\t' if path.lower().endswith('.tsv') else default


def _csv_rows(path: str, delimiter: str) -> tuple[list[list[str]], list[int]]:
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


def read_csv(path: str, delimiter: str = ',', header: bool | str = 'auto', kind: str | None = None) -> TrainingData:
    """Read a CSV file of 2 or 3 columns; a first row of known column names is a header.

    Relative image paths are resolved against the CSV's folder. Raises InputError with the line number.
    """
    rows, lines = _csv_rows(path, delimiter)
    if not rows:
        raise InputError(f'{path} is empty: expected rows such as item,label or query,doc or a,b,score.')
    first = [c.strip().lower() for c in rows[0]]
    known = KNOWN_HEADERS | {c for name in kind_names() for c in _kind_columns(name)}  # and the kinds' own columns
    has_header = header is True or (header == 'auto' and all(c in known for c in first))
    names = first if has_header else None
    body = rows[1:] if has_header else rows
    if not body:
        raise InputError(f'{path}: a header and no rows.')
    folder = os.path.dirname(os.path.abspath(path))
    body = [[_resolve_media(c, folder).strip() for c in row] for row in body]
    return from_rows(body, source=os.path.basename(path), header=names, kind=kind,
                     line_offset=lines[1:] if has_header else lines)


#: one-column CSV headers: a lone word such as 'title' may be an item, these name the column
ITEM_COLUMN_NAMES = {'item', 'items', 'text', 'texts', 'image', 'image_path', 'path', 'file', 'caption', 'sentence',
                     'document'}


def _resolve_media(cell: str, folder: str) -> str:
    """A relative path of a file item (an image, or a file of a plugin's modality) resolved against `folder`
    (the CSV's); other cells unchanged."""
    stripped = cell.strip()
    if stripped.lower().endswith(file_extensions()) and not os.path.isabs(stripped):
        return os.path.join(folder, stripped)
    return cell


def read_items(path: str) -> list[str]:
    """The items of a file to encode: one per line of a text file, or one column of a CSV.

    In a CSV with a header (known column names), the item column is the first not named as a label or a
    score, so 'label,text' files give their texts; without one it is the first column (a lone column named
    like a modality, 'image' say, is a header too). Relative file paths are resolved against the file's
    folder, as :func:`read_csv` does. Raises InputError."""
    folder = os.path.dirname(os.path.abspath(path))
    if path.lower().endswith(('.csv', '.tsv')):
        rows, _ = _csv_rows(path, _delimiter(path))
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


def read_image_folder(path: str) -> TrainingData:
    """A folder with one sub-folder of files per class (images, or the files of a plugin's modality) ->
    labeled data.

    Raises InputError when there are none, or when the folder mixes modalities."""
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    extensions = file_extensions()
    rows = []
    for name in classes:
        for file in sorted(os.listdir(os.path.join(path, name))):
            if file.lower().endswith(extensions):
                rows.append((os.path.join(path, name, file), name))
    if not rows:
        kinds = '; '.join(f'{m.name}: {" ".join(m.extensions)}' for m in modalities() if m.extensions)
        raise InputError(f'{path}: expected one sub-folder per class holding images or other item files ({kinds}), '
                         f'found none.')
    kinds = {item_modality(item) for item, _ in rows}
    if len(kinds) > 1:
        first = {m: next(item for item, _ in rows if item_modality(item) == m) for m in sorted(kinds)}
        raise InputError(f'{path}: the class folders mix ' + ' and '.join(f'{m}s (e.g. {p!r})' for m, p in
                                                                         first.items()) +
                         '; a model takes one modality, so keep one kind of file per data folder.')
    return from_rows(rows, source=os.path.basename(os.path.normpath(path)), kind='labeled')


def from_hf_dataset(dataset: Any, kind: str | None = None) -> TrainingData:
    """A Hugging Face ``datasets.Dataset`` with 2 or 3 columns (named as in a CSV header)."""
    columns = list(dataset.column_names)
    if len(columns) not in (2, 3):
        raise InputError(f'dataset has columns {columns}; expected 2 (item, label / query, doc / text, image) or '
                         f'3 (a, b, score). Select them with dataset.select_columns([...]).')
    data = {c: list(dataset[c]) for c in columns}
    rows = list(zip(*(data[c] for c in columns)))
    return from_rows(rows, source=f'datasets.Dataset({", ".join(columns)})', header=columns, kind=kind)


def _is_data_frame(data: Any) -> bool:
    """A pandas or polars DataFrame, recognised without importing either."""
    return type(data).__name__ == 'DataFrame' and hasattr(data, 'columns') and (
        hasattr(data, 'itertuples') or hasattr(data, 'iter_rows'))


def from_data_frame(frame: Any, name: str = 'train_data', kind: str | None = None) -> TrainingData:
    """A pandas (or polars) DataFrame of 2 or 3 columns: its rows, its column names read as a CSV header
    (default integer column names are no header). Raises InputError."""
    columns = list(frame.columns)
    if hasattr(frame, 'itertuples'):
        rows = [list(row) for row in frame.itertuples(index=False, name=None)]
    else:
        rows = [list(row) for row in frame.iter_rows()]
    if not rows:
        raise InputError(f'{name}: the DataFrame has no rows.')
    header = [str(c) for c in columns] if not all(isinstance(c, int) for c in columns) else None
    where = f'{name} (DataFrame with columns {", ".join(map(str, columns))})'
    return from_rows(rows, source=where if len(where) < 120 else f'{name} (DataFrame)', header=header, kind=kind)


def load_data(data: Any, name: str = 'train_data', kind: str | None = None, delimiter: str = ',') -> TrainingData:
    """Any supported source -> :class:`TrainingData` (kind detected unless `kind` is given).

    Raises InputError naming `name` for anything it cannot read.
    """
    if isinstance(data, TrainingData):
        return data
    if data is None:
        raise InputError(f'{name}: no data given; expected a list of rows, a CSV path, an image folder or a '
                         f'datasets.Dataset.')
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if os.path.isdir(path):
            return read_image_folder(path)
        if not os.path.isfile(path):
            raise InputError(f'{name}: {path!r} does not exist (expected a CSV file or a folder of class folders).')
        if path.lower().endswith('.jsonl'):
            return read_jsonl(path, kind=kind)
        if not path.lower().endswith(('.csv', '.tsv', '.txt')):
            raise InputError(f'{name}: {path!r} is not a CSV file (.csv/.tsv) or a folder (JSON lines, .jsonl, are '
                             f'read too).')
        return read_csv(path, delimiter=_delimiter(path, delimiter), kind=kind)
    if hasattr(data, 'column_names') and hasattr(data, 'features'):
        return from_hf_dataset(data, kind=kind)
    if _is_data_frame(data):
        return from_data_frame(data, name, kind=kind)
    if type(data).__name__ == 'Series' and hasattr(data, 'to_frame'):
        raise InputError(f'{name}: got a {type(data).__module__.split(".")[0]} Series (one column); pass a DataFrame '
                         f'with 2 columns (item, label / query, doc) or 3 (a, b, score).')
    if isinstance(data, Mapping):
        raise InputError(f'{name}: got a dict; pass a list of rows such as [(item, label), ...] or a CSV path.')
    if isinstance(data, Iterable):
        rows = list(data)
        if not rows:
            raise InputError(f'{name} is empty: expected rows such as (item, label), (query, doc) or (a, b, score).')
        if all(isinstance(r, Mapping) for r in rows):
            header = list(rows[0])
            rows = [[r.get(k) for k in header] for r in rows]
            return from_rows(rows, source=name, header=header, kind=kind)
        bad = next((i for i, r in enumerate(rows) if isinstance(r, str) or not isinstance(r, (list, tuple))), None)
        if bad is not None:
            raise InputError(f'{name}, row {bad}: {rows[bad]!r} is not a row; expected tuples such as (item, label), '
                             f'(query, doc) or (a, b, score).')
        return from_rows(rows, source=name, kind=kind)
    raise InputError(f'{name}: cannot read {type(data).__name__}; expected a list of rows, a CSV path, an image '
                     f'folder, a pandas DataFrame or a datasets.Dataset.')


def __getattr__(name: str):
    if name == 'KINDS':  # the registered kinds, read when asked (a plugin may register one)
        return kind_names()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
