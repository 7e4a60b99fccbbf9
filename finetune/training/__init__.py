"""Training: :func:`fit`, a short wrapper over the :class:`Trainer` and its validated :class:`TrainingConfig`.

Layout: ``config`` (fit's settings, validated), ``trainer`` (the steps), ``module`` (model + loss), ``optim``
(optimizers, schedules, parameter groups), ``checkpoint`` (save, find, resume, output_dir checks), ``guard``
(a non-finite step never leaves a broken model), ``hardware`` (device, precision, random state), ``state``
(what callbacks see, the finished Run).
"""
from __future__ import annotations

from typing import Callable, Sequence

from ..callbacks import Callback
from .config import Default, TrainingConfig
from .hardware import PRECISIONS, cpu_supports_bf16, resolve_device, resolve_precision, seed_everything
from .optim import OPTIMIZERS, SCHEDULERS
from .state import Run, SaveError, TrainingError, TrainState
from .trainer import Trainer


def fit(model, train_data, eval_data=None, *, model_options: dict | None = None,
        loss: str | dict | None = Default(None), loss_options: dict | None = Default(None), epochs: int = Default(1),
        batch_size: int = Default(32), learning_rate: float | None = Default(None),
        loss_learning_rate: float = Default(1e-3),
        optimizer: str = Default('AdamW'), optimizer_options: dict | None = Default(None),
        scheduler: str = Default('linear'), warmup_ratio: float = Default(0.1),
        max_grad_norm: float | None = Default(1.0), gradient_accumulation_steps: int = Default(1),
        device: str = Default('auto'), precision: str = Default('auto'), num_workers: int | None = Default(None),
        seed: int = Default(42), num_items_per_class: int = Default(4), callbacks: Sequence[Callback] | None = None,
        eval_every: int | None = Default(None), data_kind: str | None = Default(None),
        output_dir: str | None = Default(None), overwrite_output_dir: bool = Default(False),
        save_steps: int | None = Default(None), save_total_limit: int = Default(2),
        resume_from: str | None = Default(None), progress: bool | None = Default(None),
        ks: Sequence[int] = Default((1, 5, 10)), log: Callable[[str], None] | None = None, guard_data=None,
        select_best: bool = Default(True), metric_for_best: str | None = Default(None),
        wise_ft: float | str | None = Default(None),
        guard_tolerance: float = Default(0.01), group_by_length: bool | str = Default('auto'),
        feature_cache: bool | str | dict = Default('auto'), test_data=None,
        validation_split: float = Default(0.1), cpu_kernels: bool | str = Default('auto'),
        report_to: str | Sequence[str] | None = None, dataset_sampling: str | dict = Default('proportional')) -> Run:
    """Fine-tune `model` (a registry name, or a model from :func:`build_model`) on `train_data`.

    Batches are made in `num_workers` DataLoader processes (default: none for text data, else half the cores, 1 to
    4). Retrieval metrics on `eval_data` are computed before and after training (``run.metrics``).
    With `output_dir`, a checkpoint is written every `save_steps` optimizer steps and at each epoch end
    (``output_dir/checkpoint-<step>``, the last `save_total_limit` kept) and the final model to
    ``output_dir/model``; ``fit(None, train_data, resume_from='out')`` continues from the latest checkpoint
    exactly where it stopped (arguments left out take the checkpoint's values; the saved files never turn on
    remote code, so a model that needs it resumes with ``model_options={'trust_remote_code': True}``).
    Files go only where the caller says: a resumed run writes to its `output_dir`, else beside the checkpoint it
    resumes (never to a folder named in the checkpoint). One run writes an `output_dir` at a time (a second is
    refused while the first holds ``output_dir/.finetune.lock``); a folder holding another run's checkpoints
    is refused unless `overwrite_output_dir` (which removes them); a ``model`` folder there that is not a saved
    model is refused before training; checkpoints beyond `save_total_limit` are removed only among this run's.

    Never worse than the base: with `eval_data`, the base model and the model at each epoch end (or every
    `eval_every` steps) are candidates, and the one with the best `metric_for_best` (default per data kind:
    map@10 for labeled data, ndcg@10 for pairs, spearman for scored pairs) is handed back and saved, the base
    included; ``select_best=False`` keeps the last. `guard_data` (general-domain data whose quality should
    not be lost) is evaluated before and after, and a candidate qualifies only if its guard metric is at most
    `guard_tolerance` below the base's. `wise_ft` (a number in [0, 1], or 'auto' for the best of 0, 0.25, 0.5,
    0.75, 1 by the same rule) interpolates the base's and the chosen model's weights. ``run.metrics`` holds
    'before', 'after' (the model handed back), 'last', 'selection' (the choice and the curve), 'guard'
    and 'wise_ft'.

    Speed and memory: `group_by_length` ('auto': on for text rows) batches texts of similar length together
    (less padding); ``loss_options={'mini_batch_size': m}`` (InfoNCE, CLIPLoss) trains a large contrastive
    batch in the memory of `m` rows with the same gradients (GradCache); under several processes those losses
    use every process's embeddings as negatives. `feature_cache` ('auto', True, False, or
    ``{'max_memory_mb': N}``): with a backbone frozen whole (``freeze=True``) and no training augmentation,
    each item's backbone features are computed once and every epoch trains the pooler and heads on them (see
    :mod:`finetune.training.features`).

    Several datasets: `train_data` (and `eval_data`, `test_data`) a dict of named datasets, `loss` and `loss_options`
    one for all or a dict per name; each batch from one dataset, drawn by `dataset_sampling` (see
    :mod:`finetune.data.several`); metrics ``'<name>/<metric>'``, chosen on ``'mean'`` of their best metrics.

    With eval data and `output_dir`, ``output_dir/report.html`` shows the run (:mod:`finetune.reporting`);
    `report_to` ('tensorboard', 'mlflow', 'trackio', 'wandb', or a list) logs it to experiment trackers.

    Messages go to the ``finetune`` logger, or to `log`. Returns a :class:`Run`. Raises InputError (data), OptionError
    (settings), TrainingError (a NaN step; the last good model is kept), SaveError (``error.run`` holds the model).
    """
    config = TrainingConfig.from_arguments(
        loss=loss, loss_options=loss_options, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        loss_learning_rate=loss_learning_rate, optimizer=optimizer, optimizer_options=optimizer_options,
        scheduler=scheduler, warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm,
        gradient_accumulation_steps=gradient_accumulation_steps, device=device, precision=precision,
        num_workers=num_workers, seed=seed, num_items_per_class=num_items_per_class, eval_every=eval_every,
        data_kind=data_kind, output_dir=output_dir, overwrite_output_dir=overwrite_output_dir, save_steps=save_steps,
        save_total_limit=save_total_limit, resume_from=resume_from, progress=progress, ks=ks, select_best=select_best,
        metric_for_best=metric_for_best, wise_ft=wise_ft, guard_tolerance=guard_tolerance,
        group_by_length=group_by_length, feature_cache=feature_cache, validation_split=validation_split,
        cpu_kernels=cpu_kernels, dataset_sampling=dataset_sampling)
    if report_to not in (None, 'none', []):
        from ..reporting.trackers import with_trackers
        callbacks = with_trackers(callbacks, report_to, config.output_dir)
    trainer = Trainer(model, train_data, eval_data, config, model_options=model_options, callbacks=callbacks, log=log,
                      guard_data=guard_data, test_data=test_data)
    return trainer.train()


__all__ = ['fit', 'Trainer', 'TrainingConfig', 'Default', 'Run', 'TrainState', 'TrainingError', 'SaveError',
           'PRECISIONS', 'OPTIMIZERS', 'SCHEDULERS', 'cpu_supports_bf16', 'resolve_device', 'resolve_precision',
           'seed_everything']
