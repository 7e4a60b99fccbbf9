"""What a run report holds, gathered while a fit runs and when it finishes: the curves of every step, the metrics,
the retrieval examples and the embedding map, the settings, the data, the device and the time. The result is plain
JSON (``report.json``, saved with the model): :func:`~finetune.reporting.build_report` draws the page from it
alone, so a saved run rebuilds its report without its data files or its model."""
from __future__ import annotations

import math
import os
import platform
import time
from typing import Any

from ..callbacks import Callback

#: the report's data file, in a run's output_dir and in its saved model
REPORT_DATA = 'report.json'
#: the report page fit writes in its output_dir
REPORT_PAGE = 'report.html'
FORMAT = 1


class CurveRecorder(Callback):
    """Notes each optimizer step's learning rate and throughput (the losses come from the run's history, read
    back in batches on an accelerator; nothing here waits for the device)."""

    def __init__(self):
        self.steps: list[int] = []
        self.learning_rate: list[float] = []
        self.samples_per_second: list[float] = []
        self.started = time.time()

    def on_step_end(self, state) -> None:
        self.steps.append(int(state.step))
        self.learning_rate.append(float(state.learning_rate))
        self.samples_per_second.append(float(state.samples_per_second))


def start(trainer) -> None:
    """Before the base model is evaluated: record the eval data's embeddings and each step's figures; give the
    trackers the run's settings."""
    trainer.curve_recorder = CurveRecorder()
    trainer.callbacks.append(trainer.curve_recorder)
    from .trackers import Trackers
    for callback in trainer.callbacks:  # the trackers' hyper-parameters: the settings as resolved (loss, ...)
        if isinstance(callback, Trackers) and callback.config is None:
            callback.config = trainer.run_config
    if trainer.accelerator.is_main_process:
        for evaluation in _eval_parts(trainer).values():
            evaluation.recordings = []


def _eval_parts(trainer) -> dict[str | None, Any]:
    """The Evaluation of the eval data as ``{None: evaluation}``, or of each eval dataset by name (several datasets:
    each has its own examples); empty without eval data."""
    if trainer.eval_data is None:
        return {}
    evaluation = next((e for e in trainer.evaluations if e.data is trainer.eval_data), None)
    if evaluation is None:
        return {}
    parts = getattr(evaluation, 'parts', None)
    return dict(parts) if parts is not None else {None: evaluation}


def _part_metrics(metrics: dict | None, name: str | None) -> dict | None:
    """The metrics of eval dataset `name` out of a run's (``'<name>/<metric>'``), or `metrics` for None."""
    if metrics is None or name is None:
        return metrics
    prefix = f'{name}/'
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


def jsonable(value: Any) -> Any:
    """`value` with dict keys as strings, tuples as lists, numpy numbers as Python numbers and non-finite floats as
    None; anything else as its ``str``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) or hasattr(value, 'item') and getattr(value, 'ndim', 1) == 0:
        number = float(value)
        return number if math.isfinite(number) else None
    return str(value)


def _recording(evaluation, metrics: dict | None):
    """The recording of `evaluation` whose metrics are `metrics` (the same dict, or equal figures)."""
    if evaluation is None or not evaluation.recordings or metrics is None:
        return None
    for record in evaluation.recordings:
        if record['metrics'] is metrics:
            return record
    return next((r for r in reversed(evaluation.recordings) if r['metrics'] == metrics), None)


def retrieval(trainer) -> dict[str, Any] | None:
    """Retrieval examples and the embedding map, from the embeddings of the evaluations before and after (the
    model handed back is encoded once more only when its evaluation is no longer kept). None without a base
    evaluation (a resumed run) or for data that is not ranked. Several eval datasets: ``{'datasets': {name: that
    dataset's examples and map, or None}}``."""
    parts = _eval_parts(trainer)
    found = {name: _retrieval_of(trainer, evaluation, _part_metrics(trainer.metrics.get('before'), name),
                                 _part_metrics(trainer.metrics.get('after'), name))
             for name, evaluation in parts.items()}
    if list(found) == [None]:
        return found[None]
    return {'datasets': found} if any(found.values()) else None


def _retrieval_of(trainer, evaluation, before_metrics: dict | None, after_metrics: dict | None):
    from .items import ItemShower
    from .neighbours import embedding_map, examples, retrieval_view
    before = _recording(evaluation, before_metrics)
    if before is None:
        evaluation.recordings = None
        return None
    after = _recording(evaluation, after_metrics)
    if after is None:
        was_training = trainer.unwrapped.training
        trainer.unwrapped.eval()
        try:
            evaluation.run(ks=trainer.config.ks)
        finally:
            trainer.unwrapped.train(was_training)
        after = evaluation.recordings[-1]
    evaluation.recordings = None  # the embeddings are no longer needed
    data = evaluation.data
    view = retrieval_view(data, before['encoded'], after['encoded'])
    if view is None:
        return None
    found = examples(view)
    modalities = list(data.modalities)
    show_query = ItemShower(view.queries, modalities[0])
    show_doc = show_query if view.same_items else ItemShower(view.docs, modalities[-1])
    for group in ('improved', 'worse'):
        for entry in found[group]:
            entry['query_item'] = show_query(entry['query'])
            entry['relevant'] = len(view.relevant[entry['query']])
            for side in ('before', 'after'):
                for neighbour in entry[side]:
                    neighbour['item'] = show_doc(neighbour['doc'])
    return {'examples': found, 'map': embedding_map(view), 'modalities': modalities}


def _curves(trainer, run) -> dict[str, Any]:
    recorder = getattr(trainer, 'curve_recorder', None)
    losses = [(e['step'], e['loss']) for e in run.history if 'loss' in e and e.get('loss') is not None]
    evaluations = [{'step': e['step'], 'epoch': e['epoch'], 'metrics': e['eval']} for e in run.history
                   if 'eval' in e]
    norms = [(e['step'], e['grad_norm']) for e in run.history  # fp16 overflow steps (skipped) are left out
             if e.get('grad_norm') is not None and math.isfinite(e['grad_norm'])]
    out = {'loss_steps': [s for s, _ in losses], 'loss': [v for _, v in losses], 'evaluations': evaluations,
           'grad_norm_steps': [s for s, _ in norms], 'grad_norm': [v for _, v in norms]}
    if recorder is not None:
        out.update(steps=recorder.steps, learning_rate=recorder.learning_rate,
                   samples_per_second=recorder.samples_per_second)
    return out


def _device(trainer) -> str:
    device = trainer.accelerator.device
    if device.type == 'cuda':
        import torch
        return f'{device} ({torch.cuda.get_device_name(device)})'
    return f'{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)'


def report_data(trainer, run) -> dict[str, Any]:
    """Everything the report of a finished fit shows, as JSON-able data."""
    recorder = getattr(trainer, 'curve_recorder', None)
    model = run.model
    data = {
        'format': FORMAT, 'title': f'{getattr(model, "name", "model")} fine-tuned',
        'model': getattr(model, 'name', None), 'modality': str(getattr(model, 'modality', '')),
        'finished': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
        'seconds': round(time.time() - recorder.started, 1) if recorder is not None else None,
        'device': _device(trainer), 'precision': getattr(trainer, 'precision', None),
        'output_dir': os.path.abspath(trainer.config.output_dir) if trainer.config.output_dir else None,
        'data': {'train': run.data_description,
                 'eval': trainer.eval_data.describe() if trainer.eval_data is not None else None,
                 'guard': trainer.guard_data.describe() if getattr(trainer, 'guard_data', None) is not None
                 else None},
        'config': run.config, 'metrics': run.metrics, 'curves': _curves(trainer, run),
        'summary_metrics': list(trainer.eval_data.data_kind.summary_metrics) if trainer.eval_data is not None
        else [],
    }
    if data['output_dir']:
        data['model_dir'] = os.path.join(data['output_dir'], 'model')
    data['retrieval'] = retrieval(trainer) if trainer.eval_data is not None else None
    return jsonable(data)
