"""Exporting a model for deployment: ONNX graphs (fp32 or dynamic int8), and the folder formats plugins declare.

:func:`export` writes the export beside the artifact (``<artifact>-onnx``, ``<artifact>-onnx-int8``, or the
format's suffix) or into `output`, through a temporary folder renamed into place only once the export passed
its parity gate (:mod:`finetune.exporting.parity`), so a failed export leaves nothing behind. Every export carries
a ``finetune_config.json`` with its parity figures and a model card (``README.md``).
"""
from __future__ import annotations

import numbers
import os
from typing import Any, Callable

from ..adapters import has_lora, merge_lora
from ..errors import ExportError
from . import parity
from .runtime import require_onnx

ONNX = 'onnx'
QUANTIZATIONS = ('int8',)


def formats() -> dict[str, Any]:
    """Every export format: ``'onnx'`` (the core's) and those the plugins declare, name -> ExportFormat
    (None for ONNX)."""
    from ..registry import REGISTRY
    return {ONNX: None, **REGISTRY.export_formats()}


def _check_arguments(format: Any, quantize: Any) -> Any:
    known = formats()
    if format not in known:
        from ..errors import did_you_mean
        hint = did_you_mean(format, known) if isinstance(format, str) else ''
        raise ExportError(f'format: unknown export format {format!r}.{hint} Formats: {", ".join(map(repr, known))}.')
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f'quantize: expected {" or ".join(map(repr, QUANTIZATIONS))} or None, got '
                          f'{quantize!r}.')
    if quantize is not None and format != ONNX:
        raise ExportError(f'quantize={quantize!r} applies to the {ONNX!r} format only, not {format!r}.')
    return known[format]


def _check_min_cosine(value: Any, quantize: Any) -> None:
    if value is None:
        return
    low = parity.MIN_COSINE['int8']
    if quantize != 'int8':
        raise ExportError(f"int8_min_cosine={value!r} (--int8-min-cosine) applies to quantize='int8' "
                          f"(--quantize int8) only; got quantize={quantize!r}.")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= float(value) <= 1.0:
        raise ExportError(f'int8_min_cosine (--int8-min-cosine): expected a number from {low} (the int8 parity '
                          f'gate) to 1.0, got {value!r}; the default is 0.997.')


def _source(model_or_path: Any, trust_remote_code: bool) -> tuple[Any, str | None]:
    """(the model, the artifact folder it came from or None)."""
    if isinstance(model_or_path, (str, os.PathLike)):
        from ..artifacts import CONFIG_FILE, load, read_config
        path = os.fspath(model_or_path)
        if 'export' in read_config(path):  # read_config names a folder that is no artifact
            raise ExportError(f'{path!r} is already an export ({os.path.join(path, CONFIG_FILE)} has an \'export\' '
                              f'field); export the saved model it came from (the folder run.save() wrote).')
        return load(path, trust_remote_code=trust_remote_code), os.path.abspath(path)
    if getattr(model_or_path, 'encode', None) is None or getattr(model_or_path, 'name', None) is None \
            or getattr(model_or_path, 'artifact_config', {}).get('export'):
        raise ExportError(f'export: expected a finetune model (EmbeddingModel, MultiTowerModel) or the folder of a '
                          f'saved one, got {type(model_or_path).__name__}.')
    return model_or_path, None


def _output(output: str | None, source: str | None, suffix: str) -> str:
    if output is not None:
        return os.path.abspath(os.fspath(output))
    if source is None:
        raise ExportError('output: a model object has no folder to write beside; pass output= (or export the '
                          'folder it was saved to).')
    return source.rstrip(os.sep) + suffix


def _check_target(folder: str, source: str | None) -> None:
    """ExportError unless `folder` may receive the export: it must not be, hold or lie inside the artifact, and an
    existing folder is replaced only when it is an earlier export (nothing else of the user's is ever removed)."""
    real = os.path.realpath(folder)
    if source is not None:
        src = os.path.realpath(source)
        if real == src or src.startswith(real + os.sep) or real.startswith(src + os.sep):
            where = 'is' if real == src else 'holds' if src.startswith(real + os.sep) else 'lies inside'
            raise ExportError(f'output: {folder!r} {where} the artifact {source!r}, which the export would replace; '
                              f'choose a folder of its own (default: beside the artifact).')
    if not os.path.exists(folder):
        return
    if not os.path.isdir(folder):
        raise ExportError(f'output: {folder!r} is a file; expected a folder for the export.')
    if os.listdir(folder) and not _is_export(folder):
        raise ExportError(f'output: {folder!r} exists and is not an earlier export (no finetune export record in '
                          f'it), and the export would replace everything in it. Choose a new folder, or remove '
                          f'that one yourself.')


def _is_export(folder: str) -> bool:
    """Whether `folder` holds an export finetune wrote (its record read as data)."""
    import json

    from ..files import CONFIG_FILE
    from .writing import RECORD_FILE
    for name in (CONFIG_FILE, RECORD_FILE):
        try:
            with open(os.path.join(folder, name), encoding='utf-8') as f:
                if isinstance(json.load(f).get('export'), dict):
                    return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def export(model_or_path: Any, format: str = ONNX, output: str | None = None, quantize: str | None = None,
           eval_data: Any = None, trust_remote_code: bool = False, log: Callable[[str], None] | None = None,
           dim: int | None = None, int8_min_cosine: float | None = None) -> str:
    """Write `model_or_path` (a model, or the folder of a saved one) in `format`; returns the export's folder.

    ``'onnx'``: the whole embedding pipeline as one ONNX graph per tower (``model.onnx``; ``text.onnx`` and
    ``image.onnx`` for two towers) with the preprocessing beside it; ``finetune.load(folder)`` runs it on
    onnxruntime with the same ``encode``. `quantize` ``'int8'``: dynamic int8 quantization of the graphs, the
    layers that cost most kept in fp32 (:mod:`finetune.exporting.quantization`) until the parity items embed with
    a cosine of at least `int8_min_cosine` to the torch model's (default 0.997; lower, down to the int8 gate's
    0.99, keeps fewer layers fp32: faster, less exact, and more often refused by the gate). LoRA adapters are merged into
    the weights they adapt first (:func:`finetune.adapters.merge_lora`). `dim` (ONNX, and formats whose
    ``takes_dim`` says so): the export outputs the leading `dim` dimensions of each embedding, re-normalized (a
    Matryoshka model's smaller size), and the parity gate compares at that size; the folder is
    ``<artifact>-onnx-<dim>`` (or the format's suffix and ``-<dim>``) by default.
    Other formats come from plugins (``'sentence-transformers'`` for text models of that family).
    The export is written to `output`, by default beside the artifact (``<artifact>-onnx``, ``-onnx-int8``, or
    the format's suffix), only if it passes the parity gate on `eval_data` (or built-in samples).
    Raises ExportError for an unknown format, a model the format does not take, a missing optional
    dependency, an operation ONNX lacks, or a failed parity gate; ArtifactError for a folder that is no
    artifact.
    """
    from ..logs import log_function
    say = log_function(log)
    fmt = _check_arguments(format, quantize)
    _check_min_cosine(int8_min_cosine, quantize)
    if fmt is None:
        require_onnx()
    model, source = _source(model_or_path, trust_remote_code)
    if has_lora(model):  # a deployed model computes the merged weights: no adapters in the graph
        model = merge_lora(model)
        say('LoRA adapters merged into the weights for the export')
    if dim is not None:
        if fmt is not None and not fmt.takes_dim:
            raise ExportError(f'dim={dim!r} applies to the {ONNX!r} format and formats that can cut embeddings; a '
                              f'{format!r} export holds the whole embedding (cut it where it is used, with its '
                              f'runtime\'s own truncation option).')
        from ..dims import at_size
        model = at_size(model, dim)
    if fmt is not None:
        problem = fmt.problem(model)
        if problem is not None:
            choices = [name for name, f in formats().items() if f is None or f.problem(model) is None]
            raise ExportError(f'format {format!r} cannot take {model.name!r}: {problem}. Formats for this model: '
                              f'{", ".join(map(repr, choices))}.')
    suffix = ('-onnx' + (f'-{dim}' if dim else '') + (f'-{quantize}' if quantize else '')) if fmt is None else \
        fmt.suffix + (f'-{dim}' if dim else '')
    folder = _output(output, source, suffix)
    _check_target(folder, source)
    items = parity.samples(model, eval_data)
    from .writing import display_name, write_export
    write_export(model, fmt, folder, quantize, items, eval_data, say, trust_remote_code, int8_min_cosine)
    say(f'exported {display_name(model)!r} as {format}{" " + quantize if quantize else ""} to {folder}')
    return folder


__all__ = ['export', 'formats', 'ONNX', 'QUANTIZATIONS']
