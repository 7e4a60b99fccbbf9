"""The frozen-feature cache: a backbone that does not train is run once per training item, not once per epoch.

With ``model_options={'freeze': True}`` only the pooler, the heads and the classifier train, yet every epoch
would decode, tokenize and run the whole backbone again for the same answer. When that answer cannot change,
:func:`attach` computes each distinct training item's backbone :class:`~finetune.backbone.Features` once,
before the first step (with a progress bar on a terminal), and every epoch then trains on them: the DataLoader
workers' preprocessing and the backbone are skipped; batches, losses, evaluation, checkpoints and the guard are
those of an uncached run.

When it applies (``fit(feature_cache='auto')``, the default): every backbone that embeds a side of the data is
frozen whole (no parameter trains), its family draws no random training views
(:meth:`~finetune.backbone.Backbone.augments_in_training`), and the run has more than one epoch. A backbone
frozen whole stays in eval mode in training, cached or not (:meth:`finetune.model.EmbeddingModel.train`), so its
features are deterministic and the cached run trains exactly as the uncached one. ``True`` asks for the cache
and is an error where it cannot apply; ``False`` turns it off; ``{'max_memory_mb': N}`` is 'auto' with another
memory budget. One log line says it is on, where it lives and its size, or why it is off.

What is kept: per distinct item of each side's model (a text or path met on several rows, or on both sides of
one model, is computed once), the backbone's output unpadded (token sequences up to their last real token,
with their mask row; padded again, with zeros, when a batch is made), in the dtype the backbone gives under the
run's precision. Memory: up to ``max_memory_mb`` (:data:`DEFAULT_MEMORY_MB`, 2 GiB) in RAM; past it, the rest
goes to raw files in ``output_dir/feature-cache/`` (read back item by item, so the memory stays at the
budget), removed when training ends; without ``output_dir`` the cache is refused with a log line and training
goes on uncached. Nothing is read back but raw numbers (no pickle). Each process of a multi-process run keeps
its own cache. A resumed run builds the cache again.

This module is the policy (when the cache applies, its settings) and its wiring into the trainer (:func:`attach`,
the cached loader); the store of features in memory and on disk is :mod:`finetune.training.feature_store`.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Sequence

import torch

from ..backbone import Features, batch_to
from ..callbacks import Callback
from ..data.batches import WORKER_ERROR, RowsDataset, raise_worker_error
from ..errors import FinetuneError, OptionError
from ..model import backbone_frozen
from .feature_store import CacheRefused, FeatureStore, MemoryBudget, size_text
from .hardware import rng_state, set_rng_state

#: the default in-memory budget of the cache, in MiB
DEFAULT_MEMORY_MB = 2048
#: the folder under ``output_dir`` that holds what does not fit in memory
CACHE_FOLDER = 'feature-cache'
#: the values ``feature_cache`` takes besides a dict of settings
CHOICES = ('auto', True, False)
#: the settings a ``feature_cache`` dict may hold
SETTINGS = ('max_memory_mb',)
#: rows read per step while the cache collects the distinct items
_SCAN_ROWS = 1024


def check_feature_cache(value: Any) -> None:
    """OptionError unless `value` is 'auto', True, False or a dict of :data:`SETTINGS`."""
    expected = ("expected 'auto' (on where it applies), True (on, an error where it cannot apply), False (off) "
                "or a dict such as {'max_memory_mb': 2048} ('auto' with that memory budget)")
    if isinstance(value, dict):
        unknown = sorted(set(map(str, value)) - set(SETTINGS))
        if unknown:
            raise OptionError(f'feature_cache: unknown setting(s) {", ".join(map(repr, unknown))}; {expected}. '
                              f'Settings: {", ".join(SETTINGS)}.')
        budget = value.get('max_memory_mb', DEFAULT_MEMORY_MB)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget < float('inf'):
            raise OptionError(f"feature_cache: 'max_memory_mb' must be a number >= 0 (0: everything on disk under "
                              f"output_dir), got {budget!r}.")
        return
    if not any(value is choice or (isinstance(value, str) and value == choice) for choice in CHOICES):
        raise OptionError(f'feature_cache: {expected}; got {value!r}. Choices: {", ".join(map(repr, CHOICES))}, '
                          f'or a dict.')


def attach(trainer) -> FeatureCache | None:
    """Fill the cache for `trainer` and swap its data loader for one that reads the cache; returns the cache,
    or None when it is off (the reason logged). Raises OptionError for ``feature_cache=True`` where it cannot
    apply. Called at the end of :meth:`Trainer.setup <finetune.training.Trainer.setup>`."""
    setting = trainer.config.feature_cache
    if setting is False:
        trainer.say('feature cache off: feature_cache=False')
        return None
    reason = why_not(trainer)
    if reason is None and setting is not True and trainer.config.epochs == 1:
        reason = 'one epoch: no features would be read twice (feature_cache=True caches anyway)'
    if reason is not None:
        if setting is True:
            raise OptionError(f'feature_cache=True: {reason}. Use feature_cache=\'auto\' to cache only where it '
                              f'applies, or False.')
        trainer.say(f'feature cache off: {reason}')
        return None
    budget = setting.get('max_memory_mb', DEFAULT_MEMORY_MB) if isinstance(setting, dict) else DEFAULT_MEMORY_MB
    cache = FeatureCache(trainer, int(budget * 2 ** 20))
    try:
        cache.fill(trainer.config.progress)
    except CacheRefused as exc:
        cache.close()
        trainer.say(f'feature cache off: {exc}; training goes on uncached')
        return None
    except BaseException:
        cache.close()
        raise
    trainer.loader = cache.loader(trainer.loader)
    trainer.callbacks.append(cache)
    trainer.say(f'feature cache on: {cache.describe()}')
    return cache


def why_not(trainer) -> str | None:
    """Why the backbone features of `trainer`'s data cannot be computed once (None: they can)."""
    from .engine import is_sharded
    if is_sharded(trainer.accelerator):
        return 'FSDP shards the backbone over the processes, and only its wrapper gathers it for a forward'
    if hasattr(trainer.train_data, 'parts'):
        return 'several datasets are batched one dataset at a time, each by its own kind'
    if trainer.loss.__dict__.get('guide') is not None:
        return "the loss's guide embeds each batch's raw rows, which the cache does not keep"
    from ..prompts import training_prompts
    if any(training_prompts(trainer.side_a, trainer.side_b)):
        return 'prompts go before the items of a side, and the cache keeps the features of the items as they are'
    for model in _side_models(trainer):
        backbone = model.backbone
        trainable = [name for name, p in backbone.named_parameters() if p.requires_grad]
        if trainable:
            return (f'the backbone of {model.name!r} trains ({len(trainable)} parameter tensors, e.g. '
                    f"{trainable[0]!r}); features are cached for a backbone frozen whole (model_options="
                    f"{{'freeze': True}})")
        if not backbone_frozen(backbone):
            return f'the backbone of {model.name!r} has no parameters, so nothing is frozen'
        if backbone.augments_in_training():
            return (f'{model.name!r} draws random training views (its preprocess_train augments or samples '
                    f'afresh), so an item\'s features differ every epoch')
    return None


def _side_models(trainer) -> list:
    models = [trainer.side_a] + ([trainer.side_b] if trainer.side_b is not None else [])
    return list({id(m): m for m in models}.values())


def _item_key(item: Any) -> tuple:
    """One item's identity: its value for texts, paths and numbers, else the object (rows keep their items)."""
    if isinstance(item, (str, bytes, int, float)):
        return ('=', type(item).__name__, item)
    return ('id', id(item))


class FeatureCache(Callback):
    """The cached features of one run: one :class:`FeatureStore` per model that embeds a side; a callback so
    that its files go when training ends."""

    def __init__(self, trainer, budget_bytes: int):
        self.trainer = trainer
        self.budget = MemoryBudget(budget_bytes)
        output_dir, rank = trainer.config.output_dir, trainer.accelerator.process_index
        self.folder = os.path.join(output_dir, CACHE_FOLDER) if output_dir else None
        self.sides: dict[int, _Side] = {}
        for i, model in enumerate(_side_models(trainer)):
            path = os.path.join(self.folder, f'process{rank}-model{i}.bin') if self.folder else None
            self.sides[id(model)] = _Side(model, FeatureStore(self.budget, path))
        self.seconds = 0.0

    # -------------------------------------------------------------- filling
    def fill(self, progress: bool | None = None) -> None:
        """Collect every distinct item of the training data, then compute their features (random generators
        left as they were, so the run draws what an uncached one draws). Raises CacheRefused."""
        started, saved = time.perf_counter(), rng_state()
        try:
            self._collect()
            for side in self.sides.values():
                self._compute(side, progress)
        finally:
            set_rng_state(saved)
        self.seconds = time.perf_counter() - started

    def _collect(self) -> None:
        t = self.trainer
        data, kind = t.train_data, t.train_data.data_kind
        register_a = self.sides[id(t.side_a)].register
        register_b = self.sides[id(t.side_b)].register if t.side_b is not None else None
        for start in range(0, len(data), _SCAN_ROWS):
            rows = [kind.row(data, i) for i in range(start, min(len(data), start + _SCAN_ROWS))]
            kind.collate(rows, register_a, register_b)

    def _compute(self, side: _Side, progress: bool | None) -> None:
        t = self.trainer
        workers = t.loader.num_workers
        loader = torch.utils.data.DataLoader(side.pending, batch_size=t.config.batch_size, num_workers=workers,
                                             collate_fn=_Preprocess(side.model.preprocess_for_training))
        backbone, was_training = side.model.backbone, side.model.backbone.training
        backbone.eval()
        batches = _progress(loader, f'caching the features of {side.model.name}', progress)
        try:
            with torch.no_grad():
                for batch in batches:
                    raise_worker_error(batch)
                    with t.accelerator.autocast():
                        features = backbone(batch_to(batch, t.accelerator.device))
                    side.store.add_batch(features, len(side.pending))
        finally:
            backbone.train(was_training)
        side.store.finish_writing()
        side.pending = []

    # -------------------------------------------------------------- training
    def loader(self, uncached: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
        """A loader of the same batches as `uncached` (its batch sampler, so skipping and sharding hold) whose
        sides are cached features; no worker processes: there is nothing left to preprocess. Its generator is
        `uncached`'s, so the random state of the training process moves as in an uncached run."""
        return torch.utils.data.DataLoader(RowsDataset(self.trainer.train_data),
                                           batch_sampler=uncached.batch_sampler, num_workers=0,
                                           collate_fn=self.collate, generator=uncached.generator)

    def collate(self, rows: Sequence[tuple]) -> dict:
        """The batch of `rows`, as the data kind makes it, with each side's items as their cached Features."""
        t = self.trainer
        features_b = self.sides[id(t.side_b)].features if t.side_b is not None else None
        return t.train_data.data_kind.collate(rows, self.sides[id(t.side_a)].features, features_b)

    # -------------------------------------------------------------- reporting and cleaning up
    def describe(self) -> str:
        """One line: items, bytes in memory and on disk, and where."""
        items = sum(len(s.store) for s in self.sides.values())
        memory = sum(s.store.memory_bytes for s in self.sides.values())
        disk = sum(s.store.disk_bytes for s in self.sides.values())
        where = f' + {size_text(disk)} on disk in {self.folder} (removed when training ends)' if disk else ''
        return (f'{items:,} items\' backbone features, {size_text(memory)} in memory (budget '
                f'{size_text(self.budget.total)}){where}, computed in {self.seconds:.1f} s; each epoch now trains the '
                f'pooler and heads on them')

    def close(self) -> None:
        """Drop the features and remove the cache's files."""
        for side in self.sides.values():
            side.store.close()
        if self.folder and os.path.isdir(self.folder) and not os.listdir(self.folder):
            try:
                os.rmdir(self.folder)
            except OSError:  # another process of the run removed it (or wrote to it) first
                pass

    def on_train_end(self, state) -> None:
        self.close()


class _Side:
    """The cache of one model (one tower, or the one model of both sides): its store and item -> slot."""

    def __init__(self, model, store: FeatureStore):
        self.model, self.store = model, store
        self.slots: dict[tuple, int] = {}
        self.pending: list[Any] = []

    def register(self, items: Sequence[Any]) -> None:
        """Note the items not seen yet (their features are computed in the order noted)."""
        for item in items:
            key = _item_key(item)
            if key not in self.slots:
                self.slots[key] = len(self.pending)
                self.pending.append(item)

    def features(self, items: Sequence[Any]) -> Features:
        """The cached Features of `items`, as one padded batch."""
        return self.store.batch([self.slots[_item_key(item)] for item in items])


class _Preprocess:
    """Items -> the model's training batch; a FinetuneError travels in the batch (see data.batches)."""

    def __init__(self, preprocess: Callable):
        self.preprocess = preprocess

    def __call__(self, items: Sequence[Any]) -> Any:
        try:
            return self.preprocess(list(items))
        except FinetuneError as exc:
            return {WORKER_ERROR: exc}


def _progress(iterable, label: str, progress: bool | None):
    from ..data.checks import with_progress
    show = sys.stderr.isatty() if progress is None else progress
    return with_progress(iterable, len(iterable), label) if show else iterable


__all__ = ['attach', 'why_not', 'check_feature_cache', 'FeatureCache', 'FeatureStore', 'CacheRefused',
           'DEFAULT_MEMORY_MB', 'CACHE_FOLDER']
