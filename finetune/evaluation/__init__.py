"""Evaluation: retrieval metrics (:mod:`.metrics`, pure: embeddings in, numbers out; their inputs checked by
:mod:`.metric_inputs`, relevance and exclusions held by :mod:`.relevance`, exact top-k in bounded memory by
:mod:`.ranking`; a search on int8 / binary codes, rescored, by :mod:`.compact`), :func:`evaluate` (a model on
data, by the data's kind; :class:`Evaluation`, the same data read once and measured again) and the before / after
table (:mod:`.report`)."""
from .compact import CompactSearch
from .evaluate import Evaluation, check_data_files, evaluate, side_models
from .metrics import (AT_K_METRICS, AT_MAX_K_METRICS, COUNT_KEYS, DEFAULT_KS, average_ranks, labeled_retrieval_metrics,
                      pair_retrieval_metrics, retrieval_metrics, scored_metrics)
from .ranking import BLOCK_ELEMENTS, top_k
from .report import format_metrics_table

__all__ = ['AT_K_METRICS', 'AT_MAX_K_METRICS', 'BLOCK_ELEMENTS', 'COUNT_KEYS', 'CompactSearch', 'DEFAULT_KS',
           'Evaluation',
           'average_ranks', 'check_data_files', 'evaluate', 'format_metrics_table', 'labeled_retrieval_metrics',
           'pair_retrieval_metrics', 'retrieval_metrics', 'scored_metrics', 'side_models', 'top_k']
