"""Experiment trackers for :func:`finetune.fit` (``report_to=['tensorboard', 'mlflow', 'trackio', 'wandb']``),
through Hugging Face accelerate's tracker classes, as a callback: the run's settings as hyper-parameters; each
optimizer step's learning rate and throughput, and its loss and gradient norm before clipping (taken from the run's
history once read back, so that logging never makes the host wait for the device); each evaluation's metrics; at
the end the before / after / guard / test metrics, the chosen candidate and WiSE-FT's alpha. Only the main process logs. Each tracker is an
optional extra (``pip install "finetune[tensorboard]"``, ...)."""
from __future__ import annotations

import importlib.util
import math
import os
from typing import Any, Callable

from ..callbacks import Callback
from ..errors import OptionError, did_you_mean

#: tracker name -> (the module it needs, the accelerate class, the extra that installs it)
TRACKERS = {
    'tensorboard': ('tensorboard', 'TensorBoardTracker', 'tensorboard'),
    'mlflow': ('mlflow', 'MLflowTracker', 'mlflow'),
    'trackio': ('trackio', 'TrackioTracker', 'trackio'),
    'wandb': ('wandb', 'WandBTracker', 'wandb'),
}


def check_report_to(report_to: Any) -> list[str]:
    """`report_to` (a name, a list of names, None, or 'none') as a list of tracker names. OptionError for an
    unknown name (with the closest ones) and for a tracker whose package is not installed (naming the extra)."""
    if report_to is None or report_to == 'none':
        return []
    names = [report_to] if isinstance(report_to, str) else report_to
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise OptionError(f'report_to: expected a tracker name or a list of them ({", ".join(TRACKERS)}), got '
                          f'{report_to!r}.')
    out = []
    for name in names:
        key = name.strip().lower()
        if key not in TRACKERS:
            raise OptionError(f'report_to: unknown tracker {name!r}.{did_you_mean(key, TRACKERS)} Trackers: '
                              f'{", ".join(TRACKERS)}.')
        module, _, extra = TRACKERS[key]
        if importlib.util.find_spec(module) is None:
            raise OptionError(f'report_to: {key!r} needs the {module} package, which is not installed: pip install '
                              f'"finetune[{extra}]" (or pip install {module}).')
        if key not in out:
            out.append(key)
    return out


def _hyper_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """`config` flattened to what every tracker stores: numbers, strings and booleans (others as strings)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            for inner, item in _hyper_parameters(value).items():
                out[f'{key}.{inner}'] = item
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[key] = 'None' if value is None else value
        else:
            out[key] = str(value)
    return out


def _numbers(prefix: str, metrics: dict | None) -> dict[str, float]:
    """The numbers of `metrics` named ``<prefix><metric>``, '@' written '_at_' (MLflow refuses '@'):
    ``eval/ndcg_at_10``."""
    return {f'{prefix}{k}'.replace('@', '_at_'): float(v) for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def with_trackers(callbacks: Any, report_to: Any, logging_dir: str | None) -> Any:
    """`callbacks` with a :class:`Trackers` for `report_to` added (`callbacks` of a wrong type left for the
    Trainer to refuse)."""
    trackers = Trackers(report_to, logging_dir)
    if callbacks is None or isinstance(callbacks, (list, tuple)):
        return [*(callbacks or []), trackers]
    return callbacks


class Trackers(Callback):
    """Log a fit to experiment trackers (see the module). `logging_dir`: where file-based trackers write
    (TensorBoard: ``<logging_dir>/runs/<run_name>``; default the fit's output_dir, else the working folder);
    `run_name`: the run's name in each tracker (default ``finetune-<time>``); `config`: the hyper-parameters, or a
    function that returns them when training begins."""

    def __init__(self, report_to: Any, logging_dir: str | None = None, run_name: str | None = None,
                 config: dict[str, Any] | Callable[[], dict[str, Any]] | None = None):
        self.names = check_report_to(report_to)
        self.logging_dir, self.run_name, self.config = logging_dir, run_name, config
        self.trackers: list = []
        self.loss_logged = 0  # the last step whose loss was logged

    def _make(self, name: str):
        import time

        import accelerate.tracking as tracking
        cls = getattr(tracking, TRACKERS[name][1])
        run_name = self.run_name or time.strftime('finetune-%Y%m%d-%H%M%S')
        folder = os.path.join(self.logging_dir or '.', 'runs')
        if name == 'tensorboard':
            return cls(run_name, folder)
        if name == 'mlflow':
            return cls(experiment_name='finetune', run_name=run_name)
        return cls(run_name)

    def on_train_begin(self, state) -> None:
        if not state.is_main_process or self.trackers:
            return
        for name in self.names:
            tracker = self._make(name)
            if hasattr(tracker, 'start'):
                tracker.start()
            self.trackers.append(tracker)
        config = self.config() if callable(self.config) else self.config
        if config:
            for tracker in self.trackers:
                tracker.store_init_configuration(_hyper_parameters(config))

    def _log(self, values: dict[str, float], step: int) -> None:
        if values:
            for tracker in self.trackers:
                tracker.log(values, step=step)

    def _flush_losses(self, state) -> None:
        """The losses and gradient norms of the steps read back since the last flush (the history holds them in
        order)."""
        for entry in state.history:
            loss, step = entry.get('loss'), entry.get('step', 0)
            if 'eval' not in entry and loss is not None and step > self.loss_logged:
                values = {'train/loss': float(loss)}
                norm = entry.get('grad_norm')
                if norm is not None and math.isfinite(norm):  # an fp16 overflow step (skipped) has none to show
                    values['train/grad_norm'] = float(norm)
                self._log(values, step)
                self.loss_logged = step

    def on_step_end(self, state) -> None:
        if self.trackers:
            self._log({'train/learning_rate': float(state.learning_rate),
                       'train/samples_per_second': float(state.samples_per_second)}, state.step)

    def on_epoch_end(self, state) -> None:
        if self.trackers:
            self._flush_losses(state)

    def on_evaluate(self, state, metrics) -> None:
        if self.trackers:
            self._flush_losses(state)
            self._log(_numbers('eval/', metrics), state.step)

    def on_train_end(self, state) -> None:
        if self.trackers:
            self._flush_losses(state)

    def on_fit_failed(self, state, error) -> None:
        """Close the trackers' runs (an MLflow run left open would be the parent of the next one in this process);
        what was logged stays. Each tracker is closed even when logging or another tracker's close fails."""
        if not self.trackers:
            return
        failed = None
        try:
            if state is not None:
                self._flush_losses(state)
        except Exception as exc:  # noqa: BLE001 - closing comes first; the failure is raised after
            failed = exc
        try:
            self._close()
        except Exception as exc:  # noqa: BLE001
            failed = failed or exc
        if failed is not None:
            raise failed

    def _close(self) -> None:
        trackers, self.trackers = self.trackers, []
        failed = None
        for tracker in trackers:
            try:
                tracker.finish()
            except Exception as exc:  # noqa: BLE001 - the others still finish; the first failure is raised after
                failed = failed or exc
        if failed is not None:
            raise failed

    def on_fit_end(self, state, run) -> None:
        if not self.trackers:
            return
        m = run.metrics
        values = {**_numbers('before/', m.get('before')), **_numbers('after/', m.get('after'))}
        for part in ('guard', 'test'):
            for when in ('before', 'after'):
                values.update(_numbers(f'{part}_{when}/', (m.get(part) or {}).get(when)))
        chosen = (m.get('selection') or {}).get('chosen') or {}
        if isinstance(chosen.get('step'), int):
            values['selection/chosen_step'] = float(chosen['step'])
        if isinstance((m.get('wise_ft') or {}).get('alpha'), (int, float)):
            values['wise_ft/alpha'] = float(m['wise_ft']['alpha'])
        self._log(values, state.step)
        self._close()
