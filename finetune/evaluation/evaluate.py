"""Evaluating a model on data: the data's kind decides what is ranked against what (see
:meth:`finetune.data.kinds.DataKind.evaluate`)."""
from __future__ import annotations

from typing import Any, Sequence

from ..data import load_data
from ..data.loading import TrainingData
from ..data.several import SeveralData, load_several
from ..errors import InputError
from .metrics import DEFAULT_KS


def side_models(model, data: TrainingData):
    """The (tower) model that embeds each side of `data`: ``(side_a, side_b)``, side_b None for one-sided
    kinds. Raises InputError when a side's items are of a modality the model does not take."""
    modalities = data.modalities
    two_sided = data.data_kind.sides > 1
    if getattr(model, 'towers', None) is not None:  # a multi-tower model, torch or exported
        by_modality = {m.modality: m for m in model.towers.values()}
        sides = []
        for side, modality in zip(_column_names(data), modalities):
            if modality not in by_modality:
                raise InputError(f'{data.source}: the {side} column holds {modality} items but {model.name!r} '
                                 f'has towers for {", ".join(by_modality)}.')
            sides.append(by_modality[modality])
        return sides[0], (sides[1] if two_sided else None)
    for side, modality in zip(_column_names(data), modalities):
        if modality != 'other' and modality != model.modality:
            across = f' {data.kind} data pairs two modalities: use a multi-tower model that has both.' \
                if len(set(modalities)) > 1 else ''
            article = 'an' if str(model.modality)[:1] in 'aeiou' else 'a'
            raise InputError(f'{data.source}: the {side} column holds {modality} items but {model.name!r} is '
                             f'{article} {model.modality} model.{across}')
    return model, (model if two_sided else None)


def _column_names(data: TrainingData) -> tuple[str, ...]:
    """What messages call the column of each side: 'item' for one-sided kinds (the labels may come first); by
    what it holds where the sides differ in modality (text-image rows are read texts first, whichever column they
    were in); else by its place."""
    if data.data_kind.sides == 1:
        return ('item',)
    modalities = data.modalities
    return tuple(modalities) if len(set(modalities)) == len(modalities) else ('first', 'second')


def check_data_files(model, data: TrainingData, name: str, progress: bool | None = None) -> int:
    """InputError listing every file of `data` that the model of its side cannot read (see
    :func:`finetune.data.checks.check_files`); returns the number of files checked."""
    from ..data.checks import check_files
    side_a, side_b = side_models(model, data)
    return check_files(data, (side_a.check_file, side_b.check_file if side_b is not None else None), name,
                       progress)


class Evaluation:
    """Evaluation data read, checked and matched to the sides of `model` once, then measured as often as asked:
    :meth:`run` gives the metrics of `model` as it is then (its weights may change in between: a training run,
    a grid of WiSE-FT interpolations). Raises InputError for data the model cannot embed, for data on which
    retrieval metrics say nothing (one class, one document) and, with `check_files`, for files the model
    cannot read (see :func:`check_data_files`)."""

    def __init__(self, model, data: Any, name: str = 'eval_data', check_files: bool = True,
                 progress: bool | None = None):
        self.data = load_data(data, name)
        self.model = model  # the calibration ranges it keeps serve compact precisions
        self.side_a, self.side_b = side_models(model, self.data)
        self.data.data_kind.check_measurable(self.data)
        if check_files:
            check_data_files(model, self.data, name, progress)

    def use(self, model) -> None:
        """Measure `model` from now on (the full copy of a sharded model)."""
        self.model = model
        self.side_a, self.side_b = side_models(model, self.data)

    #: None, or a list to which each full-size :meth:`run` appends ``{'metrics': ..., 'encoded': [(side, items,
    #: embeddings), ...]}`` (what each side encoded, in order): the first recording and the last
    #: `KEEP_RECORDINGS` are kept. A run report sets it (:mod:`finetune.reporting`).
    recordings: list | None = None
    KEEP_RECORDINGS = 3

    def run(self, batch_size: int = 64, ks: Sequence[int] = DEFAULT_KS, dim: int | None = None,
            precision: str = 'float32', rescore: int | None = None, calibration: Any = None) -> dict[str, float]:
        """The retrieval metrics of the model as it is now, by the data's kind (see :func:`evaluate`); with `dim`,
        of its embeddings cut to their leading `dim` dimensions (:mod:`finetune.dims`); with a compact `precision`,
        of a search on its codes, `rescore` x the largest k rescored by float queries
        (:mod:`finetune.evaluation.compact`)."""
        from .compact import search_for, searched
        search = search_for(self.model, self.side_a, self.data, precision, rescore, calibration, dim)
        from ..prompts import prompted_sides
        side_a, side_b = prompted_sides(self.side_a, self.side_b)  # queries and documents get their prompts
        if dim is not None:
            from ..dims import AtDim, check_dim
            dim = check_dim(self.side_a, dim)
            side_a, side_b = AtDim(side_a, dim), (AtDim(side_b, dim) if side_b is not None else None)
        elif self.recordings is not None and search is None:
            encoded: list = []
            side_a, side_b = _Recording(side_a, 'a', encoded), (_Recording(side_b, 'b', encoded)
                                                                 if side_b is not None else None)
            metrics = self.data.data_kind.evaluate(side_a, side_b, self.data, batch_size, ks)
            self.recordings.append({'metrics': metrics, 'encoded': encoded})
            del self.recordings[1:-self.KEEP_RECORDINGS]
            return metrics
        return self.data.data_kind.evaluate(side_a, side_b, self.data, batch_size, ks, **searched(search))


class _Recording:
    """A side model whose ``encode`` also notes ``(side, items, embeddings)`` in `into`."""

    def __init__(self, model, side: str, into: list):
        self._model, self._side, self._into = model, side, into

    def encode(self, items, *args, **kwargs):
        embeddings = self._model.encode(items, *args, **kwargs)
        self._into.append((self._side, list(items), embeddings))
        return embeddings

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def evaluate(model, data: Any, batch_size: int = 64, ks: Sequence[int] = DEFAULT_KS,
             check_files: bool = True, dim: int | None = None, precision: str = 'float32',
             rescore: int | None = None, calibration: Any = None) -> dict[str, float]:
    """Retrieval metrics of `model` on `data` (any source :func:`finetune.data.load_data` reads).

    What is measured is the data kind's: labeled data, each item queries all others (itself excluded);
    pairs / text-image, each distinct query ranks the distinct documents, its paired documents being
    relevant; scored pairs, Spearman (average ranks for ties) and Pearson correlation of cosine similarity
    with the score. Every file the data names is checked first (`check_files`). Raises InputError for data
    the model cannot embed, and for data on which retrieval metrics say nothing (one class, one document).
    To measure one model on the same data several times, read and check it once: :class:`Evaluation`. With `dim`,
    the embeddings are cut to their leading `dim` dimensions (a Matryoshka model's smaller sizes).

    With `precision` 'int8', 'uint8', 'binary' or 'ubinary', documents are searched on their compact codes (cut to
    `dim` first), and with `rescore`, the best ``rescore x max(ks)`` of each query rescored by the float query (see
    :mod:`finetune.evaluation.compact`); int8 / uint8 ranges: `calibration` (embeddings or ranges), else the model's
    kept ranges, else the documents'. Scored data has no search: a compact precision there is an InputError.
    """
    return make_evaluation(model, data, 'eval_data', check_files).run(batch_size, ks, dim, precision, rescore,
                                                                      calibration)


class SeveralEvaluation:
    """An :class:`~finetune.evaluation.Evaluation` per dataset of `data` (a :class:`SeveralData`), run together."""

    #: None: a run report records each dataset's own Evaluation (``parts``), not this one
    recordings = None

    def __init__(self, model, data: SeveralData, name: str = 'eval_data', check_files: bool = True,
                 progress: bool | None = None):
        self.data, self.model = data, model
        self.parts = {key: Evaluation(model, part, f'{name}[{key!r}]', check_files, progress)
                      for key, part in data.parts.items()}

    def use(self, model) -> None:
        """Measure `model` from now on (a full copy of a sharded one)."""
        for evaluation in self.parts.values():
            evaluation.model = model
            evaluation.side_a, evaluation.side_b = side_models(model, evaluation.data)

    def run(self, batch_size: int = 64, ks: Sequence[int] = DEFAULT_KS, dim: int | None = None,
            precision: str = 'float32', rescore: int | None = None, calibration: Any = None) -> dict[str, float]:
        """Each dataset's metrics as ``'<dataset>/<metric>'``, and ``'mean'`` of each dataset's best metric."""
        out: dict[str, float] = {}
        best = []
        for key, evaluation in self.parts.items():
            metrics = evaluation.run(batch_size, ks, dim, precision, rescore, calibration)
            out.update({f'{key}/{name}': value for name, value in metrics.items()})
            metric = evaluation.data.data_kind.best_metric.format(k=max(ks))
            if metric in metrics:
                best.append(float(metrics[metric]))
        return {'mean': sum(best) / len(best) if best else float('nan'), **out}


def make_evaluation(model, data: Any, name: str = 'eval_data', check_files: bool = True,
                    progress: bool | None = None):
    """An :class:`Evaluation` of `data`, or a :class:`SeveralEvaluation` of a dict of named datasets."""
    data = load_several(data, name, load_data) if not isinstance(data, SeveralData) else data
    if isinstance(data, SeveralData):
        return SeveralEvaluation(model, data, name, check_files, progress)
    return Evaluation(model, data, name, check_files, progress)
