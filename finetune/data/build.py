"""Rows of cells -> :class:`TrainingData`: every reader ends here. Checks each row (its width, no empty cell, a
score in [0, 1], one modality per column), has the kind detected (:mod:`finetune.data.detect`) unless it is given,
and builds the data; every mistake is reported with the row (file line) that caused it.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..errors import InputError
from ..modalities import item_modality
from . import detect
from .kind_registry import kind_names
from .kinds import get_kind
from .training_data import TrainingData, group_ids


def from_rows(rows: Sequence[Sequence[Any]], source: str, header: Sequence[str] | None = None,
              kind: str | None = None, line_offset: int | Sequence[int] = 0) -> TrainingData:
    """Build TrainingData from rows of 2 (item, label | query, doc | text, image) or 3 (a, b, score) cells.

    `line_offset` turns a row index into a file line number in messages (or is the line of each row).
    Returns the data, of `kind` or of the kind detected. Raises InputError.
    """
    if kind is not None and kind not in kind_names():
        raise InputError(f'{source}: unknown data kind {kind!r}; expected one of {", ".join(kind_names())}.')
    if not rows:
        raise InputError(f'{source} is empty: expected rows such as (item, label), (query, doc) or (a, b, score).')
    if kind is None and header:
        kind = detect.kind_of_header(header)
    if kind is not None:
        own = get_kind(kind).read_rows(rows, header, source, _row_lines(len(rows), line_offset))
        if own is not None:
            return own
    width = len(header) if header else len(rows[0])
    _check_cells(rows, width, 'the header' if header else 'the first row', source, line_offset)
    names = [str(h).strip().lower() for h in header] if header else [''] * width
    a = [r[0] for r in rows]
    b = [r[1] for r in rows]
    if width == 2 and detect.labels_come_first(names) and kind in (None, 'labeled'):
        a, b, names = b, a, names[::-1]  # a 'label, text' header: the items are in the second column
    if width == 3 and kind not in (None, 'scored'):
        raise InputError(f'{source}: kind={kind!r} takes 2 columns, got 3 (a, b, score rows are scored data).')
    lines = _row_lines(len(rows), line_offset)
    if width == 3 or kind == 'scored':
        if width != 3:
            raise InputError(f'{source}: scored data needs 3 columns (a, b, score), got {width}.')
        scores = _scores(rows, source, line_offset)
        _check_one_modality(a, 'the first column', source, line_offset)
        _check_one_modality(b, 'the second column', source, line_offset)
        groups, labels = group_ids(a)
        return TrainingData('scored', a, b, groups, scores, labels, source, lines)
    if kind is None:
        kind = detect.detect_two_columns(a, b, names)
    _check_one_modality(a, 'the item column' if kind == 'labeled' else 'the first column', source, line_offset)
    if kind == 'labeled':
        groups, labels = _label_groups(b, source, line_offset)
        return TrainingData('labeled', a, None, groups, None, labels, source, lines)
    _check_one_modality(b, 'the second column', source, line_offset)
    if kind == 'text-image':
        a, b = detect.text_first(a, b)
    groups, labels = group_ids(a)
    return TrainingData(kind, a, b, groups, None, labels, source, lines)


def _where(source: str, index: int, line_offset: int | Sequence[int]) -> str:
    if not isinstance(line_offset, int):  # the file line of each row
        return f'{source}, line {line_offset[index]}'
    return f'{source}, line {index + line_offset}' if line_offset else f'{source}, row {index}'


def _row_lines(n: int, line_offset: int | Sequence[int]) -> list[int] | None:
    if not isinstance(line_offset, int):
        return list(line_offset)
    return [i + line_offset for i in range(n)] if line_offset else None


def _check_cells(rows: Sequence[Sequence[Any]], width: int, like: str, source: str,
                 line_offset: int | Sequence[int]) -> None:
    """InputError unless there are 2 or 3 columns, every row has `width` cells and no cell is empty."""
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


def _is_number(cell: Any) -> bool:
    if isinstance(cell, bool):
        return False
    if isinstance(cell, (int, float)):
        return math.isfinite(cell)
    try:
        return math.isfinite(float(cell))
    except (TypeError, ValueError):
        return False


def _scores(rows: Sequence[Sequence[Any]], source: str, line_offset: int | Sequence[int]) -> list[float]:
    """The third cell of each row as a score; InputError at the first that is no number in [0, 1]."""
    scores = []
    for i, row in enumerate(rows):
        if not _is_number(row[2]) or not 0.0 <= float(row[2]) <= 1.0:
            raise InputError(f'{_where(source, i, line_offset)}: score {row[2]!r} is not a number in [0, 1].')
        scores.append(float(row[2]))
    return scores


def _label_groups(labels: list, source: str, line_offset: int | Sequence[int]) -> tuple[list[int], list]:
    """The class of each row and the class labels (see :func:`group_ids`); InputError at the first label that is
    unhashable (a list, a dict, an array): equal labels must make one class, and such values have no equality a
    class can be keyed by, so they are refused rather than told apart by identity."""
    for i, label in enumerate(labels):
        try:
            hash(label)
        except TypeError:
            one = f' (for one value, give it alone: {label[0]!r})' if isinstance(label, (list, tuple)) and \
                len(label) == 1 else ''
            raise InputError(f'{_where(source, i, line_offset)}: the label {repr(label)[:80]} is a '
                             f'{type(label).__name__}, which cannot name a class; expected one label per row, a '
                             f'string or a number{one}.') from None
    return group_ids(labels)


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
