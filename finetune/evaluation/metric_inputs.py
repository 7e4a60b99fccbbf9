"""The checks of the metrics' inputs: embeddings, ks, chunk sizes, devices, relevant / exclude lists, labels and ids.

Each helper takes what the caller was given and the name it was given as, and returns it cleaned (a 2-D finite
tensor, sorted ks, a list of document indices, integer codes) or raises :class:`~finetune.errors.InputError`
naming it. Used by :mod:`.metrics`, :mod:`.ranking` and :mod:`.relevance`.
"""
from __future__ import annotations

from numbers import Integral
from typing import Any, Hashable, Mapping, Union

import numpy as np
import torch

from ..errors import InputError, OptionError
from ..validators import integer

Embeddings = Union[torch.Tensor, np.ndarray]


def _check_positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    """`value` as a positive int (a numpy integer too); None passes when `allow_none`. The rule of
    :func:`finetune.validators.integer`, raised as InputError."""
    if _is_index(value) and value > 0:
        value = int(value)  # the validator takes Python ints only
    try:
        return integer(name, value, 1, 'a positive integer' + (' or None' if allow_none else ''), allow_none)
    except OptionError as error:
        raise InputError(str(error)) from None


def _check_ks(ks: Any) -> tuple[int, ...]:
    """`ks` as sorted distinct positive ints; a single int is one k. Raises InputError."""
    if isinstance(ks, Integral) and not isinstance(ks, bool):
        ks = (ks,)
    if isinstance(ks, (str, bytes)) or not hasattr(ks, '__iter__'):
        raise InputError(f'ks: expected a list of positive integers such as (1, 5, 10), got {ks!r}.')
    values = list(ks)
    if not values:
        raise InputError('ks is empty: expected at least one positive integer, e.g. (1, 5, 10).')
    for k in values:
        if isinstance(k, bool) or not isinstance(k, Integral) or k <= 0:
            raise InputError(f'ks: expected positive integers such as (1, 5, 10), got {k!r} '
                             f'({type(k).__name__}) in {values!r}.')
    return tuple(sorted({int(k) for k in values}))


def _as_embeddings(value: Any, name: str) -> torch.Tensor:
    """`value` as a 2-D, non-empty, finite tensor on its own device (numpy becomes a CPU tensor).

    Raises InputError naming `name` for anything else.
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as error:
            raise InputError(f'{name}: expected a (N, D) torch tensor or numpy array of embeddings, got '
                             f'{type(value).__name__} ({error}).') from None
        if array.dtype.kind not in 'biuf':
            raise InputError(f'{name}: expected a (N, D) numeric array of embeddings, got dtype '
                             f'{array.dtype} ({type(value).__name__}).')
        if array.dtype.kind in 'biu' or array.dtype == np.float16:
            array = array.astype(np.float32)
        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # torch warns about tensors over read-only memory
            array = array.copy()
        tensor = torch.from_numpy(array)
    if tensor.is_complex():
        raise InputError(f'{name}: expected real-valued embeddings, got dtype {tensor.dtype}.')
    if tensor.ndim != 2:
        hint = ' For a single embedding, pass x[None] (shape (1, D)).' if tensor.ndim == 1 else ''
        raise InputError(f'{name}: expected a 2-D (N, D) array with one embedding per row, got shape '
                         f'{tuple(tensor.shape)}.{hint}')
    if tensor.shape[0] == 0:
        raise InputError(f'{name} is empty: expected at least one embedding (shape (N, D) with N >= 1), '
                         f'got shape {tuple(tensor.shape)}.')
    if tensor.shape[1] == 0:
        raise InputError(f'{name}: embeddings of width 0 (shape {tuple(tensor.shape)}); expected D >= 1.')
    if not tensor.is_floating_point():
        tensor = tensor.float()
    finite = torch.isfinite(tensor).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        what = 'NaN' if bool(torch.isnan(tensor[row]).any()) else 'an infinite value'
        bad = int((~finite).sum())
        raise InputError(f'{name} contains NaN or infinity: row {row} holds {what} ({bad} bad row'
                         f'{"s" if bad != 1 else ""} of {tensor.shape[0]}). Embeddings must be finite; '
                         f'check the model output or the data for those items.')
    return tensor


def _check_same_width(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise InputError(f'{a_name} have width D={a.shape[1]} but {b_name} have D={b.shape[1]}: both must '
                         f'be embeddings of the same space (shapes {tuple(a.shape)} and {tuple(b.shape)}).')


def _pick_device(device: Any, *tensors: torch.Tensor) -> torch.device:
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise InputError(f"device: expected a torch device such as 'cpu' or 'cuda:0', got {device!r} "
                             f'({error}).') from None
    for tensor in tensors:
        if tensor.device.type != 'cpu':
            return tensor.device
    return torch.device('cpu')


def _is_index(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _index_list(value: Any, what: str, num_docs: int) -> list[int]:
    """Document indices named by one element of `relevant` / `exclude` (int, iterable or None)."""
    if value is None:
        return []
    if _is_index(value):
        items = [value]
    elif isinstance(value, (str, bytes, Mapping)) or not hasattr(value, '__iter__'):
        raise InputError(f'{what}: expected document indices (a set, list or array of ints, or one int), '
                         f'got {value!r} ({type(value).__name__}).')
    else:
        items = list(value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else value)
    for item in items:
        _check_doc_index(item, what, num_docs)
    return [int(i) for i in items]


def _check_doc_index(item: Any, what: str, num_docs: int) -> None:
    if not _is_index(item):
        raise InputError(f'{what}: document indices must be integers, got {item!r} ({type(item).__name__}).')
    if not 0 <= item < num_docs:
        raise InputError(f'{what}: document index {item} is out of range; there are {num_docs} documents '
                         f'(valid indices 0..{num_docs - 1}).')


def _check_length(values: Any, name: str, expected: int, of: str) -> list:
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, '__len__'):
        raise InputError(f'{name}: expected a list with one entry per row of {of} ({expected}), got '
                         f'{type(values).__name__}.')
    if len(values) != expected:
        raise InputError(f'{name} has {len(values)} entries but {of} has {expected} rows: expected one entry '
                         f'per row.')
    return list(values)


def _as_key_list(values: Any, name: str, expected: int, of: str) -> list:
    """Labels or ids as a plain list of hashables, one per row of `of`. Raises InputError."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise InputError(f'{name}: expected one label per item (a 1-D sequence), got an array of shape '
                             f'{values.shape}.')
        values = values.tolist()
    return _check_length(values, name, expected, of)


def _codes(table: dict[Hashable, int], keys: list, name: str, grow: bool) -> np.ndarray:
    """Each key's integer code in `table` (new keys added when `grow`, else coded -1)."""
    codes = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        try:
            code = table.get(key)
        except TypeError:
            raise InputError(f'{name}[{i}] = {key!r} is not hashable; labels and ids must be hashable, such '
                             f'as ints or strings.') from None
        if code is None:
            if grow:
                code = table[key] = len(table)
            else:
                code = -1
        codes[i] = code
    return codes

