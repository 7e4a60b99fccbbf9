"""Several datasets in one run: ``fit(train_data={'logs': rows, 'scored': 'scored.csv'}, ...)``.

:class:`SeveralData` holds the named datasets (each a :class:`~finetune.data.TrainingData` of its own kind) and
numbers their rows one after another; :class:`SeveralKind` answers the data-kind questions of a batch by asking
the kind of the dataset it came from. Each batch holds the rows of one dataset alone (in-batch negatives from
another task would be easy, or wrong): :class:`SeveralBatches` takes each dataset's own batches (its kind's
sampler) and orders them by ``dataset_sampling``:

* ``'proportional'`` (default): every batch of every dataset once per epoch, in a shuffled order, so each dataset
  is seen in proportion to its size;
* ``'round_robin'``: one batch of each dataset in turn, until the smallest has given all of its batches (the
  larger ones are cut, as sentence-transformers' round robin does);
* ``{'logs': 2, 'scored': 1}``: each batch's dataset drawn with these weights, as many batches per epoch as
  ``'proportional'``; a dataset drawn more often than it has batches starts another pass over its rows.

The order is a function of the seed and the epoch alone, so a resumed run, which skips the batches done, continues
every dataset where it stopped. A batch carries ``batch['dataset']``: the place of its dataset in
:attr:`SeveralData.names`.
"""
from __future__ import annotations

import bisect
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..errors import InputError, OptionError
from .training_data import TrainingData

#: the name of each way to order the datasets' batches
SAMPLING_MODES = ('proportional', 'round_robin')
#: the key of a batch that holds the place of its dataset
DATASET_KEY = 'dataset'


class SeveralData:
    """Named datasets read for one run; rows numbered dataset after dataset (row ``i`` of the second dataset is
    ``len(first) + i``)."""

    kind = 'several'

    def __init__(self, parts: dict[str, TrainingData], source: str = 'train_data'):
        self.parts, self.source = dict(parts), source
        self.names = list(self.parts)
        self.starts = list(np.cumsum([0] + [len(p) for p in self.parts.values()])[:-1].tolist())
        self._kind = SeveralKind(self)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts.values())

    def part(self, index: int) -> TrainingData:
        """The dataset at place `index` of :attr:`names`."""
        return self.parts[self.names[index]]

    def locate(self, i: int) -> tuple[int, int]:
        """(place of the dataset, row in it) of row `i`."""
        d = bisect.bisect_right(self.starts, i) - 1
        return d, i - self.starts[d]

    def where(self, i: int) -> str:
        d, row = self.locate(i)
        return self.part(d).where(row)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Every modality of every dataset's sides, once each, in order of first appearance."""
        return tuple(dict.fromkeys(m for p in self.parts.values() for m in p.modalities))

    @property
    def data_kind(self) -> SeveralKind:
        return self._kind

    def describe(self) -> str:
        count = f'{len(self.parts)} dataset{"s" if len(self.parts) > 1 else ""}'
        return f'{count}: ' + '; '.join(part.describe() for part in self.parts.values())


class SeveralKind:
    """The data-kind questions the training loop asks of :class:`SeveralData`, each answered by the kind of the
    dataset concerned (evaluation measures each dataset by itself: :class:`~finetune.evaluation.SeveralEvaluation`)."""

    name = 'several'

    def __init__(self, data: SeveralData):
        self.data = data
        self.kinds = [p.data_kind for p in data.parts.values()]
        #: the figure model selection maximizes by default: the mean of each dataset's own best metric
        self.best_metric = 'mean'

    @property
    def summary_metrics(self) -> tuple[str, ...]:
        return ('mean',) + tuple(f'{name}/{metric}' for name, kind in zip(self.data.names, self.kinds)
                                 for metric in kind.summary_metrics)

    def for_batch(self, batch: dict) -> Any:
        """The kind of the dataset `batch` came from."""
        return self.kinds[int(batch[DATASET_KEY])]

    def row(self, data: SeveralData, i: int) -> tuple:
        d, row = data.locate(i)
        return d, self.kinds[d].row(data.part(d), row)

    def batch_size_of(self, batch: dict) -> int:
        return self.for_batch(batch).batch_size_of(batch)

    def loss_inputs(self, embed, batch: dict, loss: Any, logit_scale: Any = None):
        d = int(batch[DATASET_KEY])
        return PartInputs(d, self.kinds[d].loss_inputs(embed, batch, loss.parts[d], logit_scale))


class PartInputs:
    """A dataset's loss inputs and the place of that dataset (what :class:`~finetune.losses.several.PerDataset`
    hands to that dataset's loss)."""

    def __init__(self, dataset: int, inputs: Any):
        self.dataset, self.inputs = dataset, inputs


class SeveralBatches(Sampler[list[int]]):
    """Batches of one dataset each, ordered by `sampling` (see the module docstring); `samplers` are the datasets'
    own batch samplers, whose row numbers are shifted by `starts`."""

    def __init__(self, samplers: Sequence[Sampler], starts: Sequence[int], names: Sequence[str],
                 sampling: str | dict = 'proportional', seed: int = 0, num_processes: int = 1):
        super().__init__()
        self.samplers, self.starts, self.names = list(samplers), list(starts), list(names)
        self.sampling, self.seed, self.epoch = sampling, int(seed), 0
        #: under N processes the dataset is drawn per step, for N batches in a row: each process takes every N-th
        #: batch (ShardedBatches), so in one step all train on one dataset (its loss's collectives match)
        self.num_processes = max(1, int(num_processes))
        self.set_epoch(0)
        empty = [n for n, size in zip(self.names, self.sizes) if size == 0]
        if empty:
            raise InputError(f'train_data[{empty[0]!r}] gives no full batch; lower batch_size or leave it out.')

    def set_epoch(self, epoch: int) -> None:
        """Use the order of `epoch`, with each dataset's batch count of that epoch (a no-duplicates sampler's count
        changes from epoch to epoch: each dataset gives its epoch's batches, no more, no fewer)."""
        self.epoch = int(epoch)
        for sampler in self.samplers:
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(self.epoch)
        self.sizes = [len(s) for s in self.samplers]
        self.steps = [-(-size // self.num_processes) for size in self.sizes]

    def __len__(self) -> int:
        if self.sampling == 'round_robin':
            return self.num_processes * len(self.steps) * min(self.steps)
        return self.num_processes * sum(self.steps)

    def order(self) -> list[int]:
        """The dataset of each batch of this epoch, in order (each step's dataset once per process)."""
        rng = np.random.default_rng([self.seed, self.epoch, 0x5EE])
        if self.sampling == 'round_robin':
            steps = list(range(len(self.steps))) * min(self.steps)
        elif self.sampling == 'proportional':
            steps = rng.permutation(np.repeat(np.arange(len(self.steps)), self.steps)).tolist()
        else:
            weights = np.array([float(self.sampling.get(n, 0)) for n in self.names])
            steps = rng.choice(len(self.steps), size=sum(self.steps), p=weights / weights.sum()).tolist()
        return [d for d in steps for _ in range(self.num_processes)]

    def _passes(self, d: int) -> Iterator[list[int]]:
        """Dataset `d`'s batches of this epoch, then of further passes (each its own shuffle) for as long as asked."""
        sampler, turn = self.samplers[d], 0
        while True:
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(self.epoch + turn * 1_000_003)
            for batch in sampler:
                yield [self.starts[d] + int(i) for i in batch]
            turn += 1

    def __iter__(self) -> Iterator[list[int]]:
        streams = [self._passes(d) for d in range(len(self.samplers))]
        for d in self.order():
            yield next(streams[d])


class SeveralCollator:
    """The collator of :class:`SeveralData`: a batch's rows (all of one dataset) go to that dataset's collator,
    and the batch notes its dataset (``batch['dataset']``)."""

    def __init__(self, collators: Sequence[Callable]):
        self.collators = list(collators)

    def __call__(self, rows: Sequence[tuple]) -> dict:
        from .batches import SeededRows
        d = rows[0][0]
        inner = [row for _, row in rows]
        seed = getattr(rows, 'seed', None)
        batch = self.collators[d](inner if seed is None else SeededRows(inner, seed))
        batch[DATASET_KEY] = d
        return batch


def check_sampling(value: Any, names: Sequence[str] | None = None) -> None:
    """OptionError unless `value` is a sampling mode or weights (``{name: weight >= 0}``, some positive) for
    `names` (every key one of them; a dataset left out is never drawn)."""
    if isinstance(value, str) and value in SAMPLING_MODES:
        return
    if isinstance(value, dict) and value and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                                                 for w in value.values()) and any(w > 0 for w in value.values()):
        unknown = sorted(set(value) - set(names)) if names is not None else []
        if unknown:
            raise OptionError(f'dataset_sampling: {unknown[0]!r} is not a dataset of train_data; its datasets are '
                              f'{", ".join(map(repr, names))}.')
        return
    raise OptionError(f"dataset_sampling: expected 'proportional' (each dataset's batches once per epoch), "
                      f"'round_robin' (one batch of each in turn) or weights such as {{'logs': 2, 'scored': 1}}, got "
                      f"{value!r}.")


def load_several(data: Any, name: str, load: Callable[..., TrainingData], kind: str | None = None):
    """`data` read by `load`: a dict of several datasets as :class:`SeveralData` (each read as ``name[key]``), any
    other source as it is. InputError for an empty dict or a key that is not a name."""
    if isinstance(data, SeveralData):
        return data
    if not isinstance(data, dict) or type(data).__name__.endswith('DatasetDict'):  # a split dict: its reader says
        return load(data, name, kind=kind)
    if not data:
        raise InputError(f'{name}: an empty dict; give one dataset, or a dict of named datasets such as '
                         f'{{"logs": "logs.csv", "scored": "scored.csv"}}.')
    bad = [k for k in data if not isinstance(k, str) or not k or '/' in k or '=' in k]
    if bad:
        raise InputError(f'{name}: the dataset name {bad[0]!r} is not a plain name; use names such as "logs" '
                         f'(no "/" or "=").')
    return SeveralData({k: load(v, f'{name}[{k!r}]', kind=kind) for k, v in data.items()}, name)
