"""Checkpoints: the model as an artifact plus everything a run needs to continue exactly where it stopped.

``output_dir/checkpoint-<step>/`` holds the model (``model.safetensors`` + ``finetune_config.json``) and
``trainer_state.pt``: optimizer and scheduler states, the random generators' states, the position in the
data (epoch, batches done), the training configuration, the data size, the metrics so far. Each checkpoint
is written into a temporary folder and renamed into place in one step, so a checkpoint folder is complete
or absent; the oldest beyond ``save_total_limit`` are removed after a new one is in place.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any, Callable

import torch

from ..errors import InputError, OptionError
from ..files import CONFIG_FILE, WEIGHTS_FILE

TRAINER_STATE = 'trainer_state.pt'
CHECKPOINT_PREFIX = 'checkpoint-'
#: 1: one 'checkpoint' folder per run, resumable at epoch ends; 2: step checkpoints with the full run state
STATE_FORMAT = 2
_CHECKPOINT = re.compile(rf'^{CHECKPOINT_PREFIX}(\d+)$')


def checkpoint_dir(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, f'{CHECKPOINT_PREFIX}{step}')


def is_checkpoint(path: str) -> bool:
    """True for a complete checkpoint folder (a model and a trainer state)."""
    return all(os.path.isfile(os.path.join(path, f)) for f in (CONFIG_FILE, WEIGHTS_FILE, TRAINER_STATE))


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """The complete ``checkpoint-<step>`` folders of `output_dir`, oldest first, as ``(step, path)``."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT.match(name)
        path = os.path.join(output_dir, name)
        if match and is_checkpoint(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_checkpoint(path: str) -> str:
    """The checkpoint `path` names: the folder itself when it is one, else the latest complete
    ``checkpoint-<step>`` in it (or a format-1 ``checkpoint`` folder). Raises InputError."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f'resume_from: expected a checkpoint folder or an output_dir, got {path!r}.')
    path = os.fspath(path)
    if is_checkpoint(path):
        return path
    from ..artifacts import _complete
    if is_checkpoint(_complete(path)):  # a replacement of it was killed between its two renames
        return _complete(path)
    found = list_checkpoints(path)
    if found:
        return found[-1][1]
    legacy = os.path.join(path, 'checkpoint')
    if is_checkpoint(legacy):
        return legacy
    if not os.path.exists(path):
        raise InputError(f'resume_from={path!r} does not exist; expected a checkpoint folder written by '
                         f"fit(output_dir=...), e.g. 'out/{CHECKPOINT_PREFIX}100', or the output_dir itself for "
                         f'its latest checkpoint.')
    raise InputError(f'resume_from={path!r}: no checkpoint there (a folder with {TRAINER_STATE}, a model and its '
                     f'config, or {CHECKPOINT_PREFIX}<step> folders holding them); expected a checkpoint folder '
                     f'written by fit(output_dir=...).')


def read_trainer_state(directory: str) -> dict[str, Any]:
    """The trainer state of checkpoint `directory`; InputError naming the file when it is missing, damaged or
    not a trainer state. A format-1 state (epoch ends only) is returned with its position at that epoch."""
    path = os.path.join(directory, TRAINER_STATE)
    if not os.path.isfile(path):
        raise InputError(f'resume_from={directory!r}: no {TRAINER_STATE} there; expected a checkpoint folder '
                         f'written by fit(output_dir=...).')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception:  # noqa: BLE001 - truncated, damaged or not a torch file
        # not torch's text: it runs over lines and advises weights_only=False, which would run code from the file
        raise InputError(f'resume_from={directory!r}: {path} cannot be read (the file is damaged: cut short, or '
                         f'not written by fit()); resume from another checkpoint, or start again.') from None
    needed = ('optimizer', 'scheduler', 'epoch')
    missing = [k for k in needed if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(f'resume_from={directory!r}: {path} lacks {", ".join(missing)}; the checkpoint is '
                         f'damaged or was not written by fit().')
    if state.get('format', 1) > STATE_FORMAT:
        raise InputError(f'{path}: trainer state format {state["format"]} is newer than this version reads '
                         f'({STATE_FORMAT}); upgrade finetune.')
    state.setdefault('batches_done', 0)
    state.setdefault('config', {})
    return state


def save_checkpoint(model, directory: str, state: dict[str, Any], metrics: dict, config: dict) -> str:
    """Write `model` and the trainer `state` to `directory` atomically; returns the path."""
    from ..artifacts import save_model
    state = dict(state, format=STATE_FORMAT)
    return save_model(model, directory, metrics=metrics, extra={'training': config},
                      write_more=lambda folder: torch.save(state, os.path.join(folder, TRAINER_STATE)))


def run_id_of(path: str) -> str | None:
    """The id of the run that wrote the checkpoint or model folder `path` (None for one written before runs had
    ids, or unreadable); read from its JSON config as data."""
    import json

    try:
        with open(os.path.join(path, CONFIG_FILE), encoding='utf-8') as f:
            config = json.load(f)
        run_id = config.get('run_id', (config.get('training') or {}).get('run_id'))
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) else None


def foreign_checkpoints(output_dir: str, is_ours: Callable[[str | None], bool]) -> list[str]:
    """The complete checkpoints in `output_dir` (step folders and a format-1 ``checkpoint``) that another run
    wrote, by `is_ours(run id)`."""
    found = [path for _, path in list_checkpoints(output_dir)]
    legacy = os.path.join(output_dir, 'checkpoint')
    if is_checkpoint(legacy):
        found.append(legacy)
    return [path for path in found if not is_ours(run_id_of(path))]


def remove_old_checkpoints(output_dir: str, keep: int, is_ours: Callable[[str | None], bool] = lambda _: True
                           ) -> list[str]:
    """Delete all but the newest `keep` complete checkpoints of `output_dir` that this run wrote (by
    `is_ours(run id)`; another run's are never touched); returns the removed paths."""
    found = [(step, path) for step, path in list_checkpoints(output_dir) if is_ours(run_id_of(path))]
    removed = []
    for _, path in found[:max(0, len(found) - keep)]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def checkpoint_bytes(module: torch.nn.Module, optimizer_states: int = 2) -> int:
    """About the size of one checkpoint of `module`: its weights and `optimizer_states` copies of the trainable
    ones (Adam's two moments), plus a margin for configs and tokenizer files."""
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    return weights + optimizer_states * trainable + (16 << 20)


def check_output_dir(output_dir: str, needed_bytes: int) -> None:
    """OptionError, before any training, when `output_dir` is a file, cannot be created or written, or its disk
    has less free space than one checkpoint needs."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OptionError(f'output_dir={output_dir!r} is a file; expected a folder (it will be created).')
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix='.finetune-write-test-'):
            pass
    except OSError as exc:
        raise OptionError(f'output_dir={output_dir!r} cannot be written: {exc.strerror or exc}.') from exc
    free = shutil.disk_usage(output_dir).free
    if free < needed_bytes:
        raise OptionError(f'output_dir={output_dir!r}: {free / 2 ** 20:,.0f} MiB free on its disk, but one checkpoint '
                          f'of this model needs about {needed_bytes / 2 ** 20:,.0f} MiB. Free some space or choose '
                          f'another folder.')


def row_fingerprints(data) -> torch.Tensor:
    """One 63-bit hash per row of training `data` (its items, label or score, and extra columns, in order): what a
    resumed run compares to know it trains on the same rows, not only as many. Images given as arrays or PIL
    images are hashed by their pixels, paths and texts by their value."""
    import hashlib
    if hasattr(data, 'parts'):  # several datasets: theirs, one after another
        return torch.cat([row_fingerprints(part) for part in data.parts.values()])

    def key(item) -> bytes:
        if isinstance(item, str):
            return item.encode('utf-8', 'surrogatepass')
        if hasattr(item, 'tobytes'):  # numpy arrays, PIL images, tensors
            return repr(getattr(item, 'shape', getattr(item, 'size', ''))).encode() + item.tobytes()
        return repr(item).encode()
    labels = data.scores if getattr(data, 'scores', None) is not None else data.groups
    extra = [column for column in (data.extra or {}).values() if len(column) == len(data.a)]
    out = []
    for i in range(len(data.a)):
        digest = hashlib.blake2b(digest_size=8)
        for part in (data.a[i], data.b[i] if data.b is not None else None, labels[i] if labels is not None else None,
                     *(column[i] for column in extra)):
            digest.update(key(part) + b'\x1f')
        out.append(int.from_bytes(digest.digest(), 'little') >> 1)
    return torch.tensor(out, dtype=torch.int64)


def differing_rows(saved: torch.Tensor, now: torch.Tensor) -> list[int]:
    """The indices of the rows whose fingerprints differ (rows of two data sets of one size)."""
    return torch.nonzero(saved != now).flatten().tolist()
