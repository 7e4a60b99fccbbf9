"""Callbacks for :func:`finetune.fit`: evaluation, best checkpoint, early stopping, metric logs, progress.

A callback overrides any of the hooks below; each receives the :class:`~finetune.training.TrainState`.
``state.should_stop = True`` ends training after the current step.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import tempfile
import time
from typing import Any

from .errors import OptionError, did_you_mean


class Callback:
    """Base class: every hook does nothing."""

    def on_train_begin(self, state) -> None: ...

    def on_step_end(self, state) -> None: ...

    def on_epoch_end(self, state) -> None: ...

    def on_evaluate(self, state, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, state) -> None: ...

    def on_fit_end(self, state, run) -> None:
        """The fit is done: `run` is the :class:`~finetune.training.Run` it returns (metrics final, the model
        saved when there is an output_dir)."""

    def on_fit_failed(self, state, error: BaseException) -> None:
        """The fit raised `error` (a non-finite step, a failed save, an interrupt, ...): release what
        :meth:`on_train_begin` opened. `state` may be None when the fit failed before training began."""


def tell_failure(callbacks, state, error: BaseException, log) -> None:
    """Call ``on_fit_failed(state, error)`` of each of `callbacks`; one that fails there is logged (`log`) and does
    not hide `error`, the fit's own, which the caller raises."""
    for callback in callbacks:
        try:
            callback.on_fit_failed(state, error)
        except Exception as exc:  # noqa: BLE001 - the fit's own error is the one to raise
            log(f'{type(callback).__name__}.on_fit_failed failed too: {type(exc).__name__}: {exc}')


class EvaluationCallback(Callback):
    """Evaluate on the eval data every `every_n_steps` optimizer steps and/or at each epoch's end."""

    def __init__(self, every_n_steps: int | None = None, each_epoch: bool = True):
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps <= 0):
            raise OptionError(f'every_n_steps: expected a positive integer or None, got {every_n_steps!r}.')
        self.every_n_steps, self.each_epoch = every_n_steps, each_epoch

    def on_step_end(self, state) -> None:
        if self.every_n_steps and state.step % self.every_n_steps == 0:
            state.request_evaluation()

    def on_epoch_end(self, state) -> None:
        if self.each_epoch:
            state.request_evaluation()


def _monitored(metrics: dict[str, float], monitor: str) -> float:
    if monitor not in metrics:
        raise OptionError(f'monitor {monitor!r} is not among the evaluation metrics.{did_you_mean(monitor, metrics)} '
                          f'Metrics: {", ".join(sorted(metrics))}.')
    return float(metrics[monitor])


class BestModelCheckpoint(Callback):
    """Save the model to `directory` whenever the monitored metric improves (atomically)."""

    def __init__(self, directory: str, monitor: str = 'ndcg@10', mode: str = 'max'):
        if mode not in ('max', 'min'):
            raise OptionError(f"mode: expected 'max' or 'min', got {mode!r}.")
        self.directory, self.monitor, self.mode = directory, monitor, mode
        self.best: float | None = None

    def on_evaluate(self, state, metrics) -> None:
        value = _monitored(metrics, self.monitor)
        if self.best is None or (value > self.best if self.mode == 'max' else value < self.best):
            self.best = value
            state.save_checkpoint(self.directory, metrics)


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved by `min_delta` for `patience` evaluations."""

    def __init__(self, monitor: str = 'ndcg@10', patience: int = 2, min_delta: float = 0.0, mode: str = 'max'):
        if mode not in ('max', 'min'):
            raise OptionError(f"mode: expected 'max' or 'min', got {mode!r}.")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best: float | None = None
        self.bad_rounds = 0

    def on_evaluate(self, state, metrics) -> None:
        value = _monitored(metrics, self.monitor)
        better = self.best is None or (value > self.best + self.min_delta if self.mode == 'max'
                                       else value < self.best - self.min_delta)
        if better:
            self.best, self.bad_rounds = value, 0
            return
        self.bad_rounds += 1
        if self.bad_rounds >= self.patience:
            state.log(f'early stopping: {self.monitor} did not improve by {self.min_delta} for '
                      f'{self.patience} evaluations (best {self.best:.4f})')
            state.should_stop = True


class MetricsLogger(Callback):
    """Append one record per logged step and per evaluation to a ``.csv`` or ``.jsonl`` file (the main process
    writes, under several). A CSV's header holds every column seen (the step columns, then each metric as
    evaluations bring it)."""

    def __init__(self, path: str):
        if not path.endswith(('.csv', '.jsonl', '.json')):
            raise OptionError(f'MetricsLogger path: expected a file ending in .csv, .jsonl or .json, got {path!r}.')
        self.path = path
        self._fields: list[str] | None = None
        try:  # a path that cannot be written fails here, before any training
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, 'a'):
                pass
        except OSError as exc:
            raise OptionError(f'MetricsLogger path {path!r} cannot be written: {exc.strerror or exc}.') from exc

    def _write(self, record: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        if self.path.endswith('.csv'):
            self._write_csv(record)
        else:
            with open(self.path, 'a') as f:
                f.write(json.dumps(record) + '\n')

    def _write_csv(self, record: dict[str, Any]) -> None:
        """One row; a record with columns the header lacks (an evaluation's metrics after the step rows) rewrites
        the file once with those columns added, earlier rows left empty in them."""
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            self._fields = []  # no file, or an empty one (gone since, a second fit): the header is written again
        elif self._fields is None:  # a file written before (another run appending): its header goes on
            with open(self.path, newline='') as f:
                self._fields = next(csv.reader(f), [])
        added = [k for k in record if k not in self._fields]
        if added:
            rows = []
            if self._fields:
                with open(self.path, newline='') as f:
                    rows = list(csv.DictReader(f))
            self._fields = [*self._fields, *added]
            handle, temporary = tempfile.mkstemp(prefix='.metrics-', suffix='.csv',
                                                 dir=os.path.dirname(os.path.abspath(self.path)))
            with os.fdopen(handle, 'w', newline='') as f:
                writer = csv.DictWriter(f, fieldnames=self._fields)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(temporary, self.path)
        with open(self.path, 'a', newline='') as f:
            csv.DictWriter(f, fieldnames=self._fields).writerow({k: record.get(k, '') for k in self._fields})

    def on_step_end(self, state) -> None:
        if not state.is_main_process:  # under several processes the main one writes (one file, no twin rows)
            return
        self._write({'event': 'step', 'epoch': state.epoch, 'step': state.step, 'loss': state.last_loss,
                     'learning_rate': state.learning_rate, 'samples_per_second': state.samples_per_second})

    def on_evaluate(self, state, metrics) -> None:
        if not state.is_main_process:
            return
        self._write({'event': 'evaluate', 'epoch': state.epoch, 'step': state.step, 'loss': state.last_loss,
                     **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})


class ProgressBar(Callback):
    """A rich progress bar (epoch, step, loss, samples/s, ETA); silent when stderr is not a terminal."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress = None
        self._task = None
        self._loss_read = float('-inf')

    def on_train_begin(self, state) -> None:
        if not self.enabled or not state.is_main_process:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self._progress = Progress(TextColumn('[bold]epoch {task.fields[epoch]}'), BarColumn(),
                                  MofNCompleteColumn(), TextColumn('loss {task.fields[loss]}'),
                                  TextColumn('{task.fields[speed]} samples/s'), TimeElapsedColumn(),
                                  TimeRemainingColumn(), transient=False)
        self._progress.start()
        self._task = self._progress.add_task('fit', total=state.total_steps, epoch=1, loss='-', speed='-')

    #: seconds between two reads of the loss (on an accelerator each read waits for the step to finish)
    LOSS_EVERY = 0.5

    def on_step_end(self, state) -> None:
        if self._progress is None:
            return
        fields = dict(epoch=f'{state.epoch + 1}/{state.epochs}', speed=f'{state.samples_per_second:.1f}')
        now = time.monotonic()
        if now - self._loss_read >= self.LOSS_EVERY or state.step == state.total_steps:
            self._loss_read = now
            loss = state.last_loss
            fields['loss'] = f'{loss:.4f}' if loss is not None and math.isfinite(loss) else '-'
        self._progress.update(self._task, completed=state.step, **fields)

    def on_train_end(self, state) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def check_callbacks(callbacks: Any) -> list[Callback]:
    """`callbacks` as a list; OptionError for anything but a list of :class:`Callback`."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise OptionError(f'callbacks: expected a list of finetune.callbacks.Callback, got '
                          f'{type(callbacks).__name__}.')
    bad = [type(c).__name__ for c in callbacks if not isinstance(c, Callback)]
    if bad:
        raise OptionError(f'callbacks: {", ".join(bad)} is not a finetune.callbacks.Callback; subclass it and '
                          f'override the hooks you need.')
    return list(callbacks)
