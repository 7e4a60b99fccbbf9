"""What a run shows the outside: the live :class:`TrainState` callbacks see, and the finished :class:`Run`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import FinetuneError


class TrainingError(FinetuneError):
    """Training could not go on (NaN loss, ...); the message says what was kept."""


class SaveError(FinetuneError):
    """Training finished but its final model could not be written; ``run`` holds the result (``run.model``, the
    metrics), to save elsewhere with ``run.save(folder)``."""

    def __init__(self, message: str, run: Run):
        super().__init__(message)
        self.run = run


@dataclass
class TrainState:
    """What callbacks see: progress, the last loss, and hooks back into the loop."""

    epochs: int
    total_steps: int
    epoch: int = 0
    step: int = 0
    #: micro-batches of the current epoch done (the position a step checkpoint resumes from)
    batches_done: int = 0
    #: the loss of the last optimizer step: a float, or on an accelerator the 0-d tensor of a step not read yet
    #: (see :attr:`last_loss`)
    _last_loss: Any = None
    learning_rate: float = 0.0
    samples_per_second: float = 0.0
    should_stop: bool = False
    is_main_process: bool = True
    #: the steps' losses and the evaluations, in order; on an accelerator a step's entry joins at the loop's next
    #: check of the loss (at most :data:`~finetune.training.guard.DEVICE_CHECK_EVERY` steps later)
    history: list[dict[str, Any]] = field(default_factory=list)
    _checkpoint: Callable[[str, dict], None] | None = None
    _log: Callable[[str], None] = print
    _eval_requested: bool = False

    @property
    def last_loss(self) -> float | None:
        """The loss of the last optimizer step. On an accelerator the loop does not read it back itself between
        its checks (that would make the host wait for each step): reading it here does, for this step only."""
        if self._last_loss is not None and not isinstance(self._last_loss, float):
            self._last_loss = float(self._last_loss)
        return self._last_loss

    @last_loss.setter
    def last_loss(self, value: Any) -> None:
        self._last_loss = value

    def request_evaluation(self) -> None:
        """Evaluate on the eval data once this step's callbacks are done."""
        self._eval_requested = True

    def save_checkpoint(self, directory: str, metrics: dict | None = None) -> None:
        """Write the model and the trainer state to `directory` now (a resumable checkpoint)."""
        if self._checkpoint is not None:
            self._checkpoint(directory, metrics or {})

    def log(self, message: str) -> None:
        self._log(message)


class Run:
    """The result of :func:`finetune.fit`: the trained ``model``, ``metrics`` {'before', 'after'}, and the
    ``history`` of steps and evaluations."""

    def __init__(self, model, metrics: dict[str, dict], history: list[dict], data_description: str, config: dict):
        self.model, self.metrics, self.history = model, metrics, history
        self.data_description, self.config = data_description, config
        #: what the run report shows (JSON-able; :mod:`finetune.reporting`), set when the fit finishes
        self.report_data: dict | None = None

    def save(self, directory: str) -> str:
        """Write the fine-tuned model (safetensors + JSON config with the metrics, and the run report's data as
        ``report.json``); returns the path."""
        from ..artifacts import save_model
        write_more = None
        if self.report_data is not None:
            from ..reporting import save_report_data
            write_more = lambda folder: save_report_data(self.report_data, folder)  # noqa: E731
        return save_model(self.model, directory, metrics=self.metrics, extra={'training': self.config},
                          write_more=write_more)

    def report(self, path: str) -> str:
        """Write the run report, one self-contained HTML page, to `path` (a file, or a folder that gets
        ``report.html``); returns its path. A run without eval data shows its curves and settings."""
        from ..reporting import write_report
        if self.report_data is None:
            from ..reporting.collect import jsonable
            self.report_data = jsonable({'title': f'{getattr(self.model, "name", "model")} fine-tuned',
                                         'metrics': self.metrics, 'config': self.config,
                                         'data': {'train': self.data_description}})
        return write_report(self.report_data, path)

    def __repr__(self) -> str:
        return f'Run(model={self.model.name!r}, metrics={list(self.metrics)})'
