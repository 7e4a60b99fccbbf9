"""Saving and loading fine-tuned models: safetensors weights + a JSON config, written atomically.

An artifact directory holds ``model.safetensors`` (never pickle), ``finetune_config.json`` (the
registry name, the model options, library versions, metrics) and, for families whose architecture
lives in files (Hugging Face models), those files under ``backbone/`` so nothing is fetched again.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
from typing import Any, Callable

from .errors import FinetuneError, WeightsLoadError

CONFIG_FILE = 'finetune_config.json'
WEIGHTS_FILE = 'model.safetensors'
FORMAT_VERSION = 1


def _versions() -> dict[str, str]:
    out = {}
    for package in ('finetune', 'torch', 'torchvision', 'timm', 'transformers', 'open_clip_torch'):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _backbones(model) -> dict[str, Any]:
    towers = getattr(model, 'towers', None)
    if towers is not None:
        return {t: m.backbone for t, m in towers.items()}
    return {'': model.backbone}


def save_model(model, directory: str, metrics: dict | None = None, extra: dict | None = None,
               write_more: Callable[[str], None] | None = None) -> str:
    """Write `model` to `directory` atomically (a temporary folder renamed into place); returns the path.

    `write_more(folder)` may add files (a checkpoint's optimizer state) before the folder is renamed.
    A crash mid-way leaves any earlier artifact at `directory` untouched.
    """
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.finetune-', dir=parent)
    try:
        name = model.name
        for tower, backbone in _backbones(model).items():
            export = getattr(backbone, 'export', None)
            if export is not None:
                rebuilt = export(os.path.join(tmp, 'backbone'))
                if rebuilt:
                    name = rebuilt
        from safetensors.torch import save_file
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        # tensors that share memory (tied weights) must be saved once each
        seen: dict[int, str] = {}
        for key in list(state):
            ptr = state[key].data_ptr()
            if ptr in seen and state[key].numel():
                state[key] = state[key].clone()
            seen[ptr] = key
        save_file(state, os.path.join(tmp, WEIGHTS_FILE))
        options = dict(model.options)
        options['pretrained'] = False  # the weights come from the artifact
        config = {'format': FORMAT_VERSION, 'name': name, 'original_name': model.name,
                  'model_options': _jsonable(options), 'output_dim': model.output_dim,
                  'versions': _versions(), 'metrics': _jsonable(metrics or {}), **(extra or {})}
        with open(os.path.join(tmp, CONFIG_FILE), 'w') as f:
            json.dump(config, f, indent=2)
        if write_more is not None:
            write_more(tmp)
        if os.path.exists(directory):
            old = directory + '.old'
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _resolve_relative(name: str, directory: str) -> str:
    prefix, sep, rest = name.partition(':')
    if sep and rest.startswith('./'):
        return f'{prefix}:{os.path.join(directory, rest[2:])}'
    return name


def read_config(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FinetuneError(f'{directory!r} is not a finetune artifact: {CONFIG_FILE} is missing '
                            f'(expected a folder written by run.save() or finetune.save_model()).')
    with open(path) as f:
        return json.load(f)


def load(directory: str):
    """Rebuild the model saved in `directory`, offline, with exactly its saved weights.

    Raises FinetuneError for a folder that is not an artifact, WeightsLoadError for damaged weights.
    """
    from safetensors.torch import load_file

    from .model import build_model
    config = read_config(directory)
    options = dict(config['model_options'])
    options['pretrained'] = False
    model = build_model(_resolve_relative(config['name'], directory), options)
    try:
        state = load_file(os.path.join(directory, WEIGHTS_FILE))
    except Exception as exc:  # noqa: BLE001
        raise WeightsLoadError(f'{directory!r}: could not read {WEIGHTS_FILE}: {exc}') from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsLoadError(f'{directory!r}: the saved weights do not fit the rebuilt model '
                               f'(missing {missing[:5]}, unexpected {unexpected[:5]}).')
    model.artifact_config = config
    return model.eval()
