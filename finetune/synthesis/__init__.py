"""Data synthesis: unlabeled queries and a corpus in, (query, positive, negative, teacher margin) rows out.

:func:`synthesize` encodes the corpus once with a relation miner (any embedding model), retrieves each query's
candidates by exact chunked top-k, scores every (query, candidate) pair with a cross-encoder, and keeps the
best-scored candidate as the positive and hard negatives from the rest, each with the teacher's margin. The rows
train any text model with ``MarginMSELoss`` (their default) or ``InfoNCE`` with hard negatives.
"""
from __future__ import annotations

from typing import Any, Callable

from .models import DATA_SYNTHESIS_EN, SynthesisModels

__all__ = ['DATA_SYNTHESIS_EN', 'SynthesisModels', 'synthesize']


def synthesize(query_data: Any, corpus_data: Any, models: SynthesisModels = DATA_SYNTHESIS_EN,
               num_relations: int = 3, output: str | None = None, *, resume: bool = False, overwrite: bool = False,
               num_candidates: int | None = None, duplicate_threshold: float = 0.95, negatives: str = 'hardest',
               seed: int = 42, miner_batch_size: int = 64, scorer_batch_size: int = 32,
               query_chunk_size: int = 1024, device: str = 'auto', progress: bool | None = None,
               log: Callable[[str], None] | None = None, positive_aware: float | dict | None = None):
    """Training rows for the queries of `query_data` from the documents of `corpus_data`.

    `query_data`, `corpus_data`: a list of texts, a text file (one per line), a CSV file (its text column) or a
    ``datasets.Dataset``; duplicates are used once. `models`: the relation miner and the cross-encoder
    (:class:`SynthesisModels`). For each query the miner retrieves `num_candidates` documents (default
    ``2 * num_relations``); the cross-encoder scores them; the best is the positive and ``num_relations - 1`` of
    the others are negatives (`negatives`: ``'hardest'``, the highest scored, or ``'random'``, seeded per
    query by `seed`), after dropping near-duplicates of the positive: the same text up to case and spacing, or
    a relation-miner cosine with it of at least `duplicate_threshold` (0.95). A document that is the query itself
    is never used. Each row holds the teacher margin (score of the positive minus score of the negative).
    `positive_aware` (NV-Retriever's positive-aware mining) keeps as negatives only the candidates the
    cross-encoder scores below a ceiling set by the positive's score: ``0.95`` (or ``{'share': 0.95}``) below 95%
    of it, ``{'margin': 0.1}`` below it minus 0.1; the others are likely positives nobody labeled.
    Where a source has several columns (a CSV with a header, a dataset), the queries come from the column named
    query, question, anchor, text, ... and the corpus from document, doc, passage, positive, text, ...

    `output` (a ``.jsonl`` path) receives the rows as they are made, a query's rows at once, and
    ``<name>.meta.json`` beside it the settings and the queries done without rows; ``resume=True`` reads both
    back (as data), checks that the settings are this run's, and skips the queries done; ``overwrite=True``
    starts both again.
    `miner_batch_size` and `scorer_batch_size` are the two models' batch sizes, `query_chunk_size` how many
    queries are mined and scored per step. Progress bars show on a terminal (`progress` forces them on or off).

    Returns a :class:`SynthesizedData` (margin-triplets :class:`~finetune.data.TrainingData`, with the run's
    figures in ``stats``) that :func:`finetune.fit` trains on. Raises InputError / OptionError /
    UnknownModelError for bad input (empty or missing queries or corpus, a cross-encoder as relation miner or
    the reverse, `num_relations` larger than the corpus, ...), WeightsNotFoundError for weights not on the
    machine.
    """
    from .pipeline import Pipeline
    return Pipeline(query_data, corpus_data, models, num_relations, output, resume, overwrite, num_candidates,
                    duplicate_threshold, negatives, seed, (miner_batch_size, scorer_batch_size, query_chunk_size),
                    device, progress, log, positive_aware).run()
