"""The steps of one :func:`finetune.synthesize` run, in order: read and check everything, resume, build the models,
encode the corpus, then mine, score and write a chunk of queries at a time."""
from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from ..logs import log_function
from .inputs import read_texts
from .output import RowWriter, check_output, fingerprint, meta_path, read_meta, read_rows, write_meta
from .relations import relation_rows
from .run import (Bars, SynthesizedData, build_models, check_models, check_positive_aware, check_settings,
                  encode_corpus, timed)


class Pipeline:
    """One synthesis run; :meth:`run` returns its :class:`~finetune.synthesis.run.SynthesizedData`."""

    def __init__(self, query_data, corpus_data, models, num_relations, output, resume, overwrite, num_candidates,
                 duplicate_threshold, negatives, seed, batch_sizes, device, progress, log, positive_aware=None):
        from ..training.hardware import resolve_device
        self.say = log_function(log)
        self.output, self.resume = check_output(output, resume, overwrite), resume
        self.queries = read_texts(query_data, 'query_data')
        self.corpus = read_texts(corpus_data, 'corpus_data')
        self.inputs = {'query_data': fingerprint(self.queries), 'corpus_data': fingerprint(self.corpus)}
        self.settings = check_settings(len(self.corpus), num_relations, num_candidates, duplicate_threshold,
                                       negatives, seed, batch_sizes)
        self.settings.positive_aware = check_positive_aware(positive_aware)
        self.models, self.device, self.bars = check_models(models), resolve_device(device), Bars(progress)
        self.stats: dict[str, Any] = {'queries': len(self.queries), 'corpus': len(self.corpus)}

    def run(self) -> SynthesizedData:
        self.without_rows: set[str] = set()
        done: list[dict] = []
        if self.output and self.resume:  # the settings and inputs before the rows: their message says what differs
            self.without_rows, checked = read_meta(self.output, self.recorded_settings(), self.inputs)
            self.without_rows &= set(self.queries)
            done = read_rows(self.output, set(self.queries))
            if done and not checked:
                self.say(f'synthesize: {meta_path(self.output)} is missing, so the settings of the rows already in '
                         f'{self.output} cannot be checked against this run\'s')
        finished = {row['query'] for row in done} | self.without_rows
        todo = [q for q in self.queries if q not in finished]
        self.stats.update(resumed_queries=len(finished), resumed_rows=len(done))
        if finished:
            self.say(f'synthesize: {len(finished):,} queries already in {self.output} ({len(done):,} rows) are '
                     f'skipped; {len(todo):,} to go')
        rows = self.make_rows(todo) if todo else []
        by_query: dict[str, list[dict]] = {}
        for row in done + rows:
            by_query.setdefault(row['query'], []).append(row)
        ordered = [row for q in self.queries for row in by_query.get(q, ())]
        if not ordered:
            raise InputError(f'synthesize made no training rows: for every query, each candidate was the query '
                             f'itself or a near-duplicate of its positive (duplicate_threshold='
                             f'{self.settings.duplicate_threshold}). Raise num_candidates or duplicate_threshold.')
        return self.data(ordered)

    def make_rows(self, todo: list[str]) -> list[dict]:
        """Build the models, encode the corpus, then mine, score and write `todo` a chunk at a time."""
        s, stats = self.settings, self.stats
        with timed(stats, 'build_seconds'), torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)  # models with random weights (tests) are the same in every run of a seed
            self.miner, self.cross = build_models(self.models, self.device)
        writer = RowWriter(self.output, append=self.resume)
        if self.output:
            write_meta(self.output, self.recorded_settings(), self.without_rows, self.inputs)
        rows: list[dict] = []
        try:
            with self.bars.running() as bars:
                bars.add('encoding corpus', len(self.corpus))
                bars.add('mining', len(todo))
                bars.add('scoring', len(todo) * s.num_candidates)
                with timed(stats, 'encode_seconds'):
                    self.corpus_embeddings = encode_corpus(self.mining()[1], self.corpus, s.miner_batch_size, bars)
                for start in range(0, len(todo), s.query_chunk_size):
                    rows += self.chunk(todo[start:start + s.query_chunk_size], writer)
        finally:
            writer.close()
        return rows

    def mining(self):
        """The relation miner for the queries and for the corpus: with its own query and document prompts where it
        has them (:func:`finetune.prompts.prompted_sides`)."""
        from ..prompts import prompted_sides
        return prompted_sides(self.miner, self.miner)

    def chunk(self, queries: list[str], writer: RowWriter) -> list[dict]:
        """Mine, score and write the rows of `queries`."""
        from ..evaluation.metrics import top_k
        s, stats = self.settings, self.stats
        with timed(stats, 'mine_seconds'):
            embeddings = self.mining()[0].encode(queries, batch_size=s.miner_batch_size)
            _, candidates = top_k(embeddings, self.corpus_embeddings, s.num_candidates, docs_normalized=True)
        self.bars.advance('mining', len(queries))
        pairs = [(q, self.corpus[int(d)]) for q, row in zip(queries, candidates) for d in row]
        with timed(stats, 'score_seconds'):
            scores = self.cross.score(pairs, batch_size=s.scorer_batch_size,
                                      on_batch=lambda n: self.bars.advance('scoring', n))
        scores = scores.reshape(len(queries), -1)
        rows = []
        for query, row, row_scores in zip(queries, candidates, scores):
            made = relation_rows(query, row, row_scores, self.corpus, self.corpus_embeddings, s.num_relations,
                                 s.duplicate_threshold, s.negatives, s.seed, s.positive_aware)
            writer.write(made)
            rows += made
            if not made:
                self.without_rows.add(query)
        if self.output:
            write_meta(self.output, self.recorded_settings(), self.without_rows, self.inputs)
        stats['mined_queries'] = stats.get('mined_queries', 0) + len(queries)
        stats['scored_pairs'] = stats.get('scored_pairs', 0) + len(pairs)
        return rows

    def recorded_settings(self) -> dict:
        """What makes a query's rows, as the settings file keeps it: the models (by name: a built model by the
        name it was built from) and the settings that choose the rows."""
        s = self.settings
        miner, cross = self.models.names()
        recorded = {'relation_miner': _model_name(miner), 'cross_encoder': _model_name(cross),
                    'num_relations': s.num_relations, 'num_candidates': s.num_candidates,
                    'duplicate_threshold': s.duplicate_threshold, 'negatives': s.negatives, 'seed': s.seed}
        if s.positive_aware is not None:  # recorded when used, so that earlier runs' files still resume
            recorded['positive_aware'] = list(s.positive_aware)
        return recorded

    def data(self, rows: list[dict]) -> SynthesizedData:
        """The rows as margin-triplets training data, with the run's figures."""
        from ..data.kinds import get_kind
        columns = ('query', 'positive', 'negative', 'margin')
        base = get_kind('margin-triplets').read_rows([[r[c] for c in columns] for r in rows], list(columns),
                                                     self.output or 'synthesized', None)
        base.extra.update(positive_score=[r['positive_score'] for r in rows],
                          negative_score=[r['negative_score'] for r in rows])
        stats = self.stats
        stats['rows'] = len(rows)
        for stage, count, seconds in (('encode', 'corpus', 'encode_seconds'), ('mine', 'mined_queries', 'mine_seconds'),
                                      ('score', 'scored_pairs', 'score_seconds')):
            if stats.get(seconds):
                stats[f'{stage}_per_second'] = stats.get(count, 0) / stats[seconds]
        self.say(_summary(stats))
        return SynthesizedData(**vars(base), stats=dict(stats))


def _model_name(model: Any) -> str:
    """A name, or a built model's own name (the one it was built from)."""
    if isinstance(model, str):
        return model
    name = getattr(model, 'name', None)
    return name if isinstance(name, str) else f'<{type(model).__name__} object>'


def _summary(stats: dict) -> str:
    parts = [f'synthesize: {stats["rows"]:,} rows for {stats["queries"]:,} queries from {stats["corpus"]:,} documents']
    if stats.get('encode_per_second'):
        parts.append(f'corpus {stats["encode_per_second"]:,.0f} texts/s, mining {stats["mine_per_second"]:,.1f} '
                     f'queries/s, scoring {stats["score_per_second"]:,.1f} pairs/s')
    return '; '.join(parts)


__all__ = ['Pipeline']
