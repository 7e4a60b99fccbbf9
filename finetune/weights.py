"""Finding and loading pretrained weights, offline first.

Weights come from a local path the user gives, a library cache (torch hub's ``checkpoints`` folder for
torchvision and timm URLs), or a download when the network answers within seconds. When none works the
error names the file, the folder it looked in, and the ways out.
"""
from __future__ import annotations

import os
import socket
import urllib.parse
from typing import Any

import torch

from .errors import WeightsLoadError, WeightsNotFoundError

OFFLINE_ENVS = ('FINETUNE_OFFLINE', 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')
CONNECT_TIMEOUT_S = 3.0


def offline_requested() -> bool:
    """True when an environment variable asks for no network at all."""
    return any(os.environ.get(k, '').strip() not in ('', '0', 'false', 'False') for k in OFFLINE_ENVS)


def host_reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """True when a TCP connection to `url`'s host opens within `timeout` seconds."""
    parts = urllib.parse.urlparse(url)
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_checkpoint_dir() -> str:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), where torchvision caches weights."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def cached_or_download(url: str, model: str, cache_dir: str | None = None, filename: str | None = None) -> str:
    """The local path of the weights at `url`: from `cache_dir` if there, else downloaded into it.

    Raises WeightsNotFoundError, within seconds, when the file is not cached and the network is off.
    """
    cache_dir = cache_dir or hub_checkpoint_dir()
    filename = filename or os.path.basename(urllib.parse.urlparse(url).path)
    path = os.path.join(cache_dir, filename)
    if os.path.isfile(path):
        return path
    reason = 'offline mode is set (' + ', '.join(k for k in OFFLINE_ENVS if os.environ.get(k)) + ')' \
        if offline_requested() else None
    if reason is None and not host_reachable(url):
        reason = f'{urllib.parse.urlparse(url).hostname} could not be reached within {CONNECT_TIMEOUT_S:g}s'
    if reason is None:
        os.makedirs(cache_dir, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, path, progress=True)
            return path
        except Exception as exc:  # noqa: BLE001 - reported with the way out below
            reason = f'the download failed ({type(exc).__name__}: {exc})'
    raise WeightsNotFoundError(
        f'pretrained weights for {model!r} are not available: {reason}.\n'
        f'  looked for: {filename}\n'
        f'  in:         {cache_dir}\n'
        f'Ways out: (1) put {filename} (from {url}) into that folder, or pass its path as '
        f"model_options={{'pretrained': '/path/to/{filename}'}}; "
        f"(2) use random weights with model_options={{'pretrained': False}}.")


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a torch file (loaded with ``weights_only``).

    A checkpoint that wraps its weights (``{'state_dict': ...}`` or ``{'model': ...}``) is unwrapped.
    Raises WeightsLoadError when the file cannot be read as weights.
    """
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        obj: Any = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise WeightsLoadError(f'could not read weights from {path!r}: {type(exc).__name__}: {exc}. Expected a '
                               f'.safetensors file or a torch state dict saved with torch.save.') from exc
    for key in ('state_dict', 'model', 'model_state_dict'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsLoadError(f'{path!r} does not hold a state dict (a mapping of names to tensors).')
    return obj


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, model: str,
              assign: bool = False) -> None:
    """``module.load_state_dict(state)`` with a readable error listing missing / unexpected keys.

    ``assign=True`` adopts the file's tensors (for a module built on the meta device)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        def show(keys):
            return ', '.join(keys[:5]) + (f' (+{len(keys) - 5} more)' if len(keys) > 5 else '')
        parts = [f'{len(missing)} missing: {show(missing)}' if missing else '',
                 f'{len(unexpected)} unexpected: {show(unexpected)}' if unexpected else '',
                 f'{len(wrong)} of another shape: {show(wrong)}' if wrong else '']
        raise WeightsLoadError(f'the weights in {source!r} do not fit {model!r}: '
                               + '; '.join(p for p in parts if p) + '.')
    module.load_state_dict(state, assign=assign)
    if assign:
        left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
        if left:
            raise WeightsLoadError(f'{model!r}: no values in {source!r} for {", ".join(left[:5])}.')
