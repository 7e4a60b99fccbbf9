"""Devices, precision and random state: what the machine can do, and everything a run needs to repeat itself."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..errors import OptionError, did_you_mean

PRECISIONS = ('auto', 'bf16', 'fp16', 'fp32')


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 math (AMX or AVX-512 BF16), where autocast pays off."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = f.read()
    except OSError:
        return False
    return 'amx_bf16' in flags or 'avx512_bf16' in flags


def cpu_name() -> str:
    """The CPU's model name and whether it has native bf16, for benchmark reports."""
    name = 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            name = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), name)
    except OSError:
        pass
    return f'{name} ({"native bf16" if cpu_supports_bf16() else "no native bf16"})'


def resolve_device(device: str) -> str:
    """'cpu', 'cuda' or 'cuda:N' for `device` ('auto': CUDA when there is one). Raises OptionError."""
    if not isinstance(device, str):
        raise OptionError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise OptionError(f"device={device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'.")
        return device
    if device != 'cpu':
        raise OptionError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    return device


def check_precision(precision: Any) -> str:
    """`precision`, one of :data:`PRECISIONS`; raises OptionError (with the closest) for any other value."""
    if precision not in PRECISIONS:
        raise OptionError(f'precision: expected one of {", ".join(PRECISIONS)}, got {precision!r}.'
                          f'{did_you_mean(str(precision), PRECISIONS)}')
    return precision


def resolve_precision(precision: str, device: str) -> str:
    """'bf16', 'fp16' or 'fp32' for `precision` on `device` ('auto': bf16 where the hardware has it).

    Raises OptionError for an unknown precision, and for fp16 off CUDA (autocast to fp16 is CUDA's)."""
    check_precision(precision)
    if precision == 'fp16' and not device.startswith('cuda'):
        native = 'native on this CPU' if cpu_supports_bf16() else 'slow on this CPU, which lacks AVX-512 BF16 / AMX'
        raise OptionError(f"precision='fp16': fp16 autocast runs on CUDA devices only, and this run is on "
                          f"{device!r}. Choices here: 'fp32', 'bf16' ({native}) or 'auto'.")
    if precision != 'auto':
        return precision
    if device.startswith('cuda'):
        return 'bf16' if torch.cuda.is_bf16_supported() else 'fp32'
    return 'bf16' if cpu_supports_bf16() else 'fp32'


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The state of every global random generator a step draws from, in a form ``torch.load(...,
    weights_only=True)`` reads back (tensors, numbers, strings, lists)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {'python': _plain(random.getstate()), 'torch': torch.get_rng_state(),
             'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                       'has_gauss': int(has_gauss), 'cached': float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` returned."""
    random.setstate(_tuples(state['python']))
    numpy_state = state['numpy']
    np.random.set_state((numpy_state['kind'], numpy_state['keys'].numpy().astype(np.uint32), numpy_state['pos'],
                         numpy_state['has_gauss'], numpy_state['cached']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
