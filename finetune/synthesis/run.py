"""The synthesis run: encode the corpus once, then per chunk of queries mine candidates, score them with the
cross-encoder, make rows and write them."""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..data.loading import TrainingData
from ..errors import InputError, OptionError, UnknownModelError
from ..validators import integer, number
from .models import SynthesisModels
from .relations import NEGATIVE_CHOICES

#: texts the relation miner encodes per call (in batches of its batch size): bounds the memory of one call
ENCODE_CHUNK = 4096


@dataclass
class SynthesizedData(TrainingData):
    """Margin-triplet training data made by :func:`finetune.synthesize`, with figures of the run in `stats`
    (counts, seconds and throughput of each stage)."""

    stats: dict = field(default_factory=dict)


@dataclass
class Settings:
    """The validated arguments of one run."""

    num_relations: int
    num_candidates: int
    duplicate_threshold: float
    negatives: str
    seed: int
    miner_batch_size: int
    scorer_batch_size: int
    query_chunk_size: int
    #: ('share', s) or ('margin', m): negatives scored below s x the positive, or below the positive - m; None: all
    positive_aware: tuple[str, float] | None = None


def check_settings(corpus_size: int, num_relations: Any, num_candidates: Any, duplicate_threshold: Any,
                   negatives: Any, seed: Any, batch_sizes: tuple[Any, Any, Any]) -> Settings:
    """OptionError / InputError for a bad setting, naming it; `num_candidates` None: twice `num_relations`."""
    num_relations = integer('num_relations', num_relations, 2)
    if num_relations > corpus_size:
        raise InputError(f'num_relations={num_relations} is larger than the corpus ({corpus_size} distinct '
                         f'documents): a query keeps one positive and num_relations - 1 negatives from it. Use '
                         f'num_relations <= {corpus_size}.')
    if num_candidates is None:
        num_candidates = min(corpus_size, 2 * num_relations)
    num_candidates = integer('num_candidates', num_candidates, num_relations)
    if num_candidates > corpus_size:
        raise InputError(f'num_candidates={num_candidates} is larger than the corpus ({corpus_size} documents).')
    duplicate_threshold = number('duplicate_threshold', duplicate_threshold, 'a cosine in [-1, 1]',
                                 lambda v: -1 <= v <= 1)
    if negatives not in NEGATIVE_CHOICES:
        raise OptionError(f'negatives: expected one of {", ".join(map(repr, NEGATIVE_CHOICES))}, got {negatives!r}.')
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise OptionError(f'seed: expected an integer, got {seed!r}.')
    names = ('miner_batch_size', 'scorer_batch_size', 'query_chunk_size')
    sizes = [integer(name, value) for name, value in zip(names, batch_sizes)]
    return Settings(num_relations, num_candidates, duplicate_threshold, negatives, seed, *sizes)


def check_positive_aware(value: Any) -> tuple[str, float] | None:
    """``positive_aware`` as ``('share', s)`` / ``('margin', m)`` or None; OptionError naming it otherwise. A number
    is a share of the positive's score in (0, 1] (0.95: NV-Retriever's choice); ``{'share': s}`` the same;
    ``{'margin': m}`` an absolute margin >= 0 below it."""
    if value is None:
        return None
    expected = ("a share of the positive's score in (0, 1] such as 0.95, {'share': 0.95} or {'margin': 0.1} (an "
                'absolute margin below it)')
    if isinstance(value, dict) and len(value) == 1:
        (how, amount), = value.items()
    else:
        how, amount = 'share', value
    within = (lambda v: 0 < v <= 1) if how == 'share' else (lambda v: v >= 0)
    if how not in ('share', 'margin'):
        raise OptionError(f'positive_aware: unknown key {how!r}; expected {expected}.')
    return how, number('positive_aware', amount, expected, within)


def check_models(models: Any) -> SynthesisModels:
    """`models`, or OptionError when it is not a :class:`SynthesisModels`."""
    if not isinstance(models, SynthesisModels):
        raise OptionError(f'models: expected finetune.data.SynthesisModels(relation_miner=..., cross_encoder=...) '
                          f'or DATA_SYNTHESIS_EN, got {type(models).__name__}.')
    return models


def build_models(models: Any, device: str):
    """(relation miner, cross-encoder), built and on `device`; the errors say which of the two is wrong."""
    from ..cross_encoders import build_cross_encoder
    from ..model import EmbeddingModel, MultiTowerModel, build_model
    miner, cross = check_models(models).names()
    if isinstance(miner, str):
        try:
            miner = build_model(miner, models.relation_miner_options or None)
        except UnknownModelError as exc:
            raise UnknownModelError(f'relation_miner: {exc}') from None
    elif not isinstance(miner, (EmbeddingModel, MultiTowerModel)):
        raise OptionError(f'relation_miner: expected an embedding model name or a finetune model, got '
                          f'{type(miner).__name__}' + (' (a cross-encoder scores pairs and embeds nothing: pass it '
                                                        'as cross_encoder).' if hasattr(miner, 'score_batch') else '.'))
    if 'text' not in str(getattr(miner, 'modality', '')):
        raise InputError(f'relation_miner: {miner.name!r} is a {miner.modality} model; synthesis mines texts, so the '
                         f'relation miner must embed text.')
    cross = build_cross_encoder(cross, models.cross_encoder_options or None)
    return miner.to(device), cross.to(device)


class Bars:
    """Rich progress bars on a terminal (or when asked), nothing otherwise."""

    def __init__(self, show: bool | None):
        self.show = sys.stderr.isatty() if show is None else bool(show)
        self.progress = None
        self.tasks: dict[str, Any] = {}

    @contextlib.contextmanager
    def running(self) -> Iterator['Bars']:
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.progress = Progress(TextColumn('{task.description}'), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn())
            self.progress.start()
        try:
            yield self
        finally:
            if self.progress is not None:
                self.progress.stop()

    def add(self, name: str, total: int) -> None:
        if self.progress is not None:
            self.tasks[name] = self.progress.add_task(name, total=total)

    def advance(self, name: str, n: int) -> None:
        if self.progress is not None and name in self.tasks:
            self.progress.advance(self.tasks[name], n)


def encode_corpus(miner, corpus: list[str], batch_size: int, bars: Bars) -> np.ndarray:
    """The corpus's unit-length embeddings, float32 (N, D), made ENCODE_CHUNK texts at a time in order of length
    (less padding) into one preallocated array: memory is the array plus one chunk."""
    order = np.argsort([-len(t) for t in corpus], kind='stable')
    out: np.ndarray | None = None
    for start in range(0, len(corpus), ENCODE_CHUNK):
        rows = order[start:start + ENCODE_CHUNK]
        chunk = miner.encode([corpus[i] for i in rows], batch_size=batch_size, convert_to='torch')
        chunk = torch.nn.functional.normalize(chunk.float(), dim=1)
        if out is None:
            out = np.empty((len(corpus), chunk.shape[1]), dtype=np.float32)
        out[rows] = chunk.numpy()
        bars.advance('encoding corpus', len(rows))
    return out


def timed(stats: dict, key: str) -> Callable:
    """A context manager adding the seconds of its block to ``stats[key]``."""
    @contextlib.contextmanager
    def block():
        start = time.perf_counter()
        try:
            yield
        finally:
            stats[key] = stats.get(key, 0.0) + time.perf_counter() - start
    return block()
