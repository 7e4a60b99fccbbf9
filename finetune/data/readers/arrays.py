"""numpy arrays of rows: a 2-D array of dtype object or str (``df.values``, ``np.array([('a dog', 'dog'), ...])``),
one row per line of the array. A numeric array is no table of rows (an image, a point cloud): it is left to the
other readers, which refuse it with what to pass."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InputError
from .base import Reader, Table

#: the dtype kinds of arrays whose cells are texts or Python objects (str, object)
ROW_KINDS = 'UO'


class ArrayReader(Reader):
    """A numpy array of dtype object or str: a 2-D one is a table of rows."""

    name = 'arrays'

    def accepts(self, source: Any) -> bool:
        return isinstance(source, np.ndarray) and source.dtype.kind in ROW_KINDS and source.ndim != 1

    def read(self, source: Any, name: str, delimiter: str = ',') -> Table:
        if source.ndim != 2:
            raise InputError(f'{name}: a {source.ndim}-D array of shape {source.shape}; expected a 2-D array of rows '
                             f'(one row per line, 2 or 3 columns such as (item, label), (query, doc) or '
                             f'(a, b, score)), e.g. df.values, or a list of rows.')
        if not len(source):
            raise InputError(f'{name} is empty: expected rows such as (item, label), (query, doc) or (a, b, score).')
        return Table(source.tolist(), name)
