"""Devices, precision and random state: what the machine can do, and everything a run needs to repeat itself."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Sequence

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


def device_choices() -> list[str]:
    """The devices a run may name on this machine: 'auto', 'cpu', and 'cuda', 'cuda:0', ... for each CUDA
    device torch sees."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ['auto', 'cpu'] + (['cuda'] + [f'cuda:{i}' for i in range(count)] if count else [])


def resolve_device(device: str) -> str:
    """'cpu', 'cuda' or 'cuda:N' for `device` ('auto': CUDA when there is one), checked against this machine.

    Raises OptionError, naming the devices that work here, for another name, for CUDA on a machine without it,
    and for a 'cuda:N' whose N is not one of the CUDA devices torch sees (``CUDA_VISIBLE_DEVICES`` counts)."""
    expected = "expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
    if not isinstance(device, str):
        raise OptionError(f'device: {expected}, got {device!r}.')
    name = device.strip().lower()
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cpu':
        return name
    if name != 'cuda' and not name.startswith('cuda:'):
        raise OptionError(f'device: {expected}, got {device!r}.{did_you_mean(name, device_choices())} Devices '
                          f'here: {", ".join(device_choices())}.')
    index = name[len('cuda:'):] if name != 'cuda' else None
    if index is not None and not index.isdigit():
        raise OptionError(f'device={device!r}: {expected} with N a device number (cuda:0, cuda:1, ...). Devices '
                          f'here: {", ".join(device_choices())}.')
    if not torch.cuda.is_available():
        built = f'torch {torch.__version__} is built without CUDA' if torch.version.cuda is None else \
            'torch finds no CUDA device (no GPU, no driver, or CUDA_VISIBLE_DEVICES hides them)'
        raise OptionError(f"device={device!r}: CUDA is not available on this machine ({built}). Devices here: "
                          f"'cpu' or 'auto'.")
    count = torch.cuda.device_count()
    if index is not None and int(index) >= count:
        names = ', '.join(f'cuda:{i}' for i in range(count))
        raise OptionError(f'device={device!r}: only {count} CUDA device{"s" if count != 1 else ""}: {names}. '
                          f'Choose one of them, or \'cuda\' / \'auto\' for the current one.')
    return 'cuda' if index is None else f'cuda:{int(index)}'


def loader_settings(device: str, modalities: Sequence[str], num_workers: int | None,
                    processes_here: int = 1) -> tuple[int, bool]:
    """``(num_workers, pin_memory)`` of the training DataLoader for a run on `device` whose data has
    `modalities`, `processes_here` training processes sharing this machine's cores.

    Workers: `num_workers` when given. Otherwise, on the CPU, none for text-only data (tokenizing costs less
    than a worker's start and its share of the cores that also train) and half the cores (1 to 4) for other
    data (decoding images, sampling points). On CUDA, half the cores (1 to 4; 1 to 2 for text) for any data:
    the cores are free, and tokenizing or decoding in the training process leaves the GPU waiting.
    Pinned memory on CUDA only (the batch's copy to the GPU then runs beside the step)."""
    cores = max(1, (os.cpu_count() or 2) // max(1, processes_here))
    on_cuda = device.startswith('cuda')
    if num_workers is not None:
        return num_workers, on_cuda
    text_only = all(m == 'text' for m in modalities)
    if not on_cuda:
        return (0 if text_only else max(1, min(4, cores // 2))), False
    return max(1, min(2 if text_only else 4, cores // 2)), True


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


def attention_kernels(device: torch.device | str, cudnn: bool = False) -> contextlib.AbstractContextManager:
    """The context a CUDA run trains in: PyTorch's scaled-dot-product attention may use its flash, memory-efficient
    and math kernels, not cuDNN's (unless `cudnn`). On an H200 (torch 2.11) cuDNN's attention, which torch picks
    for bf16 and fp16, spent about 8 ms of CPU per call building a plan for each new sequence length: with
    batches padded to their longest text, most steps of a first epoch met a new length, and a bf16 fit ran 5x
    slower than fp32 until every length had been seen (benchmarks/gpu_check.py; docs/gpu.md). The other kernels
    compute the same attention (other rounding). Elsewhere (a CPU, another accelerator): nothing changes."""
    if torch.device(device).type != 'cuda' or cudnn:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
