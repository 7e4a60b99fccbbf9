"""The Trainer's choice of what it hands back: model selection over the evaluated candidates (the base
included), the guard data's before / after, and WiSE-FT (see :mod:`finetune.training.selection`)."""
from __future__ import annotations

import os

from ..errors import OptionError, did_you_mean
from ..merging import offer_interpolations
from .selection import WISE_FT_GRID, Candidate, Selection, cpu_state


class Chooser:
    """Evaluates candidates on the eval (and guard) data, keeps the best, applies WiSE-FT at the end."""

    def __init__(self, trainer):
        self.trainer = trainer
        c = trainer.config
        self.active = trainer.eval_data is not None and (c.select_best or c.wise_ft is not None)
        self.selection: Selection | None = None
        self.base_state: dict | None = None
        self.last_eval_step: int | None = None
        self.last_metrics: dict | None = None
        self.last_guard: dict | None = None

    # -------------------------------------------------------------- metrics
    def metric(self) -> str:
        t = self.trainer
        k = max(t.config.ks)
        return t.config.metric_for_best or t.eval_data.data_kind.best_metric.format(k=k)

    def guard_metric(self) -> str | None:
        t = self.trainer
        return None if t.guard_data is None else t.guard_data.data_kind.best_metric.format(k=max(t.config.ks))

    def evaluate(self) -> tuple[dict, dict | None]:
        """The eval data's metrics, and the guard data's (None without guard data), of the model as it is."""
        t = self.trainer
        metrics = t.evaluate()
        guard = t.evaluate(t.guard_data) if t.guard_data is not None else None
        self.last_eval_step, self.last_metrics, self.last_guard = t.state.step, metrics, guard
        return metrics, guard

    # -------------------------------------------------------------- the run
    def start(self) -> None:
        """The base model's metrics (and weights, when they may be chosen or interpolated)."""
        t = self.trainer
        if t.eval_data is None:
            return
        resumed = 'before' in t.metrics
        if not resumed:
            t.metrics['before'], guard = self.evaluate()
            if guard is not None:
                t.metrics['guard'] = {'before': guard}
        metric = self.metric()
        if metric not in t.metrics['before']:
            raise OptionError(f'metric_for_best={metric!r} is not among the evaluation metrics.'
                              f'{did_you_mean(metric, t.metrics["before"])} Metrics: '
                              f'{", ".join(sorted(t.metrics["before"]))}.')
        if not self.active:
            return
        self.selection = Selection(metric, self.guard_metric(), t.config.guard_tolerance) \
            if t.config.select_best else None
        if resumed:
            self._resume()
            return
        state = cpu_state(t.unwrapped)
        if t.config.wise_ft is not None:
            self.base_state = state
            self._keep('base')
        if self.selection is not None:
            base = Candidate('base', 0, t.metrics['before'], (t.metrics.get('guard') or {}).get('before'))
            self._offer(base, lambda: state)

    def candidate(self) -> dict:
        """Evaluate the model as it is now (a step or an epoch end); returns the eval metrics."""
        t = self.trainer
        metrics, guard = self.evaluate()
        if self.selection is not None:
            self._offer(Candidate(f'step {t.state.step}', t.state.step, metrics, guard),
                        lambda: cpu_state(t.unwrapped))
        return metrics

    def finish(self) -> None:
        """The last model's metrics; WiSE-FT's candidates; the chosen model put in place; ``trainer.metrics``."""
        t = self.trainer
        if t.eval_data is None:
            return
        if self.last_eval_step != t.state.step or self.last_metrics is None:
            self.candidate() if self.selection is not None else self.evaluate()
        t.metrics['last'] = self.last_metrics
        if self.last_guard is not None:
            t.metrics.setdefault('guard', {})['last'] = self.last_guard
        chosen = Candidate('last', t.state.step, self.last_metrics, self.last_guard)
        if t.config.wise_ft is not None:
            chosen = self._wise_ft() or chosen
        if self.selection is not None and self.selection.best is not None:
            chosen = self.selection.best
            t.metrics['selection'] = self.selection.report()
            if chosen.state is not None and (chosen.step != t.state.step or chosen.label != f'step {t.state.step}'):
                t.say(self._kept_message(chosen))
        if chosen.state is not None:
            t.unwrapped.load_state_dict(chosen.state)
        t.metrics['after'] = chosen.metrics
        if chosen.guard_metrics is not None:
            t.metrics.setdefault('guard', {})['after'] = chosen.guard_metrics

    # -------------------------------------------------------------- WiSE-FT
    def _wise_ft(self) -> Candidate | None:
        """Interpolations between the base and the fine-tuned model (the trained candidate with the best eval
        metric, or the last), evaluated and, when selecting, offered as candidates under the same rule; without
        selection, the best of them by that rule. None when the base's weights are gone (a resume)."""
        t = self.trainer
        if self.base_state is None:
            t.say('WiSE-FT skipped: the base model\'s weights are not available after this resume (give the run an '
                  'output_dir from the start to keep them)')
            return None
        tuned = self.selection.best_trained if self.selection is not None else None
        tuned_state = tuned.state if tuned is not None and tuned.state is not None else cpu_state(t.unwrapped)
        alphas = WISE_FT_GRID if t.config.wise_ft == 'auto' else (float(t.config.wise_ft),)
        trial = self.selection or Selection(self.metric(), self.guard_metric(), t.config.guard_tolerance)
        if trial.base_guard is None and (t.metrics.get('guard') or {}).get('before') is not None:
            trial.base_guard = float(t.metrics['guard']['before'][trial.guard_metric])
        known = {0.0: (t.metrics['before'], (t.metrics.get('guard') or {}).get('before')),
                 1.0: (tuned.metrics, tuned.guard_metrics) if tuned is not None else (self.last_metrics,
                                                                                      self.last_guard)}

        def measure(alpha: float) -> tuple[dict, dict | None]:
            # alpha 0 and 1 are the base's and the tuned weights bit for bit: their figures are known
            return known[alpha] if alpha in known else self.evaluate()
        grid, only = [], None
        for alpha, candidate, state in offer_interpolations(t.unwrapped, self.base_state, tuned_state, alphas, measure,
                                                            trial, _wise_ft_label, t.state.step, trained=False):
            grid.append(dict(candidate.summary(trial.metric, trial.guard_metric), alpha=alpha))
            if len(alphas) == 1:
                only, only.state = candidate, state
        t.metrics['wise_ft'] = {'of': tuned.label if tuned is not None else 'last', 'grid': grid}
        if only is not None and self.selection is None:  # a fixed alpha, no selection: that model
            t.metrics['wise_ft']['alpha'] = alphas[0]
            return only
        best = trial.best
        if best is not None and best.label.startswith('WiSE-FT alpha '):
            t.metrics['wise_ft']['alpha'] = float(best.label.rsplit(' ', 1)[1])
        return best

    # -------------------------------------------------------------- helpers
    def _offer(self, candidate: Candidate, state) -> None:
        if self.selection.offer(candidate, state):
            self._keep('best', candidate)

    def _keep(self, folder: str, candidate: Candidate | None = None) -> None:
        """With an output_dir, the model as it is now (the best candidate, or for WiSE-FT the base) is also
        written to ``output_dir/<folder>``, so that a resumed run can still choose it."""
        t = self.trainer
        if t.config.output_dir is None or not t.accelerator.is_main_process:
            return
        from ..artifacts import save_model
        path = os.path.join(t.config.output_dir, folder)
        extra = {'candidate': {'label': candidate.label, 'step': candidate.step, 'metrics': candidate.metrics,
                               'guard_metrics': candidate.guard_metrics}} if candidate else {}
        extra['run_id'] = t.run_id
        try:
            save_model(t.unwrapped, path, extra=extra)
        except Exception as exc:  # noqa: BLE001 - the choice is kept in memory either way
            t.say(f'warning: could not write {path} ({type(exc).__name__}: {exc})')

    def _resume(self) -> None:
        """After a resume: the best candidate and the base written by the interrupted run, if there are any (in the
        folder of the checkpoint resumed, and written by that run: another run's are never offered)."""
        from ..artifacts import read_config
        from safetensors.torch import load_file
        t = self.trainer
        from .checkpoint import run_id_of
        written_to = os.path.dirname(os.path.abspath(t.resume_state['directory']))
        for folder in ('best', 'base'):
            path = os.path.join(written_to, folder)
            if not os.path.isdir(path) or not t.is_ours(run_id_of(path)):
                continue
            state = load_file(os.path.join(path, 'model.safetensors'))
            if folder == 'base':
                self.base_state = state
                continue
            saved = read_config(path).get('candidate', {})
            if self.selection is not None and saved:
                self.selection.offer(Candidate(saved['label'], saved['step'], saved['metrics'],
                                               saved.get('guard_metrics')), lambda: state)

    def _kept_message(self, best: Candidate) -> str:
        metric = self.selection.metric
        last = self.last_metrics[metric]
        if best.label.startswith('WiSE-FT'):
            return (f'kept {best.label} (between the base and the fine-tuned model): {metric} '
                    f'{best.value(metric):.4f}; the last model had {last:.4f}')
        if best.label == 'base':
            return (f'kept the base model: no trained model beat it on eval_data ({metric} {best.value(metric):.4f}, '
                    f'the last trained model {last:.4f})')
        return (f'kept the model of {best.label} ({metric} {best.value(metric):.4f}); the last, step '
                f'{self.trainer.state.step}, had {last:.4f}')


def _wise_ft_label(alpha: float) -> str:
    return f'WiSE-FT alpha {alpha:g}'
