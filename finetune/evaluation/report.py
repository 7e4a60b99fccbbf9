"""Rich tables of retrieval metrics: before / after / change."""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Mapping

from rich.table import Table
from rich.text import Text

from ..errors import InputError
from .metrics import COUNT_KEYS


def format_metrics_table(before: Mapping[str, Any] | None, after: Mapping[str, Any],
                         title: str = 'retrieval metrics', guard: Mapping[str, Any] | None = None,
                         columns: tuple[str, str] = ('before', 'after')) -> Table:
    """A rich table of metrics: metric | before | after | change (after - before, signed).

    Numbers are shown with 4 decimals; the count keys (``num_queries``, ``num_skipped``) are not
    rows but go into the caption as 'N queries'. With `before` None the table has only metric |
    after. A metric missing on one side shows '-'. `guard` (``{'before': ..., 'after': ...}``, the guard
    data's metrics) adds a section of rows named 'guard <metric>', so that what fine-tuning cost elsewhere
    shows beside what it gained. `columns` names the two columns (such as ``('float32', 'binary')``).
    Returns the :class:`rich.table.Table`.
    Raises InputError when `after` (or a non-None `before`) is not a dict of numbers.
    """
    after = _check_metric_dict('after', after)
    before = None if before is None else _check_metric_dict('before', before)
    table = Table(title=title)
    table.add_column('metric')
    if before is not None:
        table.add_column(columns[0], justify='right')
    table.add_column(columns[1], justify='right')
    if before is not None:
        table.add_column('change', justify='right')
    names = [k for k in after if k not in COUNT_KEYS]
    if before is not None:
        names += [k for k in before if k not in COUNT_KEYS and k not in after]
    for name in names:
        new = after.get(name)
        if before is None:
            table.add_row(Text(str(name)), _number(new))
            continue
        old = before.get(name)
        table.add_row(Text(str(name)), _number(old), _number(new), _change(old, new))
    if guard and guard.get('after') is not None:
        _guard_rows(table, guard, before is not None)
    table.caption = _caption(before, after)
    return table


def _guard_rows(table: Table, guard: Mapping[str, Any], with_before: bool) -> None:
    g_after = _check_metric_dict('guard after', guard['after'])
    g_before = _check_metric_dict('guard before', guard.get('before') or {})
    table.add_section()
    for name in (k for k in g_after if k not in COUNT_KEYS):
        old, new = g_before.get(name), g_after.get(name)
        cells = [_number(old), _number(new), _change(old, new)] if with_before else [_number(new)]
        table.add_row(Text(f'guard {name}'), *cells)


def _check_metric_dict(name: str, metrics: Any) -> dict[str, Any]:
    if not isinstance(metrics, Mapping):
        raise InputError(f'{name}: expected a dict of metrics such as retrieval_metrics returns, got '
                         f'{type(metrics).__name__}.')
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, Real):
            raise InputError(f'{name}[{key!r}]: expected a number, got {value!r} ({type(value).__name__}).')
    return dict(metrics)


# ---------------------------------------------------------------- table

def _number(value: Any) -> str:
    return '-' if value is None else f'{float(value):.4f}'


def _change(old: Any, new: Any) -> Text:
    if old is None or new is None:
        return Text('-')
    delta = float(new) - float(old)
    text = f'{delta:+.4f}'
    style = '' if not math.isfinite(delta) or text in ('+0.0000', '-0.0000') else ('green' if delta > 0 else 'red')
    return Text(text, style=style)


def _caption(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> str | None:
    def count(metrics: Mapping[str, Any] | None, key: str) -> int | None:
        return None if metrics is None or metrics.get(key) is None else int(metrics[key])

    new, old = count(after, 'num_queries'), count(before, 'num_queries')
    if new is None:
        return None
    caption = f'N queries: {new}' if old is None or old == new else f'N queries: {old} before, {new} after'
    skipped = count(after, 'num_skipped')
    if skipped:
        caption += f' ({skipped} skipped: no relevant document)'
    return caption
