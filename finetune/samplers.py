"""Batch samplers: which rows of a data set go into one batch.

Both are ``torch.utils.data.Sampler`` subclasses that yield lists of data-set indices (pass them as a
``DataLoader``'s ``batch_sampler``). Both are deterministic for a given ``seed`` and epoch; call
``set_epoch(epoch)`` before each epoch (the training loop does) for a new shuffle.

* :class:`ClassBalancedBatchSampler` (labeled data): every batch holds several classes with several
  items each, so every item has positives and negatives in its batch.
* :class:`NoDuplicatesBatchSampler` (pair data): no key (a query, a document text) appears twice in a
  batch, so in-batch negatives are never copies of the positive.

Both plan an epoch in (near) linear time: 100k rows take a fraction of a second.

The samplers live in :mod:`finetune.sampling`, one module each (with :class:`ShuffledBatchSampler`, and
:class:`SeededBatches` / :class:`SkipBatches` / :class:`ShardedBatches` over another sampler); this module names
them all.
"""
from __future__ import annotations

# re-exported: every name importable from here before the samplers had modules of their own
from .sampling.class_balanced import ClassBalancedBatchSampler, _exclusive_cumsum, _spread  # noqa: F401
from .sampling.common import _positive_int, _to_list  # noqa: F401
from .sampling.no_duplicates import SUB_POOL, NoDuplicatesBatchSampler  # noqa: F401
from .sampling.shuffled import ShuffledBatchSampler  # noqa: F401
from .sampling.wrappers import SeededBatch, SeededBatches, ShardedBatches, SkipBatches, batch_seed  # noqa: F401

__all__ = ['ClassBalancedBatchSampler', 'NoDuplicatesBatchSampler']
