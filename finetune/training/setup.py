"""The Trainer's set-up: every step before the first training step, as methods a subclass can override.

:class:`SetupSteps` is the base of :class:`~finetune.training.Trainer`; :meth:`SetupSteps.setup` runs, in
order: device and precision, a checkpoint to resume (:meth:`~SetupSteps.read_checkpoint`), the model, the data
and its checks, the family's defaults, the loss, the accelerator, the batch sampler and data loader, the
optimizer and schedule, the output folder (:meth:`~SetupSteps.claim_output_dir`: room, the lock, no other run's
checkpoints), model selection, the callbacks' state, the feature cache, and the restore of a resumed run.
"""
from __future__ import annotations

import math
import os
import shutil
import uuid
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch

from ..adapters import has_lora, lora_summary
from ..callbacks import Callback, EvaluationCallback, ProgressBar, check_callbacks
from ..compact import forget_ranges
from ..backbone import batch_to
from ..data import load_data
from ..data.several import SeveralData, load_several
from ..data.split import hold_out
from ..data.batches import Collator, RowsDataset, raise_worker_error, text_lengths
from ..errors import InputError, OptionError
from ..evaluation import check_data_files, side_models
from ..evaluation.evaluate import make_evaluation
from ..files import FolderBusyError, FolderLock
from ..heads import ensure_cosine_classifier
from ..logs import log_function
from ..losses import Loss, build_loss
from ..model import EmbeddingModel, MultiTowerModel, build_model
from ..samplers import SeededBatches, ShardedBatches, SkipBatches
from . import checkpoint as ckpt
from . import several
from .choose import Chooser
from .config import TrainingConfig
from .features import attach as attach_feature_cache
from .engine import is_sharded, make_engine, processes_here, search_unused, wraps_in_ddp
from .gradcache import CachedStep
from .guard import DEVICE_CHECK_EVERY, FiniteWatch, LastGood
from .hardware import loader_settings, resolve_device, resolve_precision, seed_everything
from .sharding import FULL_OPTIMIZER_STATE, FullCopy, check_shardable, load_optimizer_state
from .guide import guide_preprocessors
from .module import TrainingModule
from .optim import make_optimizer, make_scheduler, parameter_groups
from ..prompts import training_preprocessors
from .state import TrainState

#: the learning rate of a family that declares none
FALLBACK_LEARNING_RATE = 1e-4


class SetupSteps:
    """The steps of a :class:`~finetune.training.Trainer` before the first training step, each a method a
    subclass can override: device and precision, a checkpoint to resume, the model, the data and its checks, the
    loss, the batches and their loader, the optimizer and schedule, the accelerator, the output folder."""

    def __init__(self, model, train_data, eval_data=None, config: TrainingConfig | None = None, *,
                 model_options: dict | None = None, callbacks: Sequence[Callback] | None = None,
                 log: Callable[[str], None] | None = None, guard_data=None, test_data=None):
        self.config = config or TrainingConfig()
        self.model_arg, self.train_arg, self.eval_arg, self.guard_arg = model, train_data, eval_data, guard_data
        self.test_arg, self.test_data = test_data, None
        self.model_options = model_options
        self.callbacks = check_callbacks(callbacks)
        # under several processes (torchrun, accelerate launch) the main process alone tells what it does
        self.say = log_function(log) if int(os.environ.get('RANK', '0') or 0) == 0 else _silent
        self.resume_state: dict[str, Any] | None = None
        self.metrics: dict[str, dict] = {}
        #: the id written into each checkpoint and kept folder of this run (a resumed run keeps its checkpoint's)
        self.run_id: str = uuid.uuid4().hex
        #: a resumed run of a checkpoint written before runs had ids owns the id-less checkpoints beside it
        self.owns_unnamed = False
        self.output_lock: FolderLock | None = None
        #: the eval and guard data, read and checked once for every evaluation of the run (see check_data)
        self.evaluations: list[Evaluation] = []

    # ================================================================ setup
    def setup(self) -> None:
        """Everything before the first step; each part is a method of its own."""
        c = self.config
        self.device = resolve_device(c.device)
        if c.resume_from is not None:
            self.resume_state = self.read_checkpoint(c.resume_from)
        self.precision = resolve_precision(self.config.precision, self.device)
        seed_everything(self.config.seed)
        self.model = self.build_model()
        if has_lora(self.model):
            self.say(lora_summary(self.model))
        self.train_data, self.eval_data, self.guard_data = self.load_data()
        self.side_a, self.side_b = side_models(self.model, several.first_part(self.train_data))
        self.check_data()
        self.apply_family_defaults()
        self.loss = self.build_loss()
        self.accelerator = self.make_accelerator()
        self.batch_sampler = self.make_batch_sampler()
        self.loader = self.make_data_loader()
        self.module = TrainingModule(self.model, self.loss, self.train_data.data_kind, self.tower_names())
        self.optimizer = make_optimizer(self.config.optimizer, parameter_groups(
            self.model, self.loss, self.learning_rate, self.config.loss_learning_rate), self.config.optimizer_options,
            (self.model, self.loss))
        self.prepare_engine()
        self.scheduler = make_scheduler(self.config.scheduler, self.optimizer, self.total_steps,
                                        int(self.config.warmup_ratio * self.total_steps))
        self.claim_output_dir()
        self.chooser = Chooser(self)
        self.state = self.make_state()
        self.feature_cache = attach_feature_cache(self)  # frozen backbone: features computed once, or None
        if self.resume_state is not None:
            self.restore(self.resume_state)

    def read_checkpoint(self, path: str) -> dict[str, Any]:
        """The trainer state of the checkpoint at `path`, with this run's config merged with the saved one."""
        directory = ckpt.find_checkpoint(path)
        state = ckpt.read_trainer_state(directory)
        state['directory'] = directory
        self.config, self.resume_differences = self.config.for_resume(state['config'])
        saved_id = ckpt.run_id_of(directory)  # as the checkpoints beside it are judged: from its JSON config
        self.run_id = saved_id or self.run_id
        self.owns_unnamed = saved_id is None
        if 'output_dir' not in self.config.explicit:  # never a path read from the file: beside the checkpoint
            self.config = replace(self.config, output_dir=os.path.dirname(os.path.abspath(directory)))
        return state

    def is_ours(self, run_id: str | None) -> bool:
        """Whether a checkpoint or kept folder with `run_id` was written by this run (or the run it resumes)."""
        return run_id == self.run_id or (run_id is None and self.owns_unnamed)

    def claim_output_dir(self) -> None:
        """Before the first step, with an output_dir: room for a checkpoint, the folder locked for this run alone
        (the main process holds ``.finetune.lock``), its ``model`` folder replaceable, and no other run's
        checkpoints in it (removed only with ``overwrite_output_dir=True``). Raises OptionError."""
        from ..artifacts import check_replaceable
        from ..errors import ArtifactError
        c = self.config
        if c.output_dir is None:
            return
        ckpt.check_output_dir(c.output_dir, ckpt.checkpoint_bytes(self.module))
        if self.accelerator.is_main_process:
            lock = FolderLock(c.output_dir, f'output_dir={c.output_dir!r}')
            try:
                self.output_lock = lock.acquire()
            except FolderBusyError as exc:
                raise OptionError(str(exc)) from None
            if lock.took_over:
                self.say(f'output_dir: took over the lock of process {lock.took_over.get("pid")} (ended without '
                         f'releasing it)')
        model_dir = os.path.join(c.output_dir, 'model')
        try:
            check_replaceable(model_dir)
        except ArtifactError:
            raise OptionError(f'output_dir={c.output_dir!r}: {model_dir!r} exists and is not a saved finetune model; '
                              f'fit writes its final model there, which would replace everything in it. Choose '
                              f'another output_dir, or move that folder away.') from None
        foreign = ckpt.foreign_checkpoints(c.output_dir, self.is_ours)
        if foreign and not c.overwrite_output_dir:
            names = ', '.join(os.path.basename(p) for p in foreign)
            raise OptionError(f'output_dir={c.output_dir!r} holds checkpoints of another run ({names}): this run\'s '
                              f'checkpoints would be mixed with them, and resume_from={c.output_dir!r} could pick up '
                              f'that run. Choose another output_dir, resume that run with '
                              f'resume_from={c.output_dir!r}, or pass overwrite_output_dir=True to remove them.')
        if foreign and self.accelerator.is_main_process:
            for path in foreign:
                shutil.rmtree(path, ignore_errors=True)
            self.say(f'overwrite_output_dir: removed {len(foreign)} checkpoint(s) of another run from '
                     f'{c.output_dir}')
        self.accelerator.wait_for_everyone()

    def release_output_dir(self) -> None:
        """Give back the output_dir's lock (at the end of a run, however it ends)."""
        if self.output_lock is not None:
            self.output_lock.release()
            self.output_lock = None

    def build_model(self):
        """The model to train: rebuilt from the checkpoint, built from a registry name, or the one given."""
        if self.resume_state is not None:
            from ..artifacts import load
            options = dict(self.model_options or {})
            trust = options.pop('trust_remote_code', False)
            if options:
                raise OptionError(f'model_options: a resumed run rebuilds the saved model as it was; only '
                                  f'trust_remote_code may be given (the saved files never turn it on), not '
                                  f'{", ".join(sorted(options))}.')
            model = load(self.resume_state['directory'], trust_remote_code=trust)
            self.check_resumed_model(model)
            return model
        model = self.model_arg
        if isinstance(model, str):
            return build_model(model, self.model_options)
        if self.model_options is not None:
            raise OptionError('model_options: the model is already built; pass model_options to build_model, or '
                              'give fit() the model name.')
        if not isinstance(model, (EmbeddingModel, MultiTowerModel)):
            raise OptionError(f'model: expected a model name or a finetune model, got {type(model).__name__}.')
        return model

    def check_resumed_model(self, model) -> None:
        """OptionError when fit() was given a model other than the one the checkpoint trains (a resumed run
        continues the checkpoint's own model; the one given would be silently ignored)."""
        given = self.model_arg if isinstance(self.model_arg, str) else getattr(self.model_arg, 'name', None)
        saved = (getattr(model, 'artifact_config', None) or {}).get('original_name', model.name)
        if given is None or _canonical_name(given) == _canonical_name(saved):
            return
        raise OptionError(f'model={given!r} with resume_from={self.resume_state["directory"]!r}: the checkpoint '
                          f'trains {saved!r}, and a resumed run continues the checkpoint\'s own model. Pass model=None '
                          f'(or {saved!r}) to resume it, or leave resume_from out to start a new fit of {given!r}.')

    def load_data(self):
        """The training, evaluation and guard data, their kind detected (or ``data_kind``), described in one line;
        the test data in ``self.test_data``. Without eval data, a validation share of the training rows is held
        out to choose the model (``validation_split``), where it is wanted and there are enough rows."""
        c, kind = self.config, self.config.data_kind
        train = load_several(self.train_arg, 'train_data', load_data, kind)  # a dict: several datasets
        evaluation = load_several(self.eval_arg, 'eval_data', load_data, kind) if self.eval_arg is not None else None
        guard = load_data(self.guard_arg, 'guard_data') if self.guard_arg is not None else None
        self.test_data = load_several(self.test_arg, 'test_data', load_data, kind) if self.test_arg is not None \
            else None
        self.validation_rows = 0
        if evaluation is None and (c.select_best or c.wise_ft is not None):
            train, evaluation = several.hold_out_each(self, train) if isinstance(train, SeveralData) else \
                self.hold_out_validation(train)
        if guard is not None and evaluation is None:
            raise OptionError('guard_data needs eval_data (or a validation_split): the guard shows what a model '
                              'chosen on them costs elsewhere.')
        self.say(f'train data: {train.describe()}' + (f'; eval data: {evaluation.describe()}' if evaluation else '')
                 + (f'; guard data: {guard.describe()}' if guard else '')
                 + (f'; test data: {self.test_data.describe()}' if self.test_data else ''))
        if self.resume_state is not None:
            self.check_resume_fits(train)
        return train, evaluation, guard

    def hold_out_validation(self, train):
        """(training rows, validation rows or None): ``validation_split`` of `train` held out to choose the model
        (see :func:`~finetune.data.split.hold_out`); a resumed run holds out what its checkpoint's run did."""
        c = self.config
        share, explicit = c.validation_split, 'validation_split' in c.explicit
        if self.resume_state is not None:  # the same rows as the run resumed (none, before runs held rows out)
            share, explicit = (share if self.resume_state.get('validation_rows') else 0), True
        rest, validation, said = hold_out(train, share, explicit, c.seed)
        if said:
            self.say(said)
        self.validation_rows = 0 if validation is None else len(validation)
        return rest, validation

    def check_resume_fits(self, train) -> None:
        """OptionError listing every setting (and the data size) that differs from the checkpoint's."""
        differences = list(self.resume_differences)
        saved_size = self.resume_state.get('data_size')
        if saved_size is not None and saved_size != len(train):
            differences.append(f'train_data: {len(train):,} rows, checkpoint {saved_size:,}')
        elif isinstance(self.resume_state.get('data_fingerprints'), torch.Tensor):
            rows = ckpt.differing_rows(self.resume_state['data_fingerprints'], self.data_fingerprints(train))
            if rows:
                shown = ', '.join(str(r) for r in rows[:5]) + (', ...' if len(rows) > 5 else '')
                differences.append(f'train_data: as many rows as the checkpoint\'s, but {len(rows):,} of them differ '
                                   f'(rows {shown}, counted from 0)')
        if differences:
            raise OptionError(f'resume_from={self.resume_state["directory"]!r}: these settings differ from the '
                              f'checkpoint\'s:\n  ' + '\n  '.join(differences) + '\nLeave an argument out to use '
                              'the saved value; to train on with other settings, start a new fit from the model: '
                              'fit(finetune.load(...), ...).')

    def data_fingerprints(self, train=None) -> torch.Tensor:
        """One hash per training row (computed once): a checkpoint keeps them, a resumed run compares them."""
        if getattr(self, '_fingerprints', None) is None:
            self._fingerprints = ckpt.row_fingerprints(train if train is not None else self.train_data)
        return self._fingerprints

    def check_data(self) -> None:
        """Before any work: every file the data names is checked, evaluation data must be measurable, and a
        batch must fit in the training data. The eval and guard data, so checked, are kept as
        ``self.evaluations`` (:class:`~finetune.evaluation.Evaluation`): every evaluation of the run reuses them."""
        if isinstance(self.train_data, SeveralData):
            several.check_parts(self)
        else:
            check_data_files(self.model, self.train_data, 'train_data', self.config.progress)
        self.evaluations = [make_evaluation(self.model, data, name, progress=self.config.progress) for data, name
                            in ((self.eval_data, 'eval_data'), (self.guard_data, 'guard_data'),
                                (self.test_data, 'test_data')) if data is not None]
        if self.config.batch_size > len(self.train_data):
            raise InputError(f'batch_size={self.config.batch_size} is larger than the training data '
                             f'({len(self.train_data)} rows); use batch_size <= {len(self.train_data)}.')

    def apply_family_defaults(self) -> None:
        """The family's preferences where the caller left the choice open: precision and learning rate."""
        family = self.side_a.backbone
        if self.config.precision == 'auto' and self.precision != 'fp32' and family.prefers_fp32:
            self.precision = 'fp32'
            self.say(f"precision fp32: {self.side_a.name!r} trains in fp32 under precision='auto' (pass "
                     f"precision='bf16' to override)")
        rate = self.config.learning_rate
        if rate is None:
            declared = [m.backbone.default_learning_rate for m in _towers(self.model)]
            declared = [r for r in declared if r is not None]
            rate = min(declared) if declared else FALLBACK_LEARNING_RATE
        self.learning_rate = float(rate)

    def build_loss(self) -> Loss:
        """The loss for the data kind (the family's default for it, else the kind's), its options validated;
        a classifier loss gets its cosine head added to the model. Several datasets: one loss each."""
        if isinstance(self.train_data, SeveralData):
            return several.build_losses(self)
        kind, family = self.train_data.data_kind, self.side_a.backbone
        name = self.config.loss
        if isinstance(name, dict):
            raise OptionError(f'loss: a dict of losses ({", ".join(map(repr, name))}) names datasets, but train_data '
                              f'is one dataset; give one loss name, or train_data as a dict of named datasets.')
        if name is None:
            name = family.default_losses.get(kind.name) or kind.default_loss
            if kind.name in family.default_losses:
                self.say(f'loss {name}: the default of {self.side_a.name!r} for {kind.name} data')
        num_classes = len(self.train_data.label_names) if kind.name == 'labeled' else None
        loss = build_loss(name, self.config.loss_options, kind.name, num_classes=num_classes,
                          embedding_dim=self.model.output_dim)
        if getattr(loss, 'needs_classifier_head', False):
            ensure_cosine_classifier(self.model, num_classes, self.say)
        return loss

    def make_batch_sampler(self):
        """The data kind's batch sampler (class-balanced for labeled data, no duplicates for pairs, ...)."""
        c = self.config
        if isinstance(self.train_data, SeveralData):
            return several.batch_sampler(self)
        sampler = self.train_data.data_kind.batch_sampler(self.train_data, c.batch_size, c.seed,
                                                          c.num_items_per_class)
        lengths = text_lengths(self.train_data) if c.group_by_length is not False else None
        if lengths is not None and hasattr(sampler, 'group_by_length'):
            sampler.group_by_length(lengths)
            self.say('batches of texts of similar length (group_by_length=False turns it off)')
        elif c.group_by_length is True:
            self.say(f'group_by_length: {self.train_data.kind} data of {"/".join(self.train_data.modalities)} '
                     f'is not grouped by length (it applies to text rows batched without duplicates)')
        return sampler

    def make_data_loader(self) -> torch.utils.data.DataLoader:
        """A DataLoader whose workers tokenize and decode the batches, their number and pinned memory chosen for
        the device (:func:`~finetune.training.hardware.loader_settings`: on a CPU none for text data, on CUDA
        always some, and pinned batches); under several processes each takes every N-th batch. Each batch carries
        the seed of its random views (:class:`~finetune.sampling.wrappers.SeededBatches`) and the loader draws from a
        generator of its own, so no number of workers changes what a run, or a resumed one, trains on."""
        workers, pin = loader_settings(self.device, self.train_data.modalities, self.config.num_workers,
                                       processes_here())
        if workers > 0:  # what the family's preprocessing needs to run in forked workers
            for tower in _towers(self.model):
                for name, value in tower.backbone.worker_environment.items():
                    os.environ.setdefault(name, value)
        acc = self.accelerator
        seeded = SeededBatches(self.batch_sampler, self.config.seed)
        shard = ShardedBatches(seeded, acc.num_processes, acc.process_index) if acc.num_processes > 1 else seeded
        self.skipper = batches = SkipBatches(shard)  # a resumed epoch skips each process's own done batches
        rows = RowsDataset(self.train_data)
        loader = torch.utils.data.DataLoader(
            rows, batch_sampler=batches, num_workers=workers, persistent_workers=workers > 0, pin_memory=pin,
            generator=torch.Generator().manual_seed(self.config.seed),
            collate_fn=several.collator(self) if isinstance(self.train_data, SeveralData) else
            Collator(self.train_data.data_kind, *training_preprocessors(self.side_a, self.side_b), rows.where,
                     guide=guide_preprocessors(self.loss, self.train_data)))  # prompts; a loss's guide model
        if len(self.batch_sampler) == 0:
            raise InputError(f'train_data gives no full batch of {self.config.batch_size}; lower batch_size.')
        return loader

    def tower_names(self) -> dict[str, str] | list[dict[str, str]]:
        """The tower that embeds each side of a batch, for a multi-tower model (per dataset, of several)."""
        if not isinstance(self.model, MultiTowerModel):
            return {}
        if isinstance(self.train_data, SeveralData):
            return several.tower_names(self)
        names = {id(m): t for t, m in self.model.towers.items()}
        out = {'a': names[id(self.side_a)]}
        if self.side_b is not None:
            out['b'] = names[id(self.side_b)]
        return out

    def make_accelerator(self):
        """The accelerate engine (:func:`~finetune.training.engine.make_engine`): this run's device, cuda:N
        included, autocast at its precision (fp16 with a loss scaler), DistributedDataParallel under a launch."""
        return make_engine(self.device, self.precision)

    def prepare_engine(self) -> None:
        """The module and the optimizer handed to the accelerator (DistributedDataParallel told whether to search
        for unused parameters; under FSDP a full copy kept for evaluation and files); steps counted; the guard."""
        acc = self.accelerator
        chunk = getattr(self.loss, 'mini_batch_size', None)
        sharded = is_sharded(acc)
        if sharded:
            check_shardable(self.loss)
        self.full_copy = FullCopy(self.module, acc.device if acc.is_main_process else 'cpu') if sharded else None
        for evaluation in self.evaluations if sharded else ():  # evaluated on the copy, not on the shards
            evaluation.use(self.full_copy.model)
        if wraps_in_ddp(acc) and chunk is None:  # GradCache's passes run outside DistributedDataParallel
            acc.ddp_handler.find_unused_parameters = self.decide_unused_parameters()
        self.module, self.optimizer = acc.prepare(self.module, self.optimizer)
        self.batches_per_epoch = math.ceil(len(self.batch_sampler) / acc.num_processes)
        accumulation = self.config.gradient_accumulation_steps
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / accumulation)
        self.total_steps = self.steps_per_epoch * self.config.epochs
        #: the TrainingModule that trains (sharded under FSDP); ``unwrapped``: the model evaluated and saved
        self.training_module = acc.unwrap_model(self.module)
        self.unwrapped = self.full_copy.model if sharded else self.training_module.model
        forget_ranges(self.unwrapped)  # int8 ranges calibrated on the weights before training no longer fit them
        self.guard = LastGood(self.module if sharded else self.training_module)
        every = self.finite_check_every or (1 if acc.device.type == 'cpu' else DEVICE_CHECK_EVERY)
        self.watch = FiniteWatch(acc, every)
        self.window = accumulation  # micro-batches in the current accumulation window (fewer at an epoch's end)
        self.cached_step = None if chunk is None else CachedStep(
            self.training_module, chunk, acc.autocast, lambda v: acc.backward(v / self.window))
        self.say(f'device {acc.device}, precision {self.precision}, {acc.num_processes} process(es)'
                 f'{" sharded (FSDP)" if sharded else ""}, {self.steps_per_epoch} steps per epoch, loss '
                 f'{self.loss.name}')

    #: DistributedDataParallel's search, every step, for parameters a step leaves without a gradient: None decides
    #: it by a trial step on the first batch (see :mod:`~finetune.training.engine`); True / False force it
    find_unused_parameters: bool | None = None
    #: optimizer steps between two reads of the finiteness flags: None is every step on a CPU and
    #: :data:`~finetune.training.guard.DEVICE_CHECK_EVERY` on an accelerator (see
    #: :class:`~finetune.training.guard.FiniteWatch`)
    finite_check_every: int | None = None

    def decide_unused_parameters(self) -> bool:
        """Whether DistributedDataParallel must search for unused parameters (:attr:`find_unused_parameters`,
        else a trial forward and backward of the first batch; the same answer on every process)."""
        if self.find_unused_parameters is not None:
            return bool(self.find_unused_parameters)
        if isinstance(self.train_data, SeveralData):  # a batch of one dataset leaves the others' losses unused
            return True
        device = self.accelerator.device
        unused = search_unused(self.module.to(device), batch_to(self.first_batch(), device), self.accelerator)
        if unused:
            self.say(f'DistributedDataParallel searches every step for unused parameters: a trial step leaves '
                     f'{len(unused)} without a gradient (e.g. {unused[0]})')
        return bool(unused)

    def first_batch(self) -> dict[str, Any]:
        """The first batch of the first epoch, collated here (no worker started); raises what collating raises."""
        indices = next(iter(self.batch_sampler))
        batch = self.loader.collate_fn([self.loader.dataset[i] for i in indices])
        raise_worker_error(batch)
        return batch

    def make_state(self) -> TrainState:
        """The TrainState callbacks see, and the callbacks of this run (evaluation, progress bar)."""
        state = TrainState(epochs=self.config.epochs, total_steps=self.total_steps,
                           is_main_process=self.accelerator.is_main_process, _log=self.say)
        state._checkpoint = self._checkpoint_to
        if self.eval_data is not None and self.config.eval_every:
            self.callbacks.append(EvaluationCallback(every_n_steps=self.config.eval_every, each_epoch=False))
        elif self.chooser.active and self.config.select_best:  # every epoch's model is a candidate
            self.callbacks.append(EvaluationCallback(each_epoch=True))
        self.callbacks.append(ProgressBar(self.config.progress))
        return state

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint: optimizer, schedule, position, metrics so far. Raises OptionError for a
        checkpoint written without FSDP resumed under it (its optimizer state is keyed by position)."""
        if saved.get('optimizer_layout') == FULL_OPTIMIZER_STATE:
            load_optimizer_state(self.module, self.optimizer, saved['optimizer'])
        elif is_sharded(self.accelerator):
            raise OptionError(f'resume_from={saved["directory"]!r}: this checkpoint was written without FSDP, and '
                              f'its optimizer state cannot be sharded; resume it the way it was launched.')
        else:
            self.optimizer.load_state_dict(saved['optimizer'])
        if saved.get('loss_state') and self.full_copy is None:  # learned temperatures, class weights of the loss
            self.training_module.loss.load_state_dict(saved['loss_state'])
        self.scheduler.load_state_dict(saved['scheduler'])
        self.state.epoch = int(saved['epoch'])
        self.state.batches_done = int(saved['batches_done'])
        self.state.step = int(saved.get('step', self.state.epoch * self.steps_per_epoch))
        self.state.history = list(saved.get('history', []))
        if saved.get('metrics_before'):
            self.metrics['before'] = dict(saved['metrics_before'])
        where = f'epoch {self.state.epoch + 1}' + (f', batch {self.state.batches_done + 1}'
                                                    if self.state.batches_done else '')
        self.say(f'resuming from {saved["directory"]} at {where} (step {self.state.step})')


def _silent(message: str) -> None:
    """The log of a process other than the main one: its lines would repeat the main process's."""


def _canonical_name(name: str) -> str:
    """The registry's own name for `name` (an alias such as 'resnet-base' and the name it stands for compare
    equal); `name` as it is when the registry does not know it."""
    from ..registry import REGISTRY
    try:
        return REGISTRY.get(name).name
    except Exception:  # noqa: BLE001 - an unknown or path name compares as written
        return name


def _towers(model) -> list[EmbeddingModel]:
    return list(model.towers.values()) if isinstance(model, MultiTowerModel) else [model]
