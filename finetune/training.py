"""The fit loop, on Hugging Face ``accelerate`` for devices, mixed precision, gradient accumulation and
multi-process data parallel (``accelerate launch`` / ``torchrun``; gloo on CPUs).

Why accelerate: it is the thinnest engine that does all four without owning the loop, so the loop here
stays a plain PyTorch loop that a user can read, and its per-step cost stays near a bare loop's.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .callbacks import Callback, EvaluationCallback, ProgressBar
from .data import TrainingData, load_data
from .errors import FinetuneError, InputError, OptionError, did_you_mean
from .heads import COSINE_CLASSIFIER, CosineClassifier
from .losses import CLIPLoss, InfoNCELoss, Loss, LossInputs, build_loss, default_loss
from .model import EmbeddingModel, MultiTowerModel, build_model
from .samplers import ClassBalancedBatchSampler, NoDuplicatesBatchSampler

PRECISIONS = ('auto', 'bf16', 'fp16', 'fp32')
OPTIMIZERS = {'adamw': torch.optim.AdamW, 'adam': torch.optim.Adam, 'sgd': torch.optim.SGD,
              'rmsprop': torch.optim.RMSprop}
SCHEDULERS = ('linear', 'cosine', 'constant')


class TrainingError(FinetuneError):
    """Training could not go on (NaN loss, ...); the message says what was kept."""


# ---------------------------------------------------------------- hardware
def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 math (AMX or AVX-512 BF16), where autocast pays off."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = f.read()
    except OSError:
        return False
    return 'amx_bf16' in flags or 'avx512_bf16' in flags


def resolve_device(device: str) -> str:
    if not isinstance(device, str):
        raise OptionError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise OptionError(f"device={device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'.")
        return device
    if device != 'cpu':
        raise OptionError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """'bf16', 'fp16' or 'fp32' for `precision` on `device` ('auto': bf16 where the hardware has it)."""
    if precision not in PRECISIONS:
        raise OptionError(f'precision: expected one of {", ".join(PRECISIONS)}, got {precision!r}.'
                          f'{did_you_mean(str(precision), PRECISIONS)}')
    if precision != 'auto':
        return precision
    if device.startswith('cuda'):
        return 'bf16' if torch.cuda.is_bf16_supported() else 'fp32'
    return 'bf16' if cpu_supports_bf16() else 'fp32'


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- batches
class RowsDataset(torch.utils.data.Dataset):
    """Row i of TrainingData as a tuple: (item, group) | (a, b, group) | (a, b, score)."""

    def __init__(self, data: TrainingData):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        d = self.data
        if d.kind == 'labeled':
            return d.a[i], d.groups[i]
        if d.kind == 'scored':
            return d.a[i], d.b[i], d.scores[i]
        return d.a[i], d.b[i], d.groups[i]


class Collator:
    """Rows -> model inputs; runs in DataLoader workers, so tokenization and decoding leave the loop."""

    def __init__(self, kind: str, preprocess_a: Callable, preprocess_b: Callable | None):
        self.kind, self.preprocess_a, self.preprocess_b = kind, preprocess_a, preprocess_b

    def __call__(self, rows: Sequence[tuple]) -> dict[str, Any]:
        if self.kind == 'labeled':
            items, groups = zip(*rows)
            return {'a': self.preprocess_a(list(items)), 'groups': torch.tensor(groups, dtype=torch.long)}
        a, b, third = zip(*rows)
        batch = {'a': self.preprocess_a(list(a)), 'b': self.preprocess_b(list(b))}
        if self.kind == 'scored':
            batch['scores'] = torch.tensor(third, dtype=torch.float32)
        else:
            batch['groups'] = torch.tensor(third, dtype=torch.long)
        return batch


def _side_models(model, data: TrainingData) -> tuple[EmbeddingModel, EmbeddingModel | None]:
    """The (tower) model that embeds each side of the data; InputError when a side does not fit."""
    modalities = data.modalities
    if isinstance(model, MultiTowerModel):
        by_modality = {m.modality: m for m in model.towers.values()}
        sides = []
        for side, modality in zip(('first', 'second'), modalities):
            if modality not in by_modality:
                raise InputError(f'{data.source}: the {side} column holds {modality} items but {model.name!r} '
                                 f'has towers for {", ".join(by_modality)}.')
            sides.append(by_modality[modality])
        return sides[0], (sides[1] if len(sides) > 1 else None)
    for side, modality in zip(('first', 'second'), modalities):
        if modality != 'other' and modality != model.modality:
            raise InputError(f'{data.source}: the {side} column holds {modality} items but {model.name!r} is a '
                             f'{model.modality} model. ' + ('Use a CLIP model (e.g. clip-base-en) for text-image '
                                                            'data.' if data.kind == 'text-image' else ''))
    return model, (model if data.b is not None else None)


# ---------------------------------------------------------------- state and run
@dataclass
class TrainState:
    """What callbacks see: progress, the last loss, and hooks back into the loop."""

    epochs: int
    total_steps: int
    epoch: int = 0
    step: int = 0
    last_loss: float | None = None
    learning_rate: float = 0.0
    samples_per_second: float = 0.0
    should_stop: bool = False
    is_main_process: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)
    _evaluate: Callable[[], dict] | None = None
    _checkpoint: Callable[[str, dict], None] | None = None
    _log: Callable[[str], None] = print
    _eval_requested: bool = False

    def request_evaluation(self) -> None:
        self._eval_requested = True

    def save_checkpoint(self, directory: str, metrics: dict | None = None) -> None:
        if self._checkpoint is not None:
            self._checkpoint(directory, metrics or {})

    def log(self, message: str) -> None:
        self._log(message)


class Run:
    """The result of :func:`fit`: the trained ``model``, ``metrics`` {'before', 'after'}, the ``history``."""

    def __init__(self, model, metrics: dict[str, dict], history: list[dict], data_description: str, config: dict):
        self.model, self.metrics, self.history = model, metrics, history
        self.data_description, self.config = data_description, config

    def save(self, directory: str) -> str:
        """Write the fine-tuned model (safetensors + JSON config with the metrics); returns the path."""
        from .artifacts import save_model
        return save_model(self.model, directory, metrics=self.metrics, extra={'training': self.config})

    def __repr__(self) -> str:
        return f'Run(model={self.model.name!r}, metrics={list(self.metrics)})'


# ---------------------------------------------------------------- evaluation
def _unique(items: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """Distinct items (first occurrence order) and, for each input, the index of its distinct item."""
    index: dict[Any, int] = {}
    distinct: list[Any] = []
    where = []
    for item in items:
        key = item if isinstance(item, (str, int, float, tuple)) else id(item)
        if key not in index:
            index[key] = len(distinct)
            distinct.append(item)
        where.append(index[key])
    return distinct, where


def evaluate(model, data, batch_size: int = 64, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Retrieval metrics of `model` on `data` (any source :func:`finetune.data.load_data` reads).

    Labeled data: each item queries all others (itself excluded); pairs / text-image: each distinct query
    ranks the distinct docs, its paired docs being relevant; scored pairs: Spearman and Pearson correlation
    of cosine similarity with the score. Raises InputError for data the model cannot embed.
    """
    from .evaluation import labeled_retrieval_metrics, retrieval_metrics
    data = load_data(data, 'eval_data')
    side_a, side_b = _side_models(model, data)
    if data.kind == 'labeled':
        emb = side_a.encode(data.a, batch_size=batch_size)
        return labeled_retrieval_metrics(emb, data.groups, ks=ks)
    if data.kind == 'scored':
        a = side_a.encode(data.a, batch_size=batch_size)
        b = side_b.encode(data.b, batch_size=batch_size)
        cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        scores = np.asarray(data.scores)
        rank = lambda x: np.argsort(np.argsort(x)).astype(np.float64)  # noqa: E731
        return {'spearman': float(np.corrcoef(rank(cos), rank(scores))[0, 1]),
                'pearson': float(np.corrcoef(cos, scores)[0, 1]), 'num_pairs': len(scores)}
    queries, query_of = _unique(data.a)
    docs, doc_of = _unique(data.b)
    relevant: list[set[int]] = [set() for _ in queries]
    for q, d in zip(query_of, doc_of):
        relevant[q].add(d)
    q_emb = side_a.encode(queries, batch_size=batch_size)
    d_emb = side_b.encode(docs, batch_size=batch_size)
    return retrieval_metrics(q_emb, d_emb, relevant, ks=ks)


# ---------------------------------------------------------------- the module that DDP wraps
def _pairs_within(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) of items with the same label: consecutive members of each label, disjoint."""
    order = torch.sort(labels, stable=True).indices
    sorted_labels = labels[order]
    n = labels.numel()
    starts = torch.ones(n, dtype=torch.bool, device=labels.device)
    starts[1:] = sorted_labels[1:] != sorted_labels[:-1]
    group_start = torch.cummax(torch.where(starts, torch.arange(n, device=labels.device), 0), dim=0).values
    rank = torch.arange(n, device=labels.device) - group_start
    first = (rank % 2 == 0)
    first[-1] = False
    first &= torch.cat([sorted_labels[1:] == sorted_labels[:-1], sorted_labels.new_zeros(1, dtype=torch.bool)])
    i = order[first.nonzero().squeeze(1)]
    j = order[first.nonzero().squeeze(1) + 1]
    return i, j


class TrainingModule(nn.Module):
    """Model + loss in one module, so one forward per step computes the loss (what DDP needs)."""

    def __init__(self, model, loss: Loss, kind: str, tower_a: str | None, tower_b: str | None):
        super().__init__()
        self.model, self.loss, self.kind = model, loss, kind
        self.tower_a, self.tower_b = tower_a, tower_b
        # in-batch contrastive losses take (anchor, positive) rows: pair up items of one class
        self.pair_labeled = kind == 'labeled' and isinstance(loss, (InfoNCELoss, CLIPLoss))

    def _embed(self, x, tower: str | None, logits: bool = False):
        if tower is not None:
            return self.model(x, tower=tower, return_logits=logits)
        return self.model(x, return_logits=logits)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        needs_logits = getattr(self.loss, 'needs_classifier_head', False)
        inputs = LossInputs(embeddings=None, anchors=None, positives=None, labels=batch.get('groups'),
                            scores=batch.get('scores'), logits=None,
                            logit_scale=getattr(self.model, 'logit_scale', None))
        if self.kind == 'labeled':
            out = self._embed(batch['a'], self.tower_a, logits=needs_logits)
            emb, inputs.logits = out if needs_logits else (out, None)
            if self.pair_labeled:
                i, j = _pairs_within(inputs.labels)
                inputs.anchors, inputs.positives, inputs.labels = emb[i], emb[j], inputs.labels[i]
            else:
                inputs.embeddings = emb
        else:
            inputs.anchors = self._embed(batch['a'], self.tower_a)
            inputs.positives = self._embed(batch['b'], self.tower_b)
        return self.loss(inputs)


# ---------------------------------------------------------------- fit
DEFAULT_LEARNING_RATES = {'text': 3e-5, 'image': 1e-4, 'text+image': 1e-5, 'mesh': 1e-3}


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(f'{name}: expected an integer >= {minimum}, got {value!r}.')
    return value


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise OptionError(f'{name}: expected a positive number, got {value!r}.')
    return float(value)


def _make_optimizer(name: str, groups: list[dict], options: dict | None) -> torch.optim.Optimizer:
    import inspect
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise OptionError(f'optimizer: unknown {name!r}.{did_you_mean(str(name), OPTIMIZERS)} '
                          f'Available: {", ".join(OPTIMIZERS)}.')
    cls = OPTIMIZERS[key]
    options = dict(options or {})
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ('self', 'params', 'lr')]
    for k in options:
        if k not in valid:
            raise OptionError(f'optimizer_options for {name}: unknown key {k!r}.{did_you_mean(k, valid)} '
                              f'Valid keys: {", ".join(valid)}.')
    return cls(groups, **options)


def _make_scheduler(name: str, optimizer, total_steps: int, warmup_steps: int):
    if name not in SCHEDULERS:
        raise OptionError(f'scheduler: expected one of {", ".join(SCHEDULERS)}, got {name!r}.'
                          f'{did_you_mean(str(name), SCHEDULERS)}')

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if name == 'constant':
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if name == 'linear':
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _batch_sampler(data: TrainingData, batch_size: int, items_per_class: int, seed: int):
    if data.kind == 'labeled':
        return ClassBalancedBatchSampler(data.groups, batch_size, items_per_class=items_per_class, seed=seed)
    if data.kind == 'scored':
        return _ShuffledBatches(len(data), batch_size, seed)
    keys = [(('a', _key(x)), ('b', _key(y))) for x, y in zip(data.a, data.b)]
    return NoDuplicatesBatchSampler(keys, batch_size, seed=seed)


def _key(item: Any) -> Any:
    return item if isinstance(item, (str, int, float)) else id(item)


class _ShuffledBatches(torch.utils.data.Sampler):
    """Shuffled index batches, reproducible per seed and epoch."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        for start in range(0, self.n - self.batch_size + 1, self.batch_size):
            yield order[start:start + self.batch_size]

    def __len__(self) -> int:
        return self.n // self.batch_size


def _tower_names(model, side_a, side_b) -> tuple[str | None, str | None]:
    if not isinstance(model, MultiTowerModel):
        return None, None
    names = {id(m): t for t, m in model.towers.items()}
    return names[id(side_a)], (names[id(side_b)] if side_b is not None else None)


def _ensure_classifier(model, num_classes: int, log: Callable[[str], None]) -> None:
    """Give `model` a cosine classifier of `num_classes` rows (recognite's recipe) if it lacks one."""
    if isinstance(model, MultiTowerModel):
        raise OptionError('this loss trains through a classifier head, which a multi-tower (CLIP) model has '
                          'not; use CLIPLoss or InfoNCE.')
    current = model.classifier
    if current is not None and current.weight.shape[0] == num_classes:
        return
    model.classifier = CosineClassifier(model.output_dim, num_classes,
                                        scale=model.options['head_options'].get('scale', 16.0))
    model.options = dict(model.options, head=COSINE_CLASSIFIER,
                         head_options=dict(model.options['head_options'], num_classes=num_classes,
                                           scale=model.classifier.scale))
    log(f'added a cosine classifier head with {num_classes} classes for the loss')


def fit(model, train_data, eval_data=None, *, model_options: dict | None = None, loss: str | None = None,
        loss_options: dict | None = None, epochs: int = 1, batch_size: int = 32,
        learning_rate: float | None = None, loss_learning_rate: float = 1e-3, optimizer: str = 'AdamW',
        optimizer_options: dict | None = None, scheduler: str = 'linear', warmup_ratio: float = 0.1,
        max_grad_norm: float | None = 1.0, gradient_accumulation_steps: int = 1, device: str = 'auto',
        precision: str = 'auto', num_workers: int | None = None, seed: int = 42, num_items_per_class: int = 4,
        callbacks: Sequence[Callback] | None = None, eval_every: int | None = None, data_kind: str | None = None,
        output_dir: str | None = None, resume_from: str | None = None, progress: bool | None = None,
        ks: Sequence[int] = (1, 5, 10), log: Callable[[str], None] | None = None) -> Run:
    """Fine-tune `model` (a registry name, or a model from :func:`build_model`) on `train_data`.

    Batches are tokenized / decoded in `num_workers` DataLoader processes (default: half the CPU cores,
    1 to 4). Retrieval metrics on `eval_data` are computed before and after training (``run.metrics``). Returns a
    :class:`Run`. Raises InputError for data that cannot be read or does not fit the model, OptionError
    for bad settings, TrainingError when the loss becomes NaN (the last good model is kept).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs

    say = log or print
    epochs = _positive_int('epochs', epochs)
    batch_size = _positive_int('batch_size', batch_size, minimum=2)
    gradient_accumulation_steps = _positive_int('gradient_accumulation_steps', gradient_accumulation_steps)
    num_items_per_class = _positive_int('num_items_per_class', num_items_per_class, minimum=2)
    if num_workers is None:  # tokenization and image decoding leave the training loop for a worker process
        num_workers = max(1, min(4, (os.cpu_count() or 2) // 2))
    _positive_int('num_workers', num_workers, minimum=0)
    if num_workers > 0:  # tokenizers' own threads do not survive the fork into workers
        os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    if not 0 <= warmup_ratio < 1:
        raise OptionError(f'warmup_ratio: expected a number in [0, 1), got {warmup_ratio!r}.')
    device = resolve_device(device)
    mixed = resolve_precision(precision, device)
    seed_everything(seed)

    resume_state = None
    if resume_from is not None:
        from .artifacts import load
        model = load(resume_from)
        resume_state = _read_trainer_state(resume_from)
    elif isinstance(model, str):
        model = build_model(model, model_options)
    elif model_options is not None:
        raise OptionError('model_options: the model is already built; pass model_options to build_model, or '
                          'give fit() the model name.')
    if not isinstance(model, (EmbeddingModel, MultiTowerModel)):
        raise OptionError(f'model: expected a model name or a finetune model, got {type(model).__name__}.')

    train = load_data(train_data, 'train_data', kind=data_kind)
    evaluation = load_data(eval_data, 'eval_data', kind=data_kind) if eval_data is not None else None
    say(f'train data: {train.describe()}' + (f'; eval data: {evaluation.describe()}' if evaluation else ''))
    side_a, side_b = _side_models(model, train)
    if batch_size > len(train):
        raise InputError(f'batch_size={batch_size} is larger than the training data ({len(train)} rows); '
                         f'use batch_size <= {len(train)}.')

    family = side_a.backbone  # the family's own defaults, where it has them
    if precision == 'auto' and mixed != 'fp32' and family.prefers_fp32:
        mixed = 'fp32'
        say(f"precision fp32: {side_a.name!r} trains in fp32 under precision='auto' (pass precision='bf16' to "
            f'override)')
    loss_name = loss
    if loss_name is None:
        loss_name = family.default_losses.get(train.kind) or default_loss(train.kind)
        if train.kind in family.default_losses:
            say(f'loss {loss_name}: the default of {side_a.name!r} for {train.kind} data')
    num_classes = len(train.label_names) if train.kind == 'labeled' else None
    loss_module = build_loss(loss_name, loss_options, train.kind, num_classes=num_classes,
                             embedding_dim=model.output_dim)
    if getattr(loss_module, 'needs_classifier_head', False):
        _ensure_classifier(model, num_classes, say)
    if learning_rate is None:
        learning_rate = DEFAULT_LEARNING_RATES.get(model.modality, 1e-4)
    learning_rate = _positive_float('learning_rate', learning_rate)
    loss_learning_rate = _positive_float('loss_learning_rate', loss_learning_rate)

    sampler = _batch_sampler(train, batch_size, num_items_per_class, seed)
    loader = torch.utils.data.DataLoader(
        RowsDataset(train), batch_sampler=sampler, num_workers=num_workers,
        collate_fn=Collator(train.kind, side_a.preprocess_for_training,
                           side_b.preprocess_for_training if side_b is not None else None),
        persistent_workers=num_workers > 0)
    if len(loader) == 0:
        raise InputError(f'train_data gives no full batch of {batch_size}; lower batch_size.')

    tower_a, tower_b = _tower_names(model, side_a, side_b)
    module = TrainingModule(model, loss_module, train.kind, tower_a, tower_b)
    classifier_params = list(getattr(model, 'classifier', None).parameters()) \
        if getattr(model, 'classifier', None) is not None else []
    temperature = [model.logit_scale] if getattr(model, 'logit_scale', None) is not None else []
    classifier_params += temperature  # learned temperatures train at loss_learning_rate, like class weights
    special = {id(p) for p in classifier_params} | {id(p) for p in loss_module.parameters()}
    main_params = [p for p in model.parameters() if p.requires_grad and id(p) not in special]
    groups = [{'params': main_params, 'lr': learning_rate}]
    extra = [p for p in [*classifier_params, *loss_module.parameters()] if p.requires_grad]
    if extra:
        groups.append({'params': extra, 'lr': loss_learning_rate})
    if not main_params:
        raise OptionError('every model parameter is frozen: nothing to train (check freeze).')
    opt = _make_optimizer(optimizer, groups, optimizer_options)
    steps_per_epoch = math.ceil(len(loader) / gradient_accumulation_steps)
    total_steps = steps_per_epoch * epochs
    sched = _make_scheduler(scheduler, opt, total_steps, int(warmup_ratio * total_steps))

    # accelerate keeps one state per process; a second fit() in the same process may want another precision
    # (the distributed PartialState, if any, is kept)
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=device == 'cpu', mixed_precision={'fp32': 'no'}.get(mixed, mixed),
                              gradient_accumulation_steps=gradient_accumulation_steps,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    module, opt, loader, sched = accelerator.prepare(module, opt, loader, sched)
    # each process sees 1/N of the batches: the steps it takes (and shows) are those of its share, while the
    # scheduler, which accelerate steps N times per step, keeps counting the unsharded total
    steps_per_epoch = math.ceil(len(loader) / gradient_accumulation_steps)
    say(f'device {accelerator.device}, precision {mixed}, {accelerator.num_processes} process(es), '
        f'{steps_per_epoch} steps per epoch, loss {loss_module.name}')
    start_epoch = 0
    if resume_state is not None:
        opt.load_state_dict(resume_state['optimizer'])
        sched.load_state_dict(resume_state['scheduler'])
        start_epoch = int(resume_state['epoch'])
        say(f'resuming from {resume_from} at epoch {start_epoch + 1}')

    state = TrainState(epochs=epochs, total_steps=steps_per_epoch * epochs,
                       is_main_process=accelerator.is_main_process, _log=say)
    state.step = start_epoch * steps_per_epoch
    callbacks = list(callbacks or [])
    if evaluation is not None and eval_every:
        callbacks.append(EvaluationCallback(every_n_steps=eval_every, each_epoch=False))
    callbacks.append(ProgressBar(progress))
    unwrapped = accelerator.unwrap_model(module).model

    def run_evaluation() -> dict:
        unwrapped.eval()
        metrics = evaluate(unwrapped, evaluation, ks=ks) if accelerator.is_main_process else {}
        unwrapped.train()
        if accelerator.num_processes > 1:  # every process sees the same metrics, so callbacks agree
            from accelerate.utils import broadcast_object_list
            box = [metrics]
            broadcast_object_list(box, from_process=0)
            metrics = box[0]
        return metrics

    def checkpoint(directory: str, metrics: dict) -> None:
        if accelerator.is_main_process:
            _save_checkpoint(unwrapped, directory, metrics, opt, sched, state.epoch, config)
        accelerator.wait_for_everyone()

    config = {'loss': loss_module.name, 'loss_options': dict(loss_options or {}), 'epochs': epochs,
              'batch_size': batch_size, 'learning_rate': learning_rate, 'precision': mixed, 'seed': seed,
              'optimizer': optimizer, 'scheduler': scheduler, 'data': train.describe(),
              'steps_per_epoch': steps_per_epoch}
    state._checkpoint = checkpoint
    metrics: dict[str, dict] = {}
    if evaluation is not None:
        metrics['before'] = run_evaluation() if resume_state is None else resume_state.get('metrics_before', {})
        if accelerator.is_main_process:
            say(_metric_line('before', metrics['before']))
    for cb in callbacks:
        cb.on_train_begin(state)
    unwrapped.train()
    samples, started = 0, time.perf_counter()
    try:
        for epoch in range(start_epoch, epochs):
            state.epoch = epoch
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(epoch)
            for batch in loader:
                with accelerator.accumulate(module):
                    with accelerator.autocast():
                        value = module(batch)
                    finite = torch.isfinite(value.detach()).all().float()
                    if accelerator.num_processes > 1:  # all processes stop together, none waits in backward
                        finite = accelerator.reduce(finite, reduction='min')
                    if not bool(finite):
                        _stop_on_nan(state, unwrapped, output_dir, metrics, opt, sched, config, accelerator)
                    accelerator.backward(value)
                    if accelerator.sync_gradients and max_grad_norm:
                        accelerator.clip_grad_norm_(module.parameters(), max_grad_norm)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                samples += _batch_len(batch) * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                state.last_loss = float(value.detach())
                state.learning_rate = sched.get_last_lr()[0]
                state.samples_per_second = samples / max(1e-9, time.perf_counter() - started)
                state.history.append({'epoch': epoch, 'step': state.step, 'loss': state.last_loss})
                for cb in callbacks:
                    cb.on_step_end(state)
                _maybe_evaluate(state, evaluation, run_evaluation, callbacks)
                if state.should_stop:
                    break
            for cb in callbacks:
                cb.on_epoch_end(state)
            _maybe_evaluate(state, evaluation, run_evaluation, callbacks)
            if output_dir is not None:
                state.epoch = epoch + 1
                checkpoint(os.path.join(output_dir, 'checkpoint'), metrics)
            if state.should_stop:
                break
    finally:
        for cb in callbacks:
            cb.on_train_end(state)
    unwrapped.eval()
    if evaluation is not None:
        metrics['after'] = run_evaluation()
        if accelerator.is_main_process:
            say(_metric_line('after', metrics['after']))
    run = Run(unwrapped, metrics, state.history, train.describe(), config)
    if output_dir is not None and accelerator.is_main_process:
        run.save(os.path.join(output_dir, 'model'))
    return run


def _batch_len(batch: dict) -> int:
    groups = batch.get('groups', batch.get('scores'))
    return int(groups.shape[0]) if groups is not None else 0


def _maybe_evaluate(state: TrainState, evaluation, run_evaluation, callbacks) -> None:
    if not state._eval_requested:
        return
    state._eval_requested = False
    if evaluation is None:
        return
    metrics = run_evaluation()
    state.history.append({'epoch': state.epoch, 'step': state.step, 'eval': metrics})
    for cb in callbacks:
        cb.on_evaluate(state, metrics)


def _metric_line(label: str, metrics: dict) -> str:
    shown = [k for k in ('ndcg@10', 'mrr@10', 'hit@1', 'spearman') if k in metrics]
    return f'{label}: ' + ', '.join(f'{k} {metrics[k]:.4f}' for k in shown)


TRAINER_STATE = 'trainer_state.pt'


def _save_checkpoint(model, directory: str, metrics: dict, opt, sched, epoch: int, config: dict) -> None:
    """The model as an artifact plus optimizer / scheduler state for resume_from, atomically."""
    from .artifacts import save_model
    state = {'optimizer': opt.state_dict(), 'scheduler': sched.state_dict(), 'epoch': epoch,
             'metrics_before': metrics.get('before', {})}
    save_model(model, directory, metrics=metrics, extra={'training': config},
               write_more=lambda folder: torch.save(state, os.path.join(folder, TRAINER_STATE)))


def _read_trainer_state(directory: str) -> dict:
    path = os.path.join(directory, TRAINER_STATE)
    if not os.path.isfile(path):
        raise InputError(f'resume_from={directory!r}: no {TRAINER_STATE} there; expected a checkpoint folder '
                         f'written by fit(output_dir=...) (its checkpoint/ sub-folder).')
    return torch.load(path, map_location='cpu', weights_only=True)


def _stop_on_nan(state, model, output_dir, metrics, opt, sched, config, accelerator) -> None:
    where = f'epoch {state.epoch + 1}, step {state.step + 1}'
    kept = ''
    if output_dir is not None and accelerator.is_main_process:
        path = os.path.join(output_dir, 'last-good')
        _save_checkpoint(model, path, metrics, opt, sched, state.epoch, config)
        kept = f' The model before this step is saved in {path}.'
    raise TrainingError(f'the loss became NaN or infinite at {where}; training stopped before the update, so the '
                        f'weights are the last good ones.{kept} Lower learning_rate, use precision="fp32", or '
                        f'check the data.')
