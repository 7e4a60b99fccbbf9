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

from .errors import ArtifactError, FinetuneError, OptionError, WeightsLoadError

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
        problem = _name_problem(name)
        if problem is not None:
            raise ArtifactError(f'cannot save {model.name!r}: {problem}; a saved model must rebuild from a '
                                f'registry name or from files inside its own folder.')
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


def _looks_like_path(segment: str) -> bool:
    """True for a name segment that names a file or folder (or a hub id such as 'org/model')."""
    return ('/' in segment or '\\' in segment or segment.startswith(('.', '~')) or os.path.isabs(segment))


def _name_problem(name: str) -> str | None:
    """Why `name` could not be written into an artifact safely, or None: every path in it must be
    ``./relative`` to the artifact folder."""
    prefix, sep, rest = name.partition(':')
    if not sep:
        return None if not _looks_like_path(name) else f'{name!r} is a path, not a registry name'
    for segment in rest.split(':'):
        if _looks_like_path(segment) and not segment.startswith('./'):
            return f'{segment!r} in {name!r} is a path or hub id outside the artifact folder'
    return None


def _resolve_name(name: Any, directory: str, config_path: str) -> str:
    """The registry name an artifact rebuilds from, with its ``./`` paths made absolute.

    Only a registry name, or a prefixed name whose paths stay inside `directory`, is accepted: an artifact
    must never lead the loader to files elsewhere (another model's code, a hub cache). Raises ArtifactError.
    """
    from .registry import REGISTRY
    where = f"{config_path}, field 'name'"
    if not isinstance(name, str) or not name.strip():
        raise ArtifactError(f'{where}: expected the registry name of the saved model (e.g. \'resnet50\'), got '
                            f'{name!r}.')
    problem = _name_problem(name)
    if problem is not None:
        raise ArtifactError(f'{where}: {problem}. An artifact rebuilds only from a registry name or from files '
                            f'inside its own folder (a \'./\' path); refusing to load it.')
    root = os.path.realpath(directory)
    prefix, sep, rest = name.partition(':')
    segments = []
    for segment in (rest.split(':') if sep else []):
        if segment.startswith('./'):
            target = os.path.realpath(os.path.join(root, segment[2:]))
            if target != root and not target.startswith(root + os.sep):
                raise ArtifactError(f'{where}: {segment!r} leads outside the artifact folder ({target}); '
                                    f'refusing to load it.')
            segment = target
        segments.append(segment)
    resolved = f'{prefix}:' + ':'.join(segments) if sep else name
    try:
        REGISTRY.get(resolved)
    except FinetuneError as exc:
        raise ArtifactError(f'{where}: {name!r} is not a model this installation can build ({exc})') from exc
    return resolved


def read_config(directory: str) -> dict[str, Any]:
    """The parsed ``finetune_config.json`` of the artifact in `directory`; ArtifactError naming the file and
    the field for a folder that is not an artifact, bad JSON or a field of the wrong type."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ArtifactError(f'{directory!r} is not a finetune artifact: {CONFIG_FILE} is missing '
                            f'(expected a folder written by run.save() or finetune.save_model()).')
    try:
        with open(path, encoding='utf-8') as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f'{path}: not valid JSON ({exc}); the artifact is damaged. Save the model again, '
                            f'or restore the file.') from exc
    except OSError as exc:
        raise ArtifactError(f'{path}: cannot be read ({exc}).') from exc
    if not isinstance(config, dict):
        raise ArtifactError(f'{path}: expected a JSON object, got {type(config).__name__}.')
    fmt = config.get('format', FORMAT_VERSION)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > FORMAT_VERSION:
        raise ArtifactError(f"{path}, field 'format': {fmt!r} is not a format this version reads (up to "
                            f'{FORMAT_VERSION}); upgrade finetune.')
    if 'name' not in config:
        raise ArtifactError(f"{path}: field 'name' is missing (the registry name of the saved model).")
    if not isinstance(config.get('model_options', {}), dict):
        raise ArtifactError(f"{path}, field 'model_options': expected a JSON object, got "
                            f"{type(config['model_options']).__name__}.")
    return config


def load(directory: str, trust_remote_code: bool = False):
    """Rebuild the model saved in `directory`, offline, with exactly its saved weights.

    Nothing in the folder can turn on code execution: a ``trust_remote_code`` saved in its options is
    ignored, and only this call's `trust_remote_code` decides; the saved name must be a registry name or
    point inside the folder. Raises ArtifactError for a folder that is not a loadable artifact,
    WeightsLoadError for damaged weights.
    """
    from safetensors.torch import load_file

    from .model import build_model, option_schema
    from .registry import REGISTRY
    if not isinstance(trust_remote_code, bool):
        raise ArtifactError(f'trust_remote_code: expected True or False, got {trust_remote_code!r}.')
    config = read_config(directory)
    config_path = os.path.join(directory, CONFIG_FILE)
    name = _resolve_name(config['name'], directory, config_path)
    options = dict(config.get('model_options', {}))
    options['pretrained'] = False
    options.pop('trust_remote_code', None)
    if any(o.name == 'trust_remote_code' for o in option_schema(REGISTRY.get(name))):
        options['trust_remote_code'] = trust_remote_code
    try:
        model = build_model(name, options)
    except OptionError as exc:
        raise ArtifactError(f"{config_path}, field 'model_options': the saved model cannot be rebuilt: {exc}") \
            from exc
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
