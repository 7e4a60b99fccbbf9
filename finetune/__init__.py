"""finetune: turn a pretrained backbone into an embedding model and fine-tune it on your data.

Public API (each call hands on to one module):

* :func:`describe_models`, :func:`list_models`, :func:`list_model_options` — what can be built;
* :func:`build_model` — an :class:`EmbeddingModel` (backbone -> pooler -> head -> L2 normalize);
* :func:`get_spec` — the registry entry of a name.
* :func:`synthesize` — training rows from unlabeled queries and a corpus (a relation miner and a cross-encoder);
* :func:`fit`, :func:`evaluate`, :func:`load`, :func:`merge` — training, metrics, saved models;
* :func:`merge_lora` — a model with LoRA adapters (``model_options={'lora': True}``) made plain.
"""
from __future__ import annotations

from .describe import describe_models, list_model_options
from .errors import (ArtifactError, ExportError, FinetuneError, InputError, OptionError, PluginError, UnknownModelError, WeightsLoadError,
                     WeightsNotFoundError)
from .model import EmbeddingModel, MultiTowerModel, build_model
from .registry import REGISTRY, BackbonePlugin, BackboneSpec, get_spec

__version__ = '0.1.0'


def fit(model, train_data, eval_data=None, **kwargs):
    """Fine-tune `model` on `train_data`; see :func:`finetune.training.fit` for every argument."""
    from .training import fit as _fit
    return _fit(model, train_data, eval_data, **kwargs)


def evaluate(model, data, batch_size: int = 64, ks=(1, 5, 10), dim: int | None = None, precision: str = 'float32',
             rescore: int | None = None, calibration=None) -> dict:
    """Retrieval metrics of `model` on `data` (with `dim`, of its embeddings cut to their leading `dim`
    dimensions; with `precision` 'int8' / 'binary' / ..., of a search on compact codes, the best ``rescore x
    max(ks)`` rescored by float queries); see :func:`finetune.evaluation.evaluate`."""
    from .evaluation import evaluate as _evaluate
    return _evaluate(model, data, batch_size=batch_size, ks=ks, dim=dim, precision=precision, rescore=rescore,
                     calibration=calibration)


def load(directory: str, trust_remote_code: bool = False):
    """Rebuild a model saved by ``run.save(directory)``, offline, with its saved weights.

    Nothing in the folder can turn on code execution; `trust_remote_code=True` (for a Hugging Face model
    that needs its own code) is the caller's decision alone. Raises ArtifactError, WeightsLoadError."""
    from .artifacts import load as _load
    return _load(directory, trust_remote_code=trust_remote_code)


def merge(base, tuned, alpha: float):
    """WiSE-FT: a copy of `tuned` whose weights are ``(1 - alpha) * base + alpha * tuned`` (weights the base
    lacks, such as a head added for fine-tuning, come from `tuned`). `base` and `tuned` are models or saved model
    folders. See :mod:`finetune.merging`."""
    from .merging import merge as _merge
    return _merge(base, tuned, alpha)


def merge_lora(model):
    """A copy of `model` with its LoRA adapters folded into the weights they adapt (a plain model that embeds the
    same); see :func:`finetune.adapters.merge_lora`."""
    from .adapters import merge_lora as _merge_lora
    return _merge_lora(model)


def export(model_or_path, format: str = 'onnx', output: str | None = None, quantize: str | None = None,
           eval_data=None, trust_remote_code: bool = False, log=None, dim: int | None = None,
           int8_min_cosine: float | None = None) -> str:
    """Export a model (or a saved model's folder) for deployment: ``'onnx'`` (fp32, or ``quantize='int8'``) or a
    format a plugin declares; written beside the artifact unless `output` says where, and only if it passes the
    parity gate. `dim`: an ONNX graph of the leading `dim` dimensions (Matryoshka). `int8_min_cosine`: the cosine
    the int8 fp32 fallback aims at (default 0.997; lower keeps fewer layers fp32). Returns the folder. See
    :func:`finetune.exporting.export`."""
    from .exporting import export as _export
    return _export(model_or_path, format=format, output=output, quantize=quantize, eval_data=eval_data,
                   trust_remote_code=trust_remote_code, log=log, dim=dim, int8_min_cosine=int8_min_cosine)


def save_model(model, directory: str) -> str:
    """Save `model` (weights as safetensors + JSON config) so that :func:`load` rebuilds it."""
    from .artifacts import save_model as _save
    return _save(model, directory)


def encode(model, items, batch_size: int = 32, convert_to: str = 'numpy', dim: int | None = None,
           precision: str = 'float32', calibration=None, prompt: str | None = None):
    """Embed `items` with `model` in batches (``model.encode``); returns ``(len(items), output_dim)``, or with
    `dim` ``(len(items), dim)``: the leading `dim` dimensions, L2-normalized again (a Matryoshka model's smaller
    sizes; another size warns once). Raises InputError for items the model cannot take or a bad `dim`.

    `precision` ``'int8'`` / ``'uint8'``: one byte per dimension, on per-dimension ranges from `calibration` (a
    sample of embeddings, or ranges), else the model's kept ranges, else this batch's (a warning); the first ranges
    are kept on the model and saved with it. ``'binary'`` / ``'ubinary'``: sign bits packed 8 dimensions to a byte,
    ``(len(items), dim / 8)``. Cut to `dim` first. See :mod:`finetune.compact`.

    `prompt` (text models): the name of one of the model's prompts (``'query'``), a text of its own
    (``'Represent this: '``) or ``''`` for none, put before each item; None: the model's ``default_prompt``, if
    any. InputError for a name the model has no prompt for (listing its prompts), or a prompt on another modality.
    See :mod:`finetune.prompts`."""
    from .compact import check_encode, encode_compact
    prompted = {} if prompt is None else {'prompt': prompt}
    precision = check_encode(model, precision, dim, calibration)
    if dim is None:
        embeddings = model.encode(items, batch_size=batch_size, convert_to=convert_to, **prompted)
    else:
        from .dims import check_dim, truncate
        dim = check_dim(model, dim)
        embeddings = truncate(model.encode(items, batch_size=batch_size, convert_to=convert_to, **prompted), dim)
    return encode_compact(model, embeddings, precision, calibration, convert_to)


def synthesize(query_data, corpus_data, models=None, num_relations: int = 3, output=None, **kwargs):
    """Training rows (query, positive, hard negative, teacher margin) from unlabeled queries and a corpus, mined by
    an embedding model and scored by a cross-encoder (`models`, default ``finetune.data.DATA_SYNTHESIS_EN``); see
    :func:`finetune.synthesis.synthesize` for every argument. ``fit`` trains on the result."""
    from .synthesis import DATA_SYNTHESIS_EN
    from .synthesis import synthesize as _synthesize
    return _synthesize(query_data, corpus_data, models if models is not None else DATA_SYNTHESIS_EN, num_relations,
                       output, **kwargs)


def list_models(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Names of the registered backbones, sorted; `pattern` is a wildcard (``'resnet*'``, ``'timm:vit_*'``).

    Cross-encoders are listed by their task, ``list_models(task='cross-encoding')``. Raises UnknownModelError
    for an unknown `task`.
    """
    if task is not None:
        from .registry import registry_for_task
        return registry_for_task(task).names(pattern, task)
    return REGISTRY.names(pattern, task)


__all__ = [
    'fit', 'synthesize', 'evaluate', 'load', 'merge', 'merge_lora', 'export', 'save_model', 'encode',
    'describe_models', 'list_models', 'list_model_options', 'build_model', 'get_spec', 'EmbeddingModel',
    'MultiTowerModel',
    'BackboneSpec', 'BackbonePlugin', 'REGISTRY', 'TASKS', 'FinetuneError', 'UnknownModelError', 'OptionError',
    'PluginError', 'InputError', 'ArtifactError', 'ExportError', 'WeightsNotFoundError', 'WeightsLoadError', '__version__',
]


def __getattr__(name: str):
    if name == 'TASKS':  # every task, plugins' included (finetune.registry.TASKS); importing loads no plugin
        return REGISTRY.tasks()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
