"""Writing the embedding pipeline as ONNX graphs (their int8 quantization: :mod:`finetune.exporting.quantization`).

One graph per tower holds everything after the preprocessing: backbone, pooler (GeM and the masked mean
included), projection head and L2 normalization, with a dynamic batch size (and the dynamic axes the family
declares, e.g. the sequence length of token ids). What the graph takes is the family's to say, through the
backbone's ``export_inputs`` / ``batch_from_inputs`` / ``export_dynamic_axes``; this module names no family.
"""
from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import ExportError
from .runtime import OUTPUT_NAME

OPSET = 17


class PipelineGraph(nn.Module):
    """What is traced: graph inputs -> the backbone's batch -> ``model.embed`` (no input checks, no classifier)."""

    def __init__(self, model, input_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        batch = self.model.backbone.batch_from_inputs(dict(zip(self.input_names, tensors)))
        return self.model.embed(batch)


def family_of(model) -> str:
    """The plugin that registered `model`'s name, for messages ('' when the registry cannot say)."""
    from ..registry import REGISTRY
    try:
        return REGISTRY.get(model.name).plugin
    except Exception:  # noqa: BLE001
        return ''


_OP = re.compile(r"(?:operator|op)\s+'?([\w.]+::[\w.]+)'?|'?(aten::[\w.]+)'?|(aten\.[\w.]+)")


def _unsupported(exc: Exception, model) -> ExportError:
    """An ExportError naming the operation ONNX lacks (when the exporter's message says which) and the family."""
    text = str(exc)
    match = _OP.search(text)
    op = next((g for g in match.groups() if g), None) if match else None
    family = family_of(model)
    who = f'{model.name!r}' + (f' (family {family!r})' if family else '')
    what = f'the operation {op!r}, which ONNX opset {OPSET} lacks' if op else \
        f'an operation the ONNX exporter cannot translate ({type(exc).__name__}: {text.splitlines()[0][:300]})'
    return ExportError(f'cannot export {who} to ONNX: its forward pass uses {what}. The family cannot be exported '
                       f'as it is; other formats may still work, and the torch model is unaffected.')


def write_graph(model, example_items: list, path: str) -> list[str]:
    """Trace one tower `model` (an EmbeddingModel, on the CPU, in eval mode) on `example_items` and write the ONNX
    graph to `path`; returns the graph's input names. Raises ExportError naming the operation ONNX lacks."""
    backbone = model.backbone
    inputs = backbone.export_inputs(model.preprocess(example_items))
    names = list(inputs)
    axes: dict[str, Any] = {n: dict(a) for n, a in backbone.export_dynamic_axes(inputs).items()}
    axes[OUTPUT_NAME] = {0: 'batch'}
    graph = PipelineGraph(model, names).eval()
    try:
        # traced with gradients on: under no_grad, eval-mode attention takes torch's fused fast path
        # (aten::_native_multi_head_attention), which has no ONNX translation
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(graph, tuple(inputs.values()), path, input_names=names, output_names=[OUTPUT_NAME],
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; each becomes one message
        raise _unsupported(exc, model) from exc
    return names
