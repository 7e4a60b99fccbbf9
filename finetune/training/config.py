"""The validated configuration of a training run: fit()'s settings as one object.

Every setting is checked once, here, with a message naming the argument, what it must be and what was given.
A resumed run compares the settings it is given with the ones its checkpoint was trained with: an argument
left at its default takes the saved value; one passed on purpose must agree with it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Sequence

from .. import validators as rules
from ..errors import OptionError
from .hardware import check_precision


class Default:
    """A fit() argument's default value, told apart from the same value passed on purpose (a resumed run
    takes its saved value for every argument left at its default). Shown as the bare value."""

    __slots__ = ('value',)

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def value_of(value: Any) -> Any:
    """The value itself, or the value a :class:`Default` holds."""
    return value.value if isinstance(value, Default) else value


#: settings a resumed run must keep: passed on purpose with another value they are an error, left out they
#: take the checkpoint's value (the schedule, the batches and the loss depend on them)
KEPT_ON_RESUME = ('loss', 'loss_options', 'epochs', 'batch_size', 'learning_rate', 'loss_learning_rate',
                  'optimizer', 'optimizer_options', 'scheduler', 'warmup_ratio', 'max_grad_norm',
                  'gradient_accumulation_steps', 'precision', 'seed', 'num_items_per_class', 'data_kind',
                  'group_by_length', 'validation_split', 'cpu_kernels', 'dataset_sampling')
#: settings a resumed run takes from its checkpoint when left out, and may change freely. Never where files go or
#: which are deleted (output_dir, save_total_limit): a resumed run writes where its caller says, else beside the
#: checkpoint it resumes, and keeps save_total_limit's default unless told otherwise
INHERITED_ON_RESUME = ('save_steps', 'eval_every', 'num_workers', 'select_best', 'metric_for_best', 'wise_ft',
                       'guard_tolerance', 'feature_cache')


@dataclass(frozen=True)
class TrainingConfig:
    """fit()'s settings, validated (see :func:`finetune.fit` for what each means).

    ``explicit`` holds the names the caller passed on purpose; the others kept their default."""

    loss: str | dict | None = None
    loss_options: dict | None = None
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float | None = None
    loss_learning_rate: float = 1e-3
    optimizer: str = 'AdamW'
    optimizer_options: dict | None = None
    scheduler: str = 'linear'
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    gradient_accumulation_steps: int = 1
    device: str = 'auto'
    precision: str = 'auto'
    num_workers: int | None = None
    seed: int = 42
    num_items_per_class: int = 4
    eval_every: int | None = None
    data_kind: str | None = None
    output_dir: str | None = None
    overwrite_output_dir: bool = False
    save_steps: int | None = None
    save_total_limit: int = 2
    resume_from: str | None = None
    progress: bool | None = None
    ks: Sequence[int] = (1, 5, 10)
    select_best: bool = True
    metric_for_best: str | None = None
    wise_ft: float | str | None = None
    guard_tolerance: float = 0.01
    group_by_length: bool | str = 'auto'
    feature_cache: bool | str | dict = 'auto'
    validation_split: float = 0.1
    cpu_kernels: bool | str = 'auto'
    dataset_sampling: str | dict = 'proportional'
    explicit: frozenset = field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def from_arguments(cls, **arguments: Any) -> TrainingConfig:
        """The config of fit()'s keyword arguments, which may be :class:`Default` values. Raises OptionError."""
        names = {f.name for f in fields(cls)} - {'explicit'}
        unknown = sorted(set(arguments) - names)
        if unknown:
            raise OptionError(f'unknown training setting(s) {", ".join(unknown)}.')
        explicit = frozenset(k for k, v in arguments.items() if not isinstance(v, Default))
        config = cls(**{k: value_of(v) for k, v in arguments.items()}, explicit=explicit)
        config.validate()
        return config

    def validate(self) -> None:
        """OptionError, naming the setting, for any value of the wrong type or range."""
        for name in ('epochs', 'gradient_accumulation_steps', 'save_total_limit'):
            rules.integer(name, getattr(self, name), 1)
        rules.integer('batch_size', self.batch_size, 2)
        rules.integer('num_items_per_class', self.num_items_per_class, 2)
        rules.integer('seed', self.seed, 0)
        rules.integer('num_workers', self.num_workers, 0, none=True)
        for name in ('eval_every', 'save_steps'):
            rules.integer(name, getattr(self, name), 1, none=True)
        rules.positive('learning_rate', self.learning_rate, 'a positive number or None (the family default)',
                       none=True)
        rules.positive('loss_learning_rate', self.loss_learning_rate)
        rules.positive('max_grad_norm', self.max_grad_norm, 'a positive number (the largest gradient norm kept), or '
                       'None to turn clipping off', none=True)
        rules.fraction('warmup_ratio', self.warmup_ratio)
        check_precision(self.precision)
        rules.boolean('progress', self.progress, 'True, False or None (a bar on a terminal only)', none=True)
        for name in ('loss_options', 'optimizer_options'):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise OptionError(f'{name}: expected a dict such as {{"weight_decay": 0.01}}, got '
                                  f'{type(value).__name__}.')
        for loss in self.loss.values() if isinstance(self.loss, dict) else (self.loss,):  # one per dataset, or one
            rules.text('loss', loss, 'a loss name such as "InfoNCE" (or, for several datasets, a dict of them such as '
                       '{"logs": "InfoNCE", "scored": "CoSENTLoss"})')
        from ..data.several import check_sampling
        check_sampling(self.dataset_sampling)
        rules.text('metric_for_best', self.metric_for_best, 'a metric name such as "ndcg@10"')
        for name in ('select_best', 'overwrite_output_dir'):
            rules.boolean(name, getattr(self, name))
        if self.wise_ft is not None and self.wise_ft != 'auto':
            from ..merging import check_alpha
            try:
                check_alpha(self.wise_ft)
            except OptionError:
                raise OptionError(f"wise_ft: expected None, 'auto' or a number in [0, 1] (0: the base model, 1: "
                                  f"the fine-tuned one), got {self.wise_ft!r}.") from None
        rules.number('guard_tolerance', self.guard_tolerance, 'a number >= 0 (how much of the guard metric a chosen '
                     'model may lose)', lambda v: v >= 0)
        if not (isinstance(self.group_by_length, bool) or self.group_by_length == 'auto'):
            raise OptionError(f"group_by_length: expected 'auto' (texts of similar length batched together where "
                              f"the data is text pairs), True or False, got {self.group_by_length!r}.")
        rules.number('validation_split', self.validation_split, 'a share of the training rows in [0, 0.5] (0: none '
                     'held out)', lambda v: 0 <= v <= 0.5)
        if not (isinstance(self.cpu_kernels, bool) or self.cpu_kernels == 'auto'):
            raise OptionError(f"cpu_kernels: expected 'auto' (the CPU paths that measure faster at this thread "
                              f"count), True or False (torch's own modules), got {self.cpu_kernels!r}.")
        from .features import check_feature_cache
        check_feature_cache(self.feature_cache)
        rules.text('data_kind', self.data_kind, 'a data kind name such as "pairs"')
        for name in ('output_dir', 'resume_from'):
            rules.text(name, getattr(self, name), 'a folder path')
        from ..evaluation.metrics import _check_ks
        try:
            _check_ks(self.ks)
        except Exception as exc:  # InputError from the metrics, reported as the setting it is
            raise OptionError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (for a checkpoint or an artifact's config), without ``explicit``; a model
        object in ``loss_options`` (a guide) is written as a description of it, not copied."""
        from torch import nn
        models = {k: f'<model {getattr(v, "name", type(v).__name__)}>' for k, v in (self.loss_options or {}).items()
                  if isinstance(v, nn.Module)}
        out = asdict(replace(self, loss_options={**self.loss_options, **models}) if models else self)
        out.pop('explicit')
        out['ks'] = list(self.ks)
        return out

    def for_resume(self, saved: dict[str, Any]) -> tuple[TrainingConfig, list[str]]:
        """This config with the settings left at their default replaced by the `saved` ones, and the list of
        settings passed on purpose that differ from the checkpoint (each 'name: given X, checkpoint Y')."""
        updates, differences = {}, []
        for name in KEPT_ON_RESUME + INHERITED_ON_RESUME:
            if name not in saved:
                continue
            mine, theirs = getattr(self, name), saved[name]
            left_out = name not in self.explicit or (name == 'precision' and mine == 'auto') or (
                name == 'learning_rate' and mine is None)
            if left_out:
                updates[name] = theirs
            elif name == 'loss' and isinstance(theirs, dict) and _loss_fits(mine, theirs):
                continue  # the losses given are those the checkpoint resolved (several datasets)
            elif name in KEPT_ON_RESUME and not _same(_canonical(name, mine), _canonical(name, theirs)):
                differences.append(f'{name}: given {mine!r}, checkpoint {theirs!r}')
        config = replace(self, **updates)
        config.validate()
        return config, differences


def _canonical(name: str, value: Any) -> Any:
    """A loss under any of its aliases is the same loss."""
    if name == 'loss' and isinstance(value, dict):
        return {key: _canonical(name, loss) for key, loss in value.items()}
    if name == 'loss' and isinstance(value, str):
        from ..losses import loss_class
        try:
            return loss_class(value).name
        except OptionError:
            return value
    return value


def _loss_fits(given: Any, saved: dict) -> bool:
    """Whether `given` (one loss name for every dataset, or some datasets' losses) names the losses `saved` holds
    for them (a checkpoint of several datasets keeps every dataset's loss, the defaults resolved)."""
    saved = _canonical('loss', saved)
    if isinstance(given, str):
        return all(_same(_canonical('loss', given), loss) for loss in saved.values())
    return isinstance(given, dict) and all(k in saved and _same(_canonical('loss', v), saved[k])
                                           for k, v in given.items())


def _same(a: Any, b: Any) -> bool:
    if rules.is_number(a) and rules.is_number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    return a == b
