"""What the batch samplers share: the check of their integer settings and their inputs as plain lists."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..validators import integer


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int of at least `minimum` (numpy integers too); OptionError naming `name` otherwise."""
    return integer(name, int(value) if isinstance(value, np.integer) else value, minimum)


def _to_list(values: Any) -> list:
    if hasattr(values, 'tolist'):  # torch tensors, numpy arrays: plain Python values
        values = values.tolist()
    return list(values)
