"""Dynamic int8 quantization of an exported graph, with a sensitivity-guided fp32 fallback.

onnxruntime's dynamic quantization stores weights as int8 (per output channel) and quantizes each activation at
run time to uint8 over the whole tensor, so one layer whose input has outliers can cost most of the accuracy.
:func:`quantize_int8` quantizes every weight MatMul / Conv; when the calibration items (the parity sample) then
embed with a smallest cosine below :data:`TARGET_MIN_COSINE` (a margin above the gate), it ranks the layers by
the damage each does alone and keeps the fewest of the most damaging ones in fp32 that reach it.

Ranking runs the graph with one layer's quantization simulated in ONNX itself (``DynamicQuantizeLinear`` and
``DequantizeLinear`` on its input, the weight rounded per channel as onnxruntime rounds it), one layer at a time,
on the :data:`WORST_ITEMS` items the quantized graph embeds worst. The number of layers kept is then
searched the same way on every calibration item, and each candidate checked with onnxruntime's real
quantization, at most :data:`MAX_TRIALS` times.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Callable

import numpy as np

from ..errors import ExportError

#: the smallest cosine similarity the fallback aims at on the calibration items (the int8 gate asks 0.99)
TARGET_MIN_COSINE = 0.997
#: how many of the worst-embedded calibration items rank the layers
WORST_ITEMS = 8
#: the operations quantized: those onnxruntime runs in integer arithmetic (not Gather: an embedding lookup
#: gains no time from int8 and loses accuracy)
OP_TYPES = ('MatMul', 'Conv')
#: how many real quantizations the fallback tries at most
MAX_TRIALS = 4


def _layers(graph, patterns: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(the weight MatMul / Conv nodes to quantize, the nodes that stay fp32): products of two activations
    (attention scores; run-time quantization of both costs accuracy and time) and `patterns`' matches stay."""
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == 'Constant'
                                                       for o in n.output}
    weighted, keep = [], []
    for n in graph.node:
        if n.op_type not in OP_TYPES:
            continue
        if any(re.search(p, n.name) for p in patterns) or not any(i in constants for i in n.input):
            keep.append(n.name)
        else:
            weighted.append(n.name)
    return weighted, keep


def _simulated(model, names: set[str]) -> bytes:
    """`model` (an ONNX ModelProto, left as it is) with the quantization of the nodes `names` simulated in fp32."""
    from onnx import helper, numpy_helper
    out = type(model)()
    out.CopyFrom(model)
    graph = out.graph
    weights = {i.name: i for i in graph.initializer}
    nodes = []
    for node in list(graph.node):
        nodes.append(node)
        if node.name not in names or len(node.input) < 2 or node.input[1] not in weights \
                or node.input[0] in weights:
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        if w.ndim < 2:
            continue
        channel = 0 if node.op_type == 'Conv' else w.ndim - 1  # per output channel, as onnxruntime rounds
        scale = np.abs(w).max(axis=tuple(a for a in range(w.ndim) if a != channel), keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        tag = f'{node.name}_simulated_int8'
        graph.initializer.append(numpy_helper.from_array((np.round(w / scale) * scale).astype(np.float32),
                                                         f'{tag}_w'))
        nodes[-1:] = [helper.make_node('DynamicQuantizeLinear', [node.input[0]], [f'{tag}_q', f'{tag}_s', f'{tag}_z']),
                      helper.make_node('DequantizeLinear', [f'{tag}_q', f'{tag}_s', f'{tag}_z'], [f'{tag}_x']), node]
        node.input[0], node.input[1] = f'{tag}_x', f'{tag}_w'
    del graph.node[:]
    graph.node.extend(nodes)  # each simulation right before the node it feeds: still in topological order
    return out.SerializeToString()


def _cosines(graph, feeds: list[dict], reference: np.ndarray) -> np.ndarray:
    """Each calibration item's cosine similarity between the embedding of `graph` (bytes or a path) and
    `reference`'s; `feeds` are the graph inputs of the items, in batches."""
    from .runtime import OUTPUT_NAME, session
    run = session(graph)
    got = np.concatenate([run.run([OUTPUT_NAME], f)[0] for f in feeds]).astype(np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-30)
    return (got * ref).sum(1) / norms


class Calibration:
    """The items int8 is calibrated on, their graph inputs (`inputs`: items -> named arrays) and the torch
    model's embeddings of them (`reference`)."""

    def __init__(self, items: list, inputs: Callable[[list], dict], reference: np.ndarray, batch_size: int = 5):
        self.items, self.inputs, self.reference, self.batch_size = list(items), inputs, np.asarray(reference), \
            batch_size

    def feeds(self, which: list[int] | None = None) -> list[dict]:
        which = list(range(len(self.items))) if which is None else which
        return [self.inputs([self.items[i] for i in which[s:s + self.batch_size]])
                for s in range(0, len(which), self.batch_size)]

    def cosines(self, graph, which: list[int] | None = None) -> np.ndarray:
        ref = self.reference if which is None else self.reference[which]
        return _cosines(graph, self.feeds(which), ref)


def _ranked(model, layers: list[str], calibration: Calibration, worst: list[int]) -> list[str]:
    """`layers`, the most damaging first: the one whose quantization alone (simulated) lowers the smallest
    cosine of the `worst` items most."""
    feeds, ref = calibration.feeds(worst), calibration.reference[worst]
    alone = {n: float(_cosines(_simulated(model, {n}), feeds, ref).min()) for n in layers}
    return sorted(layers, key=lambda n: alone[n])


def _fewest(model, order: list[str], calibration: Calibration, start: int = 0) -> int:
    """The fewest of `order`'s first layers (at least `start`) kept fp32 whose simulation reaches the target."""
    def reaches(k: int) -> bool:
        return k >= len(order) or calibration.cosines(_simulated(model, set(order[k:]))).min() >= TARGET_MIN_COSINE
    low, high = start, max(start, 1)
    while not reaches(high):
        low, high = high + 1, min(2 * high, len(order))
    while low < high:  # the least k in [low, high] that reaches it
        middle = (low + high) // 2
        low, high = (low, middle) if reaches(middle) else (middle + 1, high)
    return high


def _quantize(path: str, output: str, exclude: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            before = logging.root.manager.disable
            logging.disable(max(before, logging.WARNING))  # onnxruntime's advice on its root logger, every graph
            try:
                quantize_dynamic(path, output, weight_type=QuantType.QInt8, per_channel=True,
                                 nodes_to_exclude=exclude, op_types_to_quantize=list(OP_TYPES))
            finally:
                logging.disable(before)  # the level the caller had
    except Exception as exc:  # noqa: BLE001
        if os.path.exists(output):
            os.remove(output)
        raise ExportError(f'int8 quantization of {os.path.basename(path)} failed in onnxruntime '
                          f'({type(exc).__name__}: {exc}).') from exc


def quantize_int8(path: str, keep_fp32: tuple[str, ...] = (), calibration: Calibration | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Replace the graph at `path` with its dynamic int8 quantization: int8 weights per channel, activations
    quantized at run time, for every weight MatMul / Conv but those matching `keep_fp32` (regular expressions
    over node names, the family's). With `calibration`, the layers that cost most are kept fp32 until its
    items reach :data:`TARGET_MIN_COSINE` (or every layer is fp32). Returns what was done: the layers kept fp32
    by the fallback and the calibration's smallest cosine."""
    import onnx
    model = onnx.load(path)
    layers, keep = _layers(model.graph, keep_fp32)
    quantized, fallback, found = path + '.int8', [], None
    _quantize(path, quantized, keep)
    if calibration is not None and layers:
        found = calibration.cosines(quantized)
        if found.min() < TARGET_MIN_COSINE:
            worst = [int(i) for i in np.argsort(found)[:WORST_ITEMS]]
            order, k = _ranked(model, layers, calibration, worst), 0
            for trial in range(MAX_TRIALS):  # each real trial keeps more layers fp32 than the one before
                k = _fewest(model, order, calibration, k + 1 if trial else 0)
                fallback = order[:k]
                _quantize(path, quantized, keep + fallback)
                found = calibration.cosines(quantized)
                log(f'int8 fallback: {k} of {len(layers)} layers kept fp32, calibration min cosine '
                    f'{found.min():.6f}')
                if found.min() >= TARGET_MIN_COSINE or k >= len(order):
                    break
    os.replace(quantized, path)
    return {'quantized_layers': len(layers) - len(fallback), 'fp32_layers': fallback,
            'calibration_min_cosine': None if found is None else float(found.min())}
