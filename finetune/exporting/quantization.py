"""Dynamic int8 quantization of an exported graph: inputs smoothed, then a sensitivity-guided fp32 fallback.

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

Before all that, with calibration items, the ranges of the inputs are smoothed (SmoothQuant, Xiao et al. 2022):
the input of each weight MatMul is divided per channel by a scale and the weight's rows multiplied by it, which
leaves the fp32 graph's output as it was (up to rounding) but moves the outlier channels' range, which per-tensor
activation quantization cannot hold, into the weights, which are quantized per channel. Fewer layers then need
the fp32 fallback, and each quantized layer is more accurate.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Callable

import numpy as np

from ..errors import ExportError

#: the smallest cosine similarity the fallback aims at on the calibration items by default (the int8 gate asks
#: 0.99 of held-out items; export's `int8_min_cosine` sets another, between the gate and 1)
TARGET_MIN_COSINE = 0.997
#: how many of the worst-embedded calibration items rank the layers
WORST_ITEMS = 8
#: the operations quantized: those onnxruntime runs in integer arithmetic (not Gather: an embedding lookup
#: gains no time from int8 and loses accuracy)
OP_TYPES = ('MatMul', 'Conv')
#: how many real quantizations the fallback tries at most
MAX_TRIALS = 4
#: SmoothQuant's migration strength: the scale of input channel j is max|x_j|^a / max|w_j|^(1-a), so a = 0 moves
#: nothing and a = 1 flattens the calibration items' input range entirely (at 0.8, all-MiniLM-L6-v2 fit its
#: 64 calibration texts with no fp32 layer but embedded held-out texts worse than at 0.5: the range overfits)
SMOOTHING_ALPHA = 0.5


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


def _input_maxima(model, names: list[str], feeds: list[dict]) -> dict[str, np.ndarray]:
    """The largest magnitude of each channel (last axis) of the tensors `names` of `model` over `feeds`."""
    from onnx import helper

    from .runtime import session
    probe = type(model)()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in known)
    run, maxima = session(probe.SerializeToString()), {}
    for feed in feeds:
        for name, value in zip(names, run.run(names, feed)):
            value = np.abs(np.asarray(value, dtype=np.float64))
            top = value.reshape(-1, value.shape[-1]).max(0) if value.size else np.zeros(value.shape[-1])
            maxima[name] = np.maximum(maxima[name], top) if name in maxima else top
    return maxima


def _smoothable(model, layers: list[str]) -> dict[str, list[int]]:
    """Input tensor -> the positions of the MatMul nodes among `layers` reading it whose fp32 weight is 2-D and
    theirs alone."""
    from onnx import TensorProto
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    wanted, groups = set(layers), {}
    for position, n in enumerate(graph.node):
        w = weights.get(n.input[1]) if n.op_type == 'MatMul' and len(n.input) == 2 else None
        if n.name in wanted and w is not None and len(w.dims) == 2 and w.data_type == TensorProto.FLOAT \
                and uses[w.name] == 1 and n.input[0] not in weights:
            groups.setdefault(n.input[0], []).append(position)
    return groups


def smooth(model, layers: list[str], feeds: list[dict], alpha: float = SMOOTHING_ALPHA) -> int:
    """Smooth the inputs of the weight MatMuls `layers` of `model` (an ONNX ModelProto, changed in place) on the
    calibration `feeds`: a ``Mul`` by 1/s before each input (one for the MatMuls sharing it), each weight's rows
    times s, s as :data:`SMOOTHING_ALPHA` says from the input's per-channel maxima over `feeds`. The graph
    computes what it did (up to fp32 rounding). Returns how many layers were smoothed."""
    from onnx import helper, numpy_helper
    groups = _smoothable(model, layers)
    if not groups or not feeds:
        return 0
    maxima = _input_maxima(model, list(groups), feeds)
    weights = {i.name: i for i in model.graph.initializer}
    nodes, before, done = list(model.graph.node), {}, 0
    for k, (tensor, positions) in enumerate(groups.items()):
        readers = [nodes[p] for p in positions]
        ws = [numpy_helper.to_array(weights[n.input[1]]).astype(np.float64) for n in readers]
        w_max = np.max([np.abs(w).max(1) for w in ws], axis=0)
        x_max = maxima[tensor]
        if x_max.shape != w_max.shape:
            continue
        scale = x_max ** alpha / np.where(w_max > 0, w_max, 1.0) ** (1 - alpha)
        scale = np.where((x_max > 0) & (w_max > 0) & np.isfinite(scale) & (scale > 0), scale, 1.0)
        for n, w in zip(readers, ws):
            weights[n.input[1]].CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32),
                                                                 n.input[1]))
        name = f'{readers[0].name}_smoothing_{k}'
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), f'{name}_scale'))
        before[positions[0]] = helper.make_node('Mul', [tensor, f'{name}_scale'], [f'{name}_out'], name=name)
        for n in readers:
            n.input[0] = f'{name}_out'
        done += len(readers)
    del model.graph.node[:]  # each Mul right before its first reader: still in topological order
    model.graph.node.extend(n for p, node in enumerate(nodes) for n in ([before[p]] if p in before else []) + [node])
    return done


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


def _fewest(model, order: list[str], calibration: Calibration, start: int = 0,
            min_cosine: float = TARGET_MIN_COSINE) -> int:
    """The fewest of `order`'s first layers (at least `start`) kept fp32 whose simulation reaches `min_cosine`."""
    def reaches(k: int) -> bool:
        return k >= len(order) or calibration.cosines(_simulated(model, set(order[k:]))).min() >= min_cosine
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
                  log: Callable[[str], None] = print, smoothing: float | None = SMOOTHING_ALPHA,
                  min_cosine: float = TARGET_MIN_COSINE) -> dict:
    """Replace the graph at `path` with its dynamic int8 quantization: int8 weights per channel, activations
    quantized at run time, for every weight MatMul / Conv but those matching `keep_fp32` (regular expressions
    over node names, the family's). With `calibration`, the inputs of the weight MatMuls are first smoothed
    with strength `smoothing` (:func:`smooth`; None: not), then the layers that cost most are kept fp32 until
    its items reach `min_cosine` (default :data:`TARGET_MIN_COSINE`; or every layer is fp32). Returns what was
    done: the smoothing, the layers kept fp32 by the fallback, the target and the calibration's smallest cosine."""
    import onnx
    if smoothing is not None and (isinstance(smoothing, bool) or not isinstance(smoothing, (int, float))
                                  or not 0.0 <= smoothing <= 1.0):
        raise ExportError(f'smoothing: expected a strength between 0 and 1 (or None), got {smoothing!r}.')
    model = onnx.load(path)
    layers, keep = _layers(model.graph, keep_fp32)
    quantized, fallback, found, smoothed = path + '.int8', [], None, 0
    if calibration is not None and smoothing is not None and layers:
        smoothed = smooth(model, layers, calibration.feeds(), smoothing)
        if smoothed:
            onnx.save(model, path)  # the same fp32 function, the outlier channels' range moved into the weights
            log(f'int8 smoothing (strength {smoothing}): the inputs of {smoothed} of {len(layers)} layers')
    _quantize(path, quantized, keep)
    if calibration is not None and layers:
        found = calibration.cosines(quantized)
        if found.min() < min_cosine:
            worst = [int(i) for i in np.argsort(found)[:WORST_ITEMS]]
            order, k = _ranked(model, layers, calibration, worst), 0
            for trial in range(MAX_TRIALS):  # each real trial keeps more layers fp32 than the one before
                k = _fewest(model, order, calibration, k + 1 if trial else 0, min_cosine)
                fallback = order[:k]
                _quantize(path, quantized, keep + fallback)
                found = calibration.cosines(quantized)
                log(f'int8 fallback: {k} of {len(layers)} layers kept fp32, calibration min cosine '
                    f'{found.min():.6f}')
                if found.min() >= min_cosine or k >= len(order):
                    break
    os.replace(quantized, path)
    return {'quantized_layers': len(layers) - len(fallback), 'fp32_layers': fallback,
            'smoothing': {'strength': smoothing, 'layers': smoothed} if smoothed else None,
            'target_min_cosine': float(min_cosine),
            'calibration_min_cosine': None if found is None else float(found.min())}
