"""The parity gate: an export is written only if it embeds like the torch model it came from.

Both models embed the same real items: a sample of the user's evaluation data when given, otherwise the
built-in samples of each tower's modality (:attr:`finetune.modalities.Modality.samples`). The export passes when
the smallest cosine similarity between the two embeddings of an item reaches the format's threshold and, with
evaluation data, every retrieval metric is within :data:`MAX_METRIC_DIFFERENCE` of the torch model's.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import ExportError

#: the smallest cosine similarity an export may have with the torch model, per precision
MIN_COSINE = {'fp32': 0.999, 'int8': 0.99}
#: how far any retrieval metric of an export may be from the torch model's, with evaluation data
MAX_METRIC_DIFFERENCE = 0.005
#: how many items of each side of the evaluation data the cosine check embeds
SAMPLE_SIZE = 64
#: the batch size of the check: several batches of several lengths, unlike the single batch the graph was traced on
CHECK_BATCH_SIZE = 5


def towers_of(model) -> dict[str, Any]:
    """Tower name -> one-tower model; ``{'': model}`` for a one-tower model."""
    towers = getattr(model, 'towers', None)
    return dict(towers.items()) if towers is not None else {'': model}


def _distinct(items: list, limit: int) -> list:
    out, seen = [], set()
    for item in items:
        key = item if isinstance(item, (str, int, float)) else id(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
        if len(out) == limit:
            break
    return out


def samples(model, eval_data: Any = None) -> dict[str, list]:
    """Items for each tower of `model`: from `eval_data` (its sides whose modality is the tower's), else the
    tower modality's built-in samples. Raises ExportError when a tower gets none."""
    from ..modalities import get_modality
    data = None
    if eval_data is not None:
        from ..data import load_data
        data = load_data(eval_data, 'eval_data')
    out = {}
    for tower, one in towers_of(model).items():
        items: list = []
        if data is not None:
            for side, modality in zip((data.a, data.b), data.modalities):
                if modality == one.modality and side is not None:
                    items += _distinct(list(side), SAMPLE_SIZE)
        if not items:
            modality = get_modality(one.modality)
            if modality is None or modality.samples is None:
                raise ExportError(f'{one.name!r}: no built-in {one.modality} samples to check the export on; pass '
                                  f'eval_data= (a sample of your data) for the parity check.')
            items = list(modality.samples())
        out[tower] = items
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (norms == 0) & (np.abs(a).sum(1) == 0) & (np.abs(b).sum(1) == 0)
    return np.where(both_zero, 1.0, (a * b).sum(1) / np.where(norms == 0, 1.0, norms))


def compare(torch_model, encoders: dict[str, Callable[[list], np.ndarray]], items: dict[str, list]) -> dict:
    """Cosine figures of each tower's `encoders` (items -> embeddings) against `torch_model`'s towers."""
    towers = towers_of(torch_model)
    cosines = []
    for tower, encode in encoders.items():
        reference = towers[tower].encode(items[tower], batch_size=CHECK_BATCH_SIZE)
        exported = np.asarray(encode(items[tower]))
        if exported.shape != reference.shape:
            raise ExportError(f'the export of {torch_model.name!r} gives embeddings of shape {exported.shape} for '
                              f'{len(items[tower])} items, the torch model {reference.shape}.')
        cosines.append(_cosines(reference, exported))
    every = np.concatenate(cosines)
    return {'items': int(every.size), 'min_cosine': float(every.min()), 'mean_cosine': float(every.mean())}


def compare_metrics(torch_model, exported, eval_data: Any) -> dict:
    """Retrieval metrics of both models on `eval_data` and their largest difference."""
    from ..evaluation import evaluate
    ours, theirs = evaluate(torch_model, eval_data), evaluate(exported, eval_data)
    shared = [k for k in ours if isinstance(ours[k], (int, float)) and isinstance(theirs.get(k), (int, float))]
    return {'torch': ours, 'export': theirs,
            'max_difference': max((abs(float(ours[k]) - float(theirs[k])) for k in shared), default=0.0)}


def gate(figures: dict, precision: str, what: str, log: Callable[[str], None]) -> None:
    """Print `figures` and raise ExportError (nothing is written) when they miss the thresholds."""
    threshold = MIN_COSINE[precision]
    line = (f'parity of {what} ({precision}) on {figures["items"]} items: min cosine {figures["min_cosine"]:.6f}, '
            f'mean {figures["mean_cosine"]:.6f} (needs >= {threshold})')
    metrics = figures.get('metrics')
    if metrics is not None:
        line += f'; retrieval metrics differ by at most {metrics["max_difference"]:.4f} (needs <= ' \
                f'{MAX_METRIC_DIFFERENCE})'
    log(line)
    failed = figures['min_cosine'] < threshold
    if metrics is not None and metrics['max_difference'] > MAX_METRIC_DIFFERENCE:
        failed = True
    if failed:
        raise ExportError(f'the {precision} export of {what} fails the parity gate and was not written: {line}. '
                          f'Its embeddings differ from the torch model beyond the tolerance; try another format or '
                          f'precision (without quantize), or report the model.')
