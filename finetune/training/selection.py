"""Never worse than where you started: choose among the models a run has seen, the base included.

With evaluation data, every evaluated model is a candidate: the base before training, the model at each
epoch end (or every ``eval_every`` steps) and the last one. The one chosen has the best ``metric_for_best``
on the evaluation data among the candidates that *qualify*: without guard data every candidate qualifies;
with it, a candidate qualifies when its guard metric is at most ``guard_tolerance`` below the base's (the
base always qualifies). So a run that only got worse hands back the base model, and says so.

WiSE-FT with ``alpha='auto'`` uses the same rule over a grid of interpolations between the base and the
chosen model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

#: the interpolations ``wise_ft='auto'`` tries (0: the base, 1: the fine-tuned model)
WISE_FT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Candidate:
    """One evaluated model: where it was in the run, its metrics, and (while it is the best) its weights."""

    label: str
    step: int
    metrics: dict[str, Any]
    guard_metrics: dict[str, Any] | None = None
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def value(self, metric: str) -> float:
        return float(self.metrics[metric])

    def summary(self, metric: str, guard_metric: str | None) -> dict[str, Any]:
        out = {'model': self.label, 'step': self.step, metric: self.value(metric)}
        if guard_metric is not None and self.guard_metrics is not None:
            out[f'guard {guard_metric}'] = float(self.guard_metrics[guard_metric])
        return out


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of `module`'s state on the CPU."""
    return {k: v.detach().to('cpu', copy=True) for k, v in module.state_dict().items()}


class Selection:
    """Keeps the best qualifying candidate (see the module docstring) and the curve of all of them."""

    def __init__(self, metric: str, guard_metric: str | None, tolerance: float):
        self.metric, self.guard_metric, self.tolerance = metric, guard_metric, tolerance
        self.curve: list[Candidate] = []
        self.best: Candidate | None = None
        #: the trained candidate with the best eval metric, guard or not: WiSE-FT's fine-tuned end
        self.best_trained: Candidate | None = None
        self.base_guard: float | None = None

    def qualifies(self, candidate: Candidate) -> bool:
        if self.guard_metric is None or candidate.guard_metrics is None or self.base_guard is None:
            return True
        return self.base_guard - float(candidate.guard_metrics[self.guard_metric]) <= self.tolerance

    def offer(self, candidate: Candidate, state: Callable[[], dict[str, torch.Tensor]],
              trained: bool | None = None) -> bool:
        """Record `candidate`; keep its weights (``state()``) when it is the best so far, or the best `trained`
        one (default: any but the base). True when it is the best."""
        if candidate.label == 'base' and candidate.guard_metrics is not None and self.guard_metric is not None:
            self.base_guard = float(candidate.guard_metrics[self.guard_metric])
        self.curve.append(candidate)
        trained = candidate.label != 'base' if trained is None else trained
        if trained and (self.best_trained is None or
                        candidate.value(self.metric) > self.best_trained.value(self.metric)):
            self._keep(candidate, state)
            old, self.best_trained = self.best_trained, candidate
            self._release(old)
        if not self.qualifies(candidate):
            return False
        if self.best is None or candidate.value(self.metric) > self.best.value(self.metric):
            self._keep(candidate, state)
            old, self.best = self.best, candidate
            self._release(old)
            return True
        return False

    @staticmethod
    def _keep(candidate: Candidate, state) -> None:
        if candidate.state is None:
            candidate.state = state()

    def _release(self, old: Candidate | None) -> None:
        """Free the weights of `old` unless it is still the best or the best trained candidate."""
        if old is not None and old is not self.best and old is not self.best_trained:
            old.state = None

    def report(self) -> dict[str, Any]:
        """What was chosen, by which rule, and every candidate's figures."""
        return {'metric': self.metric, 'guard_metric': self.guard_metric, 'guard_tolerance': self.tolerance,
                'chosen': self.best.summary(self.metric, self.guard_metric) if self.best else None,
                'curve': [c.summary(self.metric, self.guard_metric) for c in self.curve]}
