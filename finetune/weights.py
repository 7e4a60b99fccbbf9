"""Loading weights files into modules, with errors that name the file and the tensors that do not fit.

Finding them (caches, packages, downloads, the offline rules) is :mod:`finetune.hub`'s job.
"""
from __future__ import annotations

from typing import Any

import torch

from .errors import WeightsLoadError


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
