"""Exported graphs at work: an ONNX export folder loaded as a model with the same ``encode`` as the torch model.

The graph (``model.onnx``, or one file per tower) runs on onnxruntime; the preprocessing that cannot live in a
graph runs in Python with the very code the torch model uses: the model is rebuilt from the folder's config and
files (tokenizer, image and point settings) with every weight on the meta device, so nothing but its
``preprocess`` is ever used, and its ``export_inputs`` turns a batch into the graph's inputs. Loading runs no
code from the folder: the session gets no custom operators, and the folder's names are checked as any
artifact's are (:func:`finetune.artifacts.load`).
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ArtifactError, ExportError, InputError

#: the optional packages ONNX export and ONNX models need, and the extra that installs them
ONNX_PACKAGES = ('onnx', 'onnxruntime')
ONNX_EXTRA = 'onnx'
OUTPUT_NAME = 'embeddings'

_NUMPY_TYPES = {'tensor(float)': np.float32, 'tensor(int64)': np.int64, 'tensor(int32)': np.int32,
                'tensor(double)': np.float64, 'tensor(bool)': np.bool_, 'tensor(float16)': np.float16}


def require_onnx(what: str = 'ONNX export') -> None:
    """ExportError naming the ``onnx`` extra unless its packages import."""
    missing = []
    for package in ONNX_PACKAGES:
        try:
            importlib.import_module(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ExportError(f'{what} needs the optional package{"s" if len(missing) > 1 else ""} '
                          f'{" and ".join(missing)}, which {"are" if len(missing) > 1 else "is"} not installed: '
                          f'pip install "finetune[{ONNX_EXTRA}]" (in a checkout: pip install -e ".[{ONNX_EXTRA}]").')


def session(path: str | bytes):
    """An onnxruntime CPU session for the graph at `path` (no custom operators are ever registered), or for a
    serialized graph this process made. ArtifactError for a graph file that is damaged, or that names an external
    weights file outside its own folder."""
    require_onnx('running an ONNX model')
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if isinstance(path, (bytes, bytearray)):  # made here (the int8 simulation), not read from a folder
        return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    check_external_data(path)
    try:
        return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors (InvalidProtobuf, Fail, ...) share no base
        raise ArtifactError(f'{path}: onnxruntime cannot load this graph ({type(exc).__name__}: '
                            f'{str(exc)[:300]}); the file is damaged or not an ONNX model. Export the model '
                            f'again.') from None


def check_external_data(path: str) -> None:
    """ArtifactError when the graph at `path` keeps weights in an external file that is not inside its folder
    (an absolute location, or one climbing out with '..'): loading it must read nothing else on the machine.
    Older onnxruntime versions follow such locations."""
    import onnx
    try:
        graph = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ArtifactError(f'{path}: not a readable ONNX graph ({type(exc).__name__}: {str(exc)[:200]}); the file '
                            f'is damaged. Export the model again.') from None
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    for tensor in _tensors(graph.graph):
        for entry in tensor.external_data:
            if entry.key != 'location':
                continue
            target = os.path.realpath(os.path.join(folder, entry.value))
            if os.path.isabs(entry.value) or not target.startswith(folder + os.sep):
                raise ArtifactError(f'{path}: the graph reads the weights of {tensor.name!r} from '
                                    f'{entry.value!r}, outside its folder; refusing to load it.')


def _tensors(graph):
    """Every tensor of `graph` that may hold external data: initializers, sparse ones, attribute tensors, and
    those of subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField('t'):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField('g'):
                yield from _tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _tensors(sub)


class OnnxEmbeddingModel:
    """One exported graph with the preprocessing of the model it came from; ``encode`` as the torch model's.

    `preprocessing` is that model (an :class:`~finetune.model.EmbeddingModel`, weights on the meta device)."""

    def __init__(self, preprocessing, graph_path: str, name: str):
        self._model = preprocessing
        self.session = session(graph_path)
        self.inputs = {i.name: _NUMPY_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.graph_path = graph_path
        self.name = name
        self.modality = preprocessing.modality
        self.output_dim = preprocessing.output_dim
        #: the model's options and whether prompts apply (finetune.prompts reads them as the torch model's)
        self.options = preprocessing.options
        self.takes_prompts = getattr(preprocessing, 'takes_prompts', False)

    def preprocess(self, items: Sequence[Any]) -> Any:
        """Raw items -> the batch the torch model would take (the same code)."""
        return self._model.preprocess(items)

    def check_file(self, path: str) -> str | None:
        return self._model.check_file(path)

    def graph_inputs(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        """The graph's named inputs for raw `items`."""
        named = self._model.backbone.export_inputs(self.preprocess(items))
        missing = [n for n in self.inputs if n not in named]
        if missing:
            raise ExportError(f'{self.graph_path}: the preprocessing gives no {", ".join(missing)} input; the '
                              f'export does not fit this version of its model family. Export the model again.')
        return {n: np.ascontiguousarray(named[n].detach().cpu().numpy(), dtype=t) for n, t in self.inputs.items()}

    def _embed(self, items: list) -> torch.Tensor:
        out = self.session.run([OUTPUT_NAME], self.graph_inputs(items))[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def encode(self, items, batch_size: int = 32, convert_to: str = 'numpy', prompt: str | None = None):
        """Embed raw `items` in batches on onnxruntime; returns ``(len(items), output_dim)`` (see
        :meth:`finetune.model.EmbeddingModel.encode`, `prompt` included)."""
        from ..model import encode_in_batches
        from ..prompts import resolve_prompt
        text = resolve_prompt(self, prompt)
        if text and self.options.get('include_prompt', True) is False:
            raise InputError(f'{self.name!r}: the graph pools the prompt\'s tokens with the others, but the model '
                             f'leaves them out (include_prompt=False); encode with the torch model.')
        embed = self._embed if not text else \
            (lambda chunk: self._embed([text + item if isinstance(item, str) else item for item in chunk]))
        return encode_in_batches(items, self.modality, self.output_dim, batch_size, convert_to, embed)

    def __repr__(self) -> str:
        return f'OnnxEmbeddingModel(name={self.name!r}, graph={os.path.basename(self.graph_path)!r}, ' \
               f'output_dim={self.output_dim})'


class OnnxMultiTowerModel:
    """One exported graph per tower (CLIP); ``encode`` picks the tower from the items, or takes ``tower=``."""

    def __init__(self, towers: dict[str, OnnxEmbeddingModel], name: str):
        self.towers = towers
        self.name = name
        self.output_dim = next(iter(towers.values())).output_dim

    @property
    def modality(self) -> str:
        return '+'.join(m.modality for m in self.towers.values())

    def encode(self, items, batch_size: int = 32, convert_to: str = 'numpy', tower: str | None = None,
               prompt: str | None = None):
        from ..model import encode_with_towers
        return encode_with_towers(self.towers, self.name, items, batch_size, convert_to, tower, prompt)


def _graph_file(directory: str, name: Any, config_path: str) -> str:
    if not isinstance(name, str) or not name.endswith('.onnx') or os.path.basename(name) != name \
            or name.startswith('.'):
        raise ArtifactError(f"{config_path}, field 'export.graphs': {name!r} is not the name of a .onnx file in "
                            f'the folder; refusing to load it.')
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise ArtifactError(f'{path} is missing: the export is incomplete. Export the model again.')
    return path


def load_export(directory: str, config: dict[str, Any], preprocessing):
    """The ONNX model (or towers) in `directory`, whose ``finetune_config.json`` is `config`; `preprocessing`
    is its model rebuilt with empty weights. Raises ArtifactError for an unknown export format or graph names
    outside the folder, ExportError when onnxruntime is missing."""
    from ..files import CONFIG_FILE
    config_path = os.path.join(directory, CONFIG_FILE)
    export = config['export']
    if not isinstance(export, dict) or export.get('format') != 'onnx' or not isinstance(export.get('graphs'), dict):
        raise ArtifactError(f"{config_path}, field 'export': finetune.load reads ONNX exports (format 'onnx' with "
                            f"their 'graphs'), got {export!r}.")
    graphs = {tower: _graph_file(directory, file, config_path) for tower, file in export['graphs'].items()}
    name = config.get('original_name', config['name'])
    towers = getattr(preprocessing, 'towers', None)
    width = config.get('output_dim')
    if isinstance(width, int) and not isinstance(width, bool) and width > 0:  # an export at a Matryoshka size
        for tower in (towers or {'': preprocessing}).values():
            tower.output_dim = min(width, tower.output_dim)
    if towers is None:
        if list(graphs) != ['']:
            raise ArtifactError(f"{config_path}, field 'export.graphs': one graph expected for a one-tower model, "
                                f'got {sorted(graphs)}.')
        model = OnnxEmbeddingModel(preprocessing, graphs[''], name)
    else:
        if sorted(graphs) != sorted(towers):
            raise ArtifactError(f"{config_path}, field 'export.graphs': one graph per tower "
                                f'({", ".join(towers)}) expected, got {sorted(graphs)}.')
        model = OnnxMultiTowerModel({t: OnnxEmbeddingModel(towers[t], graphs[t], f'{name}[{t}]') for t in towers},
                                    name)
    model.artifact_config = config
    return model
