"""The fit loop, on Hugging Face ``accelerate`` for devices, mixed precision, gradient accumulation and
multi-process data parallel (``accelerate launch`` / ``torchrun``; gloo on CPUs).

Why accelerate: it is the thinnest engine that does all four without owning the loop, so the loop here
stays a plain PyTorch loop that a user can read, and its per-step cost stays near a bare loop's.
"""
from __future__ import annotations

import math
import os
import random
import re
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
    if precision == 'fp16' and not device.startswith('cuda'):
        native = 'native on this CPU' if cpu_supports_bf16() else 'slow on this CPU, which lacks AVX-512 BF16 / AMX'
        raise OptionError(f"precision='fp16': fp16 autocast runs on CUDA devices only, and this run is on "
                          f"{device!r}. Choices here: 'fp32', 'bf16' ({native}) or 'auto'.")
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

    def where(self, row: tuple) -> str:
        """Where `row` is in the data ('train.csv, line 12'): the first row with the same first item."""
        first = row[0]
        index = next((i for i, item in enumerate(self.data.a) if item is first or _same(item, first)), None)
        return self.data.where(index) if index is not None else self.data.source


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - arrays and other items without a plain ==
        return False


#: the key of a batch that carries an error raised while a DataLoader worker made it
WORKER_ERROR = '__finetune_error__'


class Collator:
    """Rows -> model inputs; runs in DataLoader workers, so tokenization and decoding leave the loop.

    A FinetuneError raised while making a batch is not raised in the worker (torch would wrap it in a long
    'Caught ... in DataLoader worker process' traceback): it travels in the batch, located at its data row
    by `where(row)`, and the training loop raises it as it is (see :func:`_raise_worker_error`)."""

    def __init__(self, kind: str, preprocess_a: Callable, preprocess_b: Callable | None,
                 where: Callable[[tuple], str] | None = None):
        self.kind, self.preprocess_a, self.preprocess_b = kind, preprocess_a, preprocess_b
        self.where = where

    def __call__(self, rows: Sequence[tuple]) -> dict[str, Any]:
        try:
            return self.collate(rows)
        except FinetuneError as exc:
            return {WORKER_ERROR: self._locate(rows, exc)}

    def _locate(self, rows: Sequence[tuple], error: FinetuneError) -> FinetuneError:
        """`error` again, prefixed with the data row that causes it (found by collating rows one by one)."""
        if self.where is None:
            return error
        for row in rows:
            try:
                self.collate([row])
            except FinetuneError as exc:
                message = re.sub(r'^item \d+: ', '', str(exc))
                return type(exc)(f'{self.where(row)}: {message}')
        return error

    def collate(self, rows: Sequence[tuple]) -> dict[str, Any]:
        """The batch of `rows`; raises what the preprocessing raises."""
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


def _check_data_files(model, data: TrainingData, name: str, progress: bool | None = None) -> None:
    """InputError listing every file of `data` that the model of its side cannot read (see
    :func:`finetune.data.checks.check_files`)."""
    from .data.checks import check_files
    side_a, side_b = _side_models(model, data)
    check_files(data, (side_a.check_file, side_b.check_file if side_b is not None else None), name, progress)


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


def evaluate(model, data, batch_size: int = 64, ks: Sequence[int] = (1, 5, 10),
             check_files: bool = True) -> dict[str, float]:
    """Retrieval metrics of `model` on `data` (any source :func:`finetune.data.load_data` reads).

    Labeled data: each item queries all others (itself excluded); pairs / text-image: each distinct query
    ranks the distinct docs, its paired docs being relevant; scored pairs: Spearman (average ranks for
    ties) and Pearson correlation of cosine similarity with the score. Every file the data names is checked
    first (`check_files`). Raises InputError for data the model cannot embed, and for data on which
    retrieval metrics say nothing (one class, one document).
    """
    from .evaluation import labeled_retrieval_metrics, retrieval_metrics, scored_metrics
    data = load_data(data, 'eval_data')
    side_a, side_b = _side_models(model, data)
    _check_measurable(data)
    if check_files:
        _check_data_files(model, data, 'eval_data')
    if data.kind == 'labeled':
        emb = side_a.encode(data.a, batch_size=batch_size)
        return labeled_retrieval_metrics(emb, data.groups, ks=ks)
    if data.kind == 'scored':
        a = side_a.encode(data.a, batch_size=batch_size)
        b = side_b.encode(data.b, batch_size=batch_size)
        return scored_metrics(a, b, data.scores)
    queries, query_of = _unique(data.a)
    docs, doc_of = _unique(data.b)
    relevant: list[set[int]] = [set() for _ in queries]
    for q, d in zip(query_of, doc_of):
        relevant[q].add(d)
    q_emb = side_a.encode(queries, batch_size=batch_size)
    d_emb = side_b.encode(docs, batch_size=batch_size)
    return retrieval_metrics(q_emb, d_emb, relevant, ks=ks)


def _check_measurable(data: TrainingData) -> None:
    """InputError for evaluation data on which every ranking is perfect, so the metrics would say 1.0."""
    if data.kind == 'labeled' and len(set(data.groups)) < 2:
        raise InputError(f'{data.source}: evaluation data of one class ({data.label_names[0]!r}): every item is '
                         f'relevant to every other, so precision and nDCG are 1.0 whatever the model. Give items '
                         f'of at least 2 classes.')
    if data.kind in ('pairs', 'text-image') and len(_unique(data.b)[0]) < 2:
        raise InputError(f'{data.source}: evaluation data with one distinct document: every query finds it '
                         f'first, so the metrics are 1.0 whatever the model. Give at least 2 documents.')
    if data.kind == 'scored' and len(set(data.scores)) < 2:
        raise InputError(f'{data.source}: every pair has the score {data.scores[0]}; a correlation with one value '
                         f'is undefined. Give pairs of different scores.')


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


def _check_settings(warmup_ratio: Any, max_grad_norm: Any, seed: Any, eval_every: Any, progress: Any,
                    callbacks: Any) -> None:
    """OptionError, naming the argument, for a fit() setting of the wrong type or range."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not number(warmup_ratio) or not 0 <= warmup_ratio < 1:
        raise OptionError(f'warmup_ratio: expected a number in [0, 1), got {warmup_ratio!r}.')
    if max_grad_norm is not None and (not number(max_grad_norm) or max_grad_norm <= 0):
        raise OptionError(f'max_grad_norm: expected a positive number (the largest gradient norm kept), or None '
                          f'to turn clipping off, got {max_grad_norm!r}.')
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise OptionError(f'seed: expected an integer >= 0, got {seed!r}.')
    if eval_every is not None:
        _positive_int('eval_every', eval_every)
    if progress is not None and not isinstance(progress, bool):
        raise OptionError(f'progress: expected True, False or None (a bar on a terminal only), got {progress!r}.')
    if callbacks is not None:
        if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
            raise OptionError(f'callbacks: expected a list of finetune.callbacks.Callback, got '
                              f'{type(callbacks).__name__}.')
        bad = [type(c).__name__ for c in callbacks if not isinstance(c, Callback)]
        if bad:
            raise OptionError(f'callbacks: {", ".join(bad)} is not a finetune.callbacks.Callback; subclass it and '
                              f'override the hooks you need.')


def _make_optimizer(name: str, groups: list[dict], options: dict | None) -> torch.optim.Optimizer:
    import inspect
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise OptionError(f'optimizer: unknown {name!r}.{did_you_mean(str(name), OPTIMIZERS)} '
                          f'Available: {", ".join(OPTIMIZERS)}.')
    cls = OPTIMIZERS[key]
    if options is not None and not isinstance(options, dict):
        raise OptionError(f'optimizer_options: expected a dict such as {{"weight_decay": 0.01}}, got '
                          f'{type(options).__name__}.')
    options = dict(options or {})
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k not in ('self', 'params', 'lr')}
    for k, value in options.items():
        if k not in params:
            raise OptionError(f'optimizer_options for {name}: unknown key {k!r}.{did_you_mean(k, params)} '
                              f'Valid keys: {", ".join(params)}.')
        expected = _expected_like(params[k].default, value)
        if expected:
            raise OptionError(f'optimizer_options for {name}: {k}={value!r}; expected {expected} (default '
                              f'{params[k].default!r}).')
    try:
        return cls(groups, **options)
    except (TypeError, ValueError, IndexError) as exc:
        raise OptionError(f'optimizer_options for {name}: {options} refused: {exc}.') from exc


def _expected_like(default: Any, value: Any) -> str:
    """What a value must be to replace `default` (an optimizer argument's), or '' when `value` fits."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if isinstance(default, bool):
        return '' if isinstance(value, bool) else 'True or False'
    if isinstance(default, (int, float)):
        return '' if number(value) else 'a finite number'
    if isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(map(number, value))
        return '' if ok else f'{len(default)} numbers'
    return ''  # None or a tensor default: torch checks it


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
    _check_settings(warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm, seed=seed, eval_every=eval_every,
                    progress=progress, callbacks=callbacks)
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
    _check_data_files(model, train, 'train_data', progress)
    if evaluation is not None:
        _check_measurable(evaluation)
        _check_data_files(model, evaluation, 'eval_data', progress)
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
    rows = RowsDataset(train)
    loader = torch.utils.data.DataLoader(
        rows, batch_sampler=sampler, num_workers=num_workers,
        collate_fn=Collator(train.kind, side_a.preprocess_for_training,
                            side_b.preprocess_for_training if side_b is not None else None, rows.where),
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
        metrics = evaluate(unwrapped, evaluation, ks=ks, check_files=False) if accelerator.is_main_process else {}
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
    last_good = _LastGood(accelerator.unwrap_model(module))
    samples, started = 0, time.perf_counter()
    try:
        for epoch in range(start_epoch, epochs):
            state.epoch = epoch
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(epoch)
            for batch in loader:
                _raise_worker_error(batch)
                with accelerator.accumulate(module):
                    last_good.before_forward()  # a failing forward may already move BatchNorm's statistics
                    with accelerator.autocast():
                        value = module(batch)
                    finite = torch.isfinite(value.detach()).all() & last_good.buffers_finite().to(value.device)
                    if not _on_every_process(finite, accelerator):
                        last_good.restore()  # the weights of the last update gave this: go back before it
                        _stop_on_nan(state, unwrapped, output_dir, metrics, opt, sched, config, accelerator)
                    accelerator.backward(value)
                    if accelerator.sync_gradients:
                        if not _gradients_ok(module, accelerator, max_grad_norm, mixed):
                            last_good.restore()  # weights whose gradients overflow encode no better
                            _stop_on_nan(state, unwrapped, output_dir, metrics, opt, sched, config, accelerator,
                                         what='the gradients became NaN or infinite')
                        last_good.before_update()
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


def _raise_worker_error(batch: Any) -> None:
    """Raise the error a DataLoader worker put in `batch` instead of making it (see :class:`Collator`)."""
    if isinstance(batch, dict) and WORKER_ERROR in batch:
        raise batch[WORKER_ERROR]


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
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, damaged or not a torch file
        raise InputError(f'resume_from={directory!r}: {path} cannot be read ({type(exc).__name__}: {exc}); the '
                         f'checkpoint is damaged. Resume from another checkpoint, or start again.') from exc
    missing = [k for k in ('optimizer', 'scheduler', 'epoch') if not isinstance(state, dict) or k not in state]
    if missing:
        raise InputError(f'resume_from={directory!r}: {path} lacks {", ".join(missing)}; the checkpoint is '
                         f'damaged or was not written by fit().')
    return state


def _on_every_process(ok: torch.Tensor, accelerator) -> bool:
    """True when the 0-d bool `ok` holds on every process (so that all stop together, none waits in backward)."""
    ok = ok.float()
    if accelerator.num_processes > 1:
        ok = accelerator.reduce(ok, reduction='min')
    return bool(ok)


def _gradients_ok(module: nn.Module, accelerator, max_grad_norm: float | None, precision: str) -> bool:
    """Clip the gradients to `max_grad_norm` (when set); False when their norm is not finite. Under fp16 the
    loss scaler skips such steps by design, so they are not failures there."""
    if max_grad_norm:
        norm = accelerator.clip_grad_norm_(module.parameters(), max_grad_norm)
    elif precision != 'fp16':
        norm = torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None])
    else:
        return True
    return precision == 'fp16' or norm is None or _on_every_process(torch.isfinite(norm).all(), accelerator)


class _LastGood:
    """The state to fall back to when a step fails: the trainable parameters as they were before the last
    optimizer update (the last weights whose forward gave a finite loss) and the persistent buffers (BatchNorm's
    running statistics, ...) as they were before the current forward, which may already have moved them.

    Costs one copy of the trainable parameters (on their device) and a copy per step (about 4 ms for 23M
    parameters on a CPU), so a stopped run hands back a model that still encodes to finite values."""

    def __init__(self, module: nn.Module):
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.buffers = [buffer for m in module.modules() for name, buffer in m._buffers.items()
                        if buffer is not None and name not in m._non_persistent_buffers_set]
        self.param_copies = [p.detach().clone() for p in self.params]
        self.buffer_copies = [b.detach().clone() for b in self.buffers]

    def buffers_finite(self) -> torch.Tensor:
        """A 0-d bool tensor: every floating buffer is finite (a forward can overflow running statistics
        while its loss stays finite)."""
        floats = [b for b in self.buffers if b.is_floating_point()]
        if not floats:
            return torch.tensor(True)
        norms = torch._foreach_norm(floats)
        return torch.isfinite(torch.stack([n.float().to(norms[0].device) for n in norms])).all()

    def before_forward(self) -> None:
        _copy(self.buffer_copies, self.buffers)

    def before_update(self) -> None:
        _copy(self.param_copies, self.params)

    def restore(self, params: bool = True) -> None:
        _copy(self.buffers, self.buffer_copies)
        if params:
            _copy(self.params, self.param_copies)


def _copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    if targets:
        with torch.no_grad():
            torch._foreach_copy_([t.detach() for t in targets], [s.detach() for s in sources])


def _stop_on_nan(state, model, output_dir, metrics, opt, sched, config, accelerator,
                 what: str = 'the loss (or a normalization statistic) became NaN or infinite') -> None:
    where = f'epoch {state.epoch + 1}, step {state.step + 1}'
    saved = ''
    if output_dir is not None and accelerator.is_main_process:
        path = os.path.join(output_dir, 'last-good')
        _save_checkpoint(model, path, metrics, opt, sched, state.epoch, config)
        saved = f' That model is saved in {path}.'
    raise TrainingError(f'{what} at {where}; training stopped, and the model holds the weights from before the '
                        f'last update, the last whose step went through, with their normalization statistics.'
                        f'{saved} Lower learning_rate, use precision="fp32", or check the data.')
