"""Saving and loading fine-tuned models: safetensors weights + a JSON config, written atomically.

An artifact directory holds ``model.safetensors`` (never pickle), ``finetune_config.json`` (the
registry name, the model options, library versions, metrics) and, for families whose architecture
lives in files (Hugging Face models), those files under ``backbone/`` so nothing is fetched again.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import time
import uuid
from typing import Any, Callable, Iterator

from .adapters import has_lora, is_base_key
from .errors import ArtifactError, FinetuneError, OptionError, WeightsLoadError
from .files import CONFIG_FILE, WEIGHTS_FILE  # noqa: F401 - re-exported: the files of an artifact

FORMAT_VERSION = 1


def _versions(model=None) -> dict[str, str]:
    """The installed versions of finetune, torch and the packages the model's family declares it needs."""
    declared = [p for backbone in (_backbones(model).values() if model is not None else ())
                for p in getattr(backbone, 'packages', ())]
    out = {}
    for package in dict.fromkeys(('finetune', 'torch', *declared)):
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

    `write_more(folder)` may add files (a checkpoint's optimizer state) before the folder is renamed. Every file
    reaches the disk (fsync) before the rename. A crash mid-way leaves any earlier artifact at `directory`
    untouched; a kill between the two renames that replace an earlier artifact leaves it as
    ``<directory>.old``, which :func:`load` falls back to. Temporary folders left by killed writes are removed
    by the next save beside them. Raises ArtifactError for an existing `directory` that is not an artifact (it
    is never replaced: nothing of the user's is deleted) and for a model whose name a saved model could not
    rebuild from (see :func:`load`), OSError when the disk refuses.
    """
    check_replaceable(directory)
    with folder_written_atomically(directory) as tmp:
        _write_model(model, tmp, metrics, extra)
        if write_more is not None:
            write_more(tmp)
    return os.path.abspath(directory)


def is_artifact(folder: str) -> bool:
    """Whether `folder` holds a model finetune saved (its config read as data, never run)."""
    try:
        with open(os.path.join(folder, CONFIG_FILE), encoding='utf-8') as f:
            config = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and ('name' in config or 'export' in config)


def check_replaceable(directory: str, what: str = 'directory') -> None:
    """ArtifactError unless saving a model to `directory` loses nothing of the user's: it must not exist, be
    empty, or hold an earlier artifact (and the same for ``<directory>.old``, the copy a replacement keeps
    between its two renames). `what` names the argument in the message."""
    directory = os.fspath(directory)
    for path in (directory, directory.rstrip(os.sep) + '.old'):
        if not os.path.lexists(path):
            continue
        if not os.path.isdir(path):
            raise ArtifactError(f'{what}: {path!r} is a file; expected a folder for the model (a new one, or an '
                                f'earlier saved model to replace).')
        if os.listdir(path) and not is_artifact(path):
            raise ArtifactError(f'{what}: {path!r} exists and is not a saved finetune model (no {CONFIG_FILE} in '
                                f'it); saving there would replace everything in it. Choose a new folder, or remove '
                                f'that one yourself.')


@contextlib.contextmanager
def folder_written_atomically(directory: str) -> Iterator[str]:
    """A temporary folder beside `directory` to write into; when the block ends without an exception its files
    are synced to the disk and it replaces `directory` (kept as ``<directory>.old`` between the two renames),
    else it is removed: `directory` is then complete or as it was. The temporary folder is locked while it is
    written (``<temporary>.lock``); temporaries of killed writes beside it (unlocked, older than a minute) are
    removed first."""
    from .files import FileLock, sync_folder, sync_tree
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_temporaries(parent)
    tmp = os.path.join(parent, f'{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}')
    lock = FileLock(tmp + LOCK_SUFFIX, f'the temporary folder {tmp!r}').acquire()
    try:
        os.mkdir(tmp)
        yield tmp
        sync_tree(tmp)
        old = directory + '.old'
        if os.path.exists(directory):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        sync_folder(parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        lock.release()


def _write_model(model, folder: str, metrics: dict | None, extra: dict | None) -> str:
    """The weights, the config, the model card and the family's own files of `model` into `folder`; returns the
    saved name. A model with LoRA adapters whose base rebuilds offline from its registry name is saved adapter-only
    (its adapters, pooler and heads; see :func:`adapter_base`)."""
    base = adapter_base(model)
    name = base if base is not None else write_backbone_files(model, folder)
    from safetensors.torch import save_file
    # adapter-only: the base's frozen weights come from its name; its buffers (BatchNorm statistics, which training
    # may have moved) are kept
    parameters = {k for k, _ in model.named_parameters()} if base is not None else set()
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if not (k in parameters and is_base_key(k))}
    seen: dict[int, str] = {}  # tensors that share memory (tied weights) must be saved once each
    for key in list(state):
        ptr = state[key].data_ptr()
        if ptr in seen and state[key].numel():
            state[key] = state[key].clone()
        seen[ptr] = key
    save_file(state, os.path.join(folder, WEIGHTS_FILE))
    config = artifact_config(model, name, metrics, extra)
    if getattr(model, 'trained_dims', None):  # Matryoshka: the sizes it was trained at
        config['matryoshka_dims'] = [int(d) for d in model.trained_dims]
    if base is not None:  # the base's own weights come from its registry name, as when it was trained
        config['model_options']['pretrained'] = model.options['pretrained']
        config['adapter'] = {'saved': ADAPTER_ONLY, 'base': base}
    write_config(folder, config)
    from .card import CARD_FILE, model_card
    with open(os.path.join(folder, CARD_FILE), 'w', encoding='utf-8') as f:
        f.write(model_card(config))
    return name


#: ``finetune_config.json``'s ``adapter.saved`` of an artifact that holds the adapters and not the base's weights
ADAPTER_ONLY = 'adapter-only'


def adapter_base(model) -> str | None:
    """The registry name `model`'s base rebuilds from offline when `model` has LoRA adapters and was built with
    its family's pretrained weights from a plain registry name (an adapter-only save needs nothing else); None
    otherwise (then the whole model is saved, and the log says why)."""
    if not has_lora(model):
        return None
    from .registry import REGISTRY
    name = model.name
    if ':' not in name and not _looks_like_path(name) and REGISTRY.is_named(name) and \
            model.options.get('pretrained') is True:
        return name
    logging.getLogger('finetune').info(
        '%r has LoRA adapters but its base is not a registry name with its pretrained weights (it cannot be '
        'rebuilt offline from a name): the whole model is saved, not the adapters alone.', name)
    return None


def write_backbone_files(model, folder: str) -> str:
    """The family's own files of `model` (architecture, vocabulary: what rebuilds it offline) into
    ``folder/backbone``; returns the name the saved model rebuilds from. Raises ArtifactError for a model whose
    name a saved model could not rebuild from."""
    name = model.name
    for backbone in _backbones(model).values():
        export = getattr(backbone, 'export', None)
        if export is not None:
            rebuilt = export(os.path.join(folder, 'backbone'))
            if rebuilt:
                name = rebuilt
    problem = _unsavable(name)
    if problem is not None:
        raise ArtifactError(f'cannot save {model.name!r}: {problem}; a saved model must rebuild from a '
                            f'registry name or from files inside its own folder.')
    return name


def _family(name: str) -> str:
    from .registry import REGISTRY
    try:
        return REGISTRY.get(name).plugin
    except Exception:  # noqa: BLE001 - a card without the family is better than no save
        return ''


def artifact_config(model, name: str, metrics: dict | None, extra: dict | None) -> dict[str, Any]:
    """The ``finetune_config.json`` of `model` saved under `name`."""
    from .compact import RANGES_ATTRIBUTE, ranges_config
    options = dict(model.options)
    options['pretrained'] = False  # the weights come from the artifact
    config = {'format': FORMAT_VERSION, 'name': name, 'original_name': model.name, 'family': _family(model.name),
              'modality': model.modality, 'model_options': _jsonable(options), 'output_dim': model.output_dim,
              'versions': _versions(model), 'metrics': _jsonable(metrics or {}), **(extra or {})}
    ranges = ranges_config(model)  # int8 / uint8 calibration ranges kept on the model (finetune.compact)
    if ranges:
        config[RANGES_ATTRIBUTE] = ranges
    return config


def write_config(folder: str, config: dict[str, Any]) -> None:
    with open(os.path.join(folder, CONFIG_FILE), 'w') as f:
        json.dump(config, f, indent=2)


TEMP_PREFIX = '.finetune-'
LOCK_SUFFIX = '.lock'
_TEMP = re.compile(rf'^{re.escape(TEMP_PREFIX)}\d+-[0-9a-z_]+(?:{re.escape(LOCK_SUFFIX)})?$')
#: a temporary this much younger is never judged (its writer may be taking its lock this instant)
STALE_AFTER_SECONDS = 60.0
#: a temporary without a lock file (written by an older version) is stale after this long
UNLOCKED_STALE_AFTER_SECONDS = 3600.0


def _remove_stale_temporaries(parent: str) -> None:
    """Remove the temporary folders (and their lock files) in `parent` that killed writes left: a temporary is
    stale when nobody holds its lock and it is older than a minute; one without a lock file when it is older
    than an hour. The process id in the name decides nothing (it may have been reused)."""
    from .files import is_locked
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    now = time.time()
    judged = set()
    for entry in entries:
        if not _TEMP.match(entry):
            continue
        path = os.path.join(parent, entry)
        base = path[:-len(LOCK_SUFFIX)] if entry.endswith(LOCK_SUFFIX) else path
        if base in judged:  # a folder and its lock file: judged once
            continue
        judged.add(base)
        lock_path = base + LOCK_SUFFIX
        try:
            age = now - os.path.getmtime(lock_path if os.path.exists(lock_path) else path)
        except OSError:
            continue
        if os.path.exists(lock_path):
            stale = age > STALE_AFTER_SECONDS and not is_locked(lock_path)
        else:
            stale = age > UNLOCKED_STALE_AFTER_SECONDS
        if stale:
            shutil.rmtree(base, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.unlink(lock_path)


def _looks_like_path(segment: str) -> bool:
    """True for a name segment that names a file or folder (or a hub id such as 'org/model')."""
    return ('/' in segment or '\\' in segment or segment.startswith(('.', '~')) or os.path.isabs(segment))


def _unsavable(name: str) -> str | None:
    """Why an artifact saved under `name` could not be loaded again (see :func:`_resolve_name`), or None."""
    from .registry import REGISTRY
    problem = _name_problem(name)
    if problem is not None:
        return problem
    prefix, sep, rest = name.partition(':')
    if not sep:
        return None if REGISTRY.is_named(name) else f'{name!r} is not a registered model name'
    plugin = REGISTRY.plugin_for_prefix(prefix)
    if rest.startswith('./') or (plugin is not None and plugin.artifact_safe is not None
                                 and plugin.artifact_safe(prefix, rest)):
        return None
    return f'{name!r} names files or a hub id outside the artifact, and its family writes none into it'


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

    Accepted: a name a plugin lists (``resnet50``), a prefixed name its plugin vouches names no file, folder
    or hub id (``timm:resnet18``), or a prefixed name whose paths are ``./`` paths that stay inside
    `directory` (``hf:./backbone``). Anything else could lead the loader to files elsewhere (another model's
    code, a hub cache) and is refused. Raises ArtifactError naming `config_path` and the field."""
    from .registry import REGISTRY
    where = f"{config_path}, field 'name'"
    if not isinstance(name, str) or not name.strip():
        raise ArtifactError(f'{where}: expected the registry name of the saved model (e.g. \'resnet50\'), got '
                            f'{name!r}.')
    refuse = (f'{where}: {name!r} is neither a registered model name nor a path inside the artifact folder; an '
              f'artifact rebuilds only from those, so it is refused.')
    problem = _name_problem(name)
    if problem is not None:
        raise ArtifactError(f'{where}: {problem}. An artifact rebuilds only from a registry name or from files '
                            f'inside its own folder (a \'./\' path); refusing to load it.')
    prefix, sep, rest = name.partition(':')
    if not sep:
        if not REGISTRY.is_named(name):
            raise ArtifactError(refuse)
        return name
    plugin = REGISTRY.plugin_for_prefix(prefix)
    if plugin is None:
        raise ArtifactError(f'{where}: no installed plugin reads {prefix + ":"!r} names ({name!r}); install the '
                            f'plugin the model was saved with.')
    if not rest.startswith('./'):
        if plugin.artifact_safe is None or not plugin.artifact_safe(prefix, rest):
            raise ArtifactError(refuse)
        return name
    root = os.path.realpath(directory)
    segments = []
    for segment in rest.split(':'):
        if segment.startswith('./'):
            target = os.path.realpath(os.path.join(root, segment[2:]))
            if target != root and not target.startswith(root + os.sep):
                raise ArtifactError(f'{where}: {segment!r} leads outside the artifact folder ({target}); '
                                    f'refusing to load it.')
            if not os.path.exists(target):
                raise ArtifactError(f'{where}: {segment!r} is missing from the artifact folder; the artifact is '
                                    f'incomplete. Save the model again.')
            segment = target
        segments.append(segment)
    return f'{prefix}:' + ':'.join(segments)


def _check_links(directory: str) -> None:
    """ArtifactError for a symbolic link in the artifact that points outside it (a config, a tokenizer file or a
    sub-folder elsewhere would be read as the artifact's own)."""
    root = os.path.realpath(directory)
    for folder, names, files in os.walk(directory):
        for entry in names + files:
            path = os.path.join(folder, entry)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if target != root and not target.startswith(root + os.sep):
                    raise ArtifactError(f'{path} is a link to {target}, outside the artifact folder; refusing to '
                                        f'load it (copy the file in instead).')


def read_config(directory: str) -> dict[str, Any]:
    """The parsed ``finetune_config.json`` of the artifact in `directory`; ArtifactError naming the file and
    the field for a folder that is not an artifact, bad JSON or a field of the wrong type."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(directory):
        raise ArtifactError(f'the folder {directory!r} does not exist; expected the folder of a saved model (what '
                            f'run.save() or fit(output_dir=...) wrote: <output_dir>/model).')
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


def _complete(directory: str) -> str:
    """`directory`, or the copy an interrupted replacement left beside it (``<directory>.old``, see
    :func:`save_model`) when `directory` itself is gone."""
    old = os.fspath(directory).rstrip(os.sep) + '.old'
    if not os.path.exists(directory) and os.path.isfile(os.path.join(old, CONFIG_FILE)):
        return old
    return directory


def load(directory: str, trust_remote_code: bool = False):
    """Rebuild the model saved in `directory`, offline, with exactly its saved weights.

    Nothing in the folder can turn on code execution: a ``trust_remote_code`` saved in its options is
    ignored, and only this call's `trust_remote_code` decides; the saved name must be a registry name or
    point inside the folder. Raises ArtifactError for a folder that is not a loadable artifact,
    WeightsLoadError for damaged weights.
    """
    from safetensors.torch import load_file

    if not isinstance(trust_remote_code, bool):
        raise ArtifactError(f'trust_remote_code: expected True or False, got {trust_remote_code!r}.')
    directory = _complete(directory)
    config = read_config(directory)
    config_path = os.path.join(directory, CONFIG_FILE)
    _check_links(directory)
    name = _resolve_name(config['name'], directory, config_path)
    if 'export' in config:  # an exported graph: it runs on its own runtime, with this model's preprocessing
        from .exporting.runtime import load_export
        return _with_dims(load_export(directory, config, rebuild(directory, config, name, trust_remote_code,
                                                                 empty=True)), config, directory)
    model = rebuild(directory, config, name, trust_remote_code)
    try:
        state = load_file(os.path.join(directory, WEIGHTS_FILE))
    except Exception as exc:  # noqa: BLE001
        raise WeightsLoadError(f'{directory!r}: could not read {WEIGHTS_FILE}: {exc}') from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if _adapter_only(config):  # the base's weights came with the rebuild
        missing = [k for k in missing if not is_base_key(k)]
    if missing or unexpected:
        raise WeightsLoadError(f'{directory!r}: the saved weights do not fit the rebuilt model '
                               f'(missing {missing[:5]}, unexpected {unexpected[:5]}).')
    model.artifact_config = config
    return _with_dims(model, config, directory).eval()


def _with_dims(model, config: dict[str, Any], directory: str = ''):
    """`model` with the Matryoshka sizes its artifact records (``model.trained_dims``), when valid, and its
    int8 / uint8 calibration ranges (:func:`finetune.compact.restore_ranges`: ArtifactError when damaged)."""
    from .compact import restore_ranges
    dims = config.get('matryoshka_dims')
    if isinstance(dims, list) and dims and all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        model.trained_dims = tuple(dims)
    return restore_ranges(model, config, os.path.join(directory, CONFIG_FILE))


def _adapter_only(config: dict[str, Any]) -> bool:
    adapter = config.get('adapter')
    return isinstance(adapter, dict) and adapter.get('saved') == ADAPTER_ONLY


def rebuild(directory: str, config: dict[str, Any], name: str, trust_remote_code: bool, empty: bool = False):
    """The model of the artifact in `directory` rebuilt from its registry `name` and saved options, without its
    weights; with `empty`, every parameter and buffer on the meta device (for its preprocessing alone). Raises
    ArtifactError for options or files that no longer rebuild it."""
    from .meta import empty_weights
    from .model import build_model, option_schema
    from .registry import REGISTRY
    config_path = os.path.join(directory, CONFIG_FILE)
    options = dict(config.get('model_options', {}))
    # an adapter-only artifact rebuilds its base with the family's pretrained weights, as it was trained
    options['pretrained'] = options.get('pretrained') is True if _adapter_only(config) else False
    options.pop('trust_remote_code', None)
    try:
        if any(o.name == 'trust_remote_code' for o in option_schema(REGISTRY.get(name))):
            options['trust_remote_code'] = trust_remote_code
        if empty:
            try:
                with empty_weights():
                    return build_model(name, options)
            except (RuntimeError, NotImplementedError):  # a builder that reads a weight back: build it for real
                pass
        return build_model(name, options)
    except OptionError as exc:
        raise ArtifactError(f"{config_path}, field 'model_options': the saved model cannot be rebuilt: {exc}") \
            from exc
    except FinetuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged artifact must not end in a library's traceback
        raise ArtifactError(f'{directory}: the saved model cannot be rebuilt ({type(exc).__name__}: {exc}); the '
                            f'artifact is damaged or incomplete.') from exc
