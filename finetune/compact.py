"""Compact embeddings: int8 / uint8 codes (4x smaller than float32) and sign bits packed 8 dimensions to a byte
(32x smaller), for an index that costs less to store and to search.

* ``'int8'`` / ``'uint8'``: each dimension's value is mapped to one of 256 levels spread evenly over that
  dimension's calibration range ``[low, high]`` (the nearest level; values outside are held at the ends), stored
  as ``-128..127`` (int8) or ``0..255`` (uint8). The ranges (:class:`Ranges`) come from a sample of embeddings;
  :func:`finetune.encode` keeps the first ranges it uses on the model, and an artifact saves them
  (``finetune_config.json``, field ``embedding_ranges``, plain JSON), so that every later encode of queries or
  documents uses the same levels.
* ``'ubinary'``: one bit per dimension, 1 where the value is above 0, packed 8 dimensions to a byte
  (``numpy.packbits`` order: the first dimension is the high bit): ``(n, dim / 8)`` uint8.
  ``'binary'``: the same bytes minus 128, as int8 (the convention of sentence-transformers'
  ``quantize_embeddings``).

Embeddings cut to fewer dimensions (``dim=``, :mod:`finetune.dims`) are cut first, then coded; ranges are kept per
width. Searching on the codes and rescoring with float queries is :mod:`finetune.evaluation.compact`.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch

from .errors import ArtifactError, InputError
from .validators import choice

#: every precision :func:`finetune.encode` gives; 'float32' is the embeddings as the model outputs them
PRECISIONS = ('float32', 'int8', 'uint8', 'binary', 'ubinary')
#: the precisions whose levels need calibration ranges
SCALAR = ('int8', 'uint8')
#: the precisions of one bit per dimension
BINARY = ('binary', 'ubinary')
#: the model attribute (and artifact field) that keeps the ranges, by embedding width
RANGES_ATTRIBUTE = 'embedding_ranges'

class Ranges(NamedTuple):
    """The calibration range of every dimension: ``low[i]`` maps to the first level, ``high[i]`` to the last."""
    low: np.ndarray
    high: np.ndarray

    @property
    def width(self) -> int:
        return len(self.low)


def check_precision(precision: Any, width: int | None = None) -> str:
    """`precision` as :data:`PRECISIONS` spells it; with `width`, InputError when a binary precision cannot pack
    `width` dimensions (not a multiple of 8). Raises OptionError listing the choices."""
    precision = choice('precision', precision, PRECISIONS)
    if precision in BINARY and width is not None and width % 8:
        below, above = width // 8 * 8, (width // 8 + 1) * 8
        sizes = f'{below} or {above}' if below else f'{above}'
        raise InputError(f"precision={precision!r} packs 8 dimensions to a byte, but the embeddings have {width} "
                         f'dimensions (not a multiple of 8); cut them to a multiple of 8 with dim= (e.g. {sizes}).')
    return precision


def index_bytes(precision: str, width: int) -> int:
    """The bytes one vector of `width` dimensions takes at `precision`."""
    return {'float32': 4 * width, 'int8': width, 'uint8': width}.get(precision, math.ceil(width / 8))


def calibrate(embeddings: Any, name: str = 'calibration') -> Ranges:
    """The per-dimension minimum and maximum of `embeddings` ((n, dim), numpy or torch, n >= 2, finite).
    Raises InputError naming `name` for anything else."""
    array = _as_float_rows(embeddings, name)
    if array.shape[0] < 2:
        raise InputError(f'{name}: int8 / uint8 ranges need a sample of at least 2 embeddings (better hundreds, '
                         f'such as the corpus you index), got {array.shape[0]}.')
    return Ranges(array.min(axis=0), array.max(axis=0))


def as_ranges(calibration: Any, width: int, name: str = 'calibration') -> Ranges:
    """`calibration` as :class:`Ranges` of `width` dimensions: a sample of embeddings ((n, width) array or tensor),
    or ranges already computed (a :class:`Ranges`, a ``(low, high)`` tuple or a ``{'low': ..., 'high': ...}``
    dict). Raises InputError naming `name` for a wrong width, non-finite values or low above high."""
    if isinstance(calibration, dict):
        if set(calibration) != {'low', 'high'}:
            raise InputError(f"{name}: expected ranges as {{'low': [...], 'high': [...]}}, got the keys "
                             f'{sorted(map(str, calibration))}.')
        calibration = (calibration['low'], calibration['high'])
    if isinstance(calibration, tuple):
        if len(calibration) != 2:
            raise InputError(f'{name}: expected ranges as a (low, high) pair of per-dimension arrays, got a tuple '
                             f'of {len(calibration)}. A sample of embeddings goes in as one (n, {width}) array.')
        ranges = Ranges(*(_vector(v, f'{name} {side}') for v, side in zip(calibration, ('low', 'high'))))
        if ranges.low.shape != ranges.high.shape:
            raise InputError(f'{name}: low has {ranges.width} dimensions but high has {len(ranges.high)}.')
        if not np.all(ranges.low <= ranges.high):
            bad = int(np.flatnonzero(ranges.low > ranges.high)[0])
            raise InputError(f'{name}: low must not be above high; dimension {bad} has low {ranges.low[bad]} > '
                             f'high {ranges.high[bad]}.')
    else:
        ranges = calibrate(calibration, name)
    if ranges.width != width:
        raise InputError(f'{name}: ranges of {ranges.width} dimensions, but the embeddings have {width}; calibrate '
                         f'on embeddings of the same size (the same dim=).')
    return ranges


def quantize(embeddings: Any, precision: str, ranges: Ranges | None = None) -> np.ndarray:
    """`embeddings` ((n, dim) float, numpy or torch) at `precision`: float32 as they are, int8 / uint8 codes
    ``(n, dim)`` on the levels of `ranges` (needed), binary / ubinary bits ``(n, dim / 8)`` (see the module)."""
    precision = check_precision(precision)
    array = _as_float_rows(embeddings, 'embeddings')
    if precision == 'float32':
        return array
    check_precision(precision, array.shape[1])
    if precision in BINARY:
        packed = np.packbits(array > 0, axis=1)
        return packed if precision == 'ubinary' else (packed.astype(np.int16) - 128).astype(np.int8)
    if ranges is None:
        raise InputError(f'precision={precision!r} needs calibration ranges (see finetune.compact.calibrate).')
    ranges = as_ranges(ranges, array.shape[1], 'ranges')
    low, step = _levels(ranges)
    levels = np.clip(np.rint((array - low) / step), 0, 255)
    return levels.astype(np.uint8) if precision == 'uint8' else (levels - 128).astype(np.int8)


def dequantize(codes: np.ndarray, precision: str, ranges: Ranges | None = None, width: int | None = None
               ) -> np.ndarray:
    """The float32 values `codes` stand for: int8 / uint8, each code's level in its dimension's range (the
    nearest level to the value coded); binary / ubinary, +1 for a set bit and -1 for a clear one (``(n, width)``,
    `width` default 8 per byte)."""
    codes = np.asarray(codes)
    if precision in BINARY:
        bytes_ = (codes.astype(np.int16) + 128).astype(np.uint8) if precision == 'binary' else codes.astype(np.uint8)
        bits = np.unpackbits(bytes_, axis=1, count=width)
        return bits.astype(np.float32) * 2 - 1
    low, step = _levels(ranges)
    levels = codes.astype(np.float32) + (128 if precision == 'int8' else 0)
    return (low + levels * step).astype(np.float32)


def _levels(ranges: Ranges) -> tuple[np.ndarray, np.ndarray]:
    """The first level and the step between levels of each dimension (a dimension of one value: step 1)."""
    low, high = np.asarray(ranges.low, dtype=np.float32), np.asarray(ranges.high, dtype=np.float32)
    step = (high - low) / 255
    return low, np.where(step > 0, step, 1).astype(np.float32)


def _vector(value: Any, name: str) -> np.ndarray:
    """`value` as a finite 1-D float32 array (one number per dimension); InputError naming `name` otherwise."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        vector = None
    if vector is None or vector.ndim != 1 or not len(vector) or not np.isfinite(vector).all():
        raise InputError(f'{name}: expected one finite number per dimension (a 1-D array), got {value!r:.80}.')
    return vector


def _as_float_rows(embeddings: Any, name: str) -> np.ndarray:
    """`embeddings` as a finite 2-D float32 numpy array; InputError naming `name` otherwise."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().float().numpy()
    try:
        array = np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InputError(f'{name}: expected an (n, dim) array of float embeddings, got {type(embeddings).__name__} '
                         f'({error}).') from None
    if array.ndim != 2 or 0 in array.shape:
        raise InputError(f'{name}: expected an (n, dim) array of embeddings, one per row, got shape {array.shape}.')
    if not np.isfinite(array).all():
        raise InputError(f'{name}: holds NaN or infinity; embeddings must be finite.')
    return array


# ---------------------------------------------------------------- ranges kept on a model

def kept_ranges(model: Any, width: int) -> Ranges | None:
    """The ranges `model` keeps for embeddings of `width` dimensions, or None."""
    return (getattr(model, RANGES_ATTRIBUTE, None) or {}).get(int(width))


def keep_ranges(model: Any, ranges: Ranges) -> None:
    """Keep `ranges` on `model` for its embeddings of that width (saved with it by ``save_model`` / ``run.save``)."""
    table = dict(getattr(model, RANGES_ATTRIBUTE, None) or {})
    table[ranges.width] = Ranges(np.asarray(ranges.low, np.float32), np.asarray(ranges.high, np.float32))
    setattr(model, RANGES_ATTRIBUTE, table)


def ranges_for(model: Any, embeddings: Any, calibration: Any = None) -> Ranges:
    """The ranges to code `embeddings` of `model` with: `calibration` when given (kept on the model if it keeps
    none for that width yet), else the model's, else those of `embeddings` themselves (kept too, with a warning:
    a small batch makes poor ranges)."""
    width = int(embeddings.shape[1])
    kept = kept_ranges(model, width)
    if calibration is not None:
        ranges = as_ranges(calibration, width)
    elif kept is not None:
        return kept
    else:
        ranges = calibrate(embeddings, 'the embeddings being encoded')
        warnings.warn(f'int8 / uint8 ranges computed from the {len(embeddings)} embeddings being encoded (no '
                      f'calibration= given, none kept on the model) and kept on the model for later encodes; '
                      f'pass calibration= (a sample of embeddings, such as the corpus) to choose them.', stacklevel=4)
    if kept is None:
        keep_ranges(model, ranges)
    return ranges


def encode_compact(model: Any, embeddings: Any, precision: str, calibration: Any = None, convert_to: str = 'numpy'):
    """`embeddings` of `model` at `precision` (:func:`quantize`), numpy or a torch tensor as `convert_to` says;
    int8 / uint8 ranges from :func:`ranges_for`."""
    if precision == 'float32':
        return embeddings
    ranges = ranges_for(model, embeddings, calibration) if precision in SCALAR else None
    codes = quantize(embeddings, precision, ranges)
    return torch.from_numpy(codes) if convert_to == 'torch' else codes


def ranges_config(model: Any) -> dict[str, dict[str, list[float]]] | None:
    """The ranges `model` keeps, as the JSON of its artifact (``{'<width>': {'low': [...], 'high': [...]}}``)."""
    table = getattr(model, RANGES_ATTRIBUTE, None)
    if not table:
        return None
    return {str(width): {'low': [float(v) for v in r.low], 'high': [float(v) for v in r.high]}
            for width, r in sorted(table.items())}


def restore_ranges(model: Any, config: dict[str, Any], path: str) -> Any:
    """`model` with the ranges its artifact's `config` records (none recorded: as it is). Raises ArtifactError
    naming `path` and the field for a damaged entry."""
    saved = config.get(RANGES_ATTRIBUTE)
    if saved is None:
        return model
    field = f"{path}, field '{RANGES_ATTRIBUTE}'"
    if not isinstance(saved, dict):
        raise ArtifactError(f'{field}: expected a JSON object of ranges by width, got {type(saved).__name__}.')
    for key, entry in saved.items():
        if not str(key).isdigit() or not isinstance(entry, dict):
            raise ArtifactError(f"{field}: expected {{'<width>': {{'low': [...], 'high': [...]}}}}, got key {key!r}.")
        try:
            keep_ranges(model, as_ranges(entry, int(key), f'{field}[{key!r}]'))
        except InputError as error:
            raise ArtifactError(f'{error} The artifact is damaged; save the model again.') from None
    return model


def check_encode(model: Any, precision: Any, dim: int | None, calibration: Any) -> str:
    """`precision` checked before :func:`finetune.encode` embeds anything: a known precision, binary codes of a width
    that packs (`dim`, else the model's size) and `calibration` only for int8 / uint8. Raises OptionError /
    InputError."""
    precision = check_precision(precision)
    if calibration is not None and precision not in SCALAR:
        raise InputError(f"calibration: int8 / uint8 codes use calibration ranges; precision={precision!r} has "
                         f'none (binary codes are the signs of the values).')
    if precision in BINARY:
        if dim is not None:
            from .dims import check_dim
            dim = check_dim(model, dim)
        check_precision(precision, dim or int(getattr(model, 'output_dim', 0) or 0) or None)
    return precision


def forget_ranges(model: Any) -> None:
    """Drop the ranges `model` keeps (fit calls it: ranges calibrated on other weights would code the new
    embeddings on the wrong levels)."""
    if RANGES_ATTRIBUTE in getattr(model, '__dict__', {}):
        delattr(model, RANGES_ATTRIBUTE)
