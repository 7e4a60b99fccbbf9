"""The batch samplers, one module each; import them from :mod:`finetune.samplers`.

* :mod:`.class_balanced`: :class:`ClassBalancedBatchSampler`, several classes of several items in every batch;
* :mod:`.no_duplicates`: :class:`NoDuplicatesBatchSampler`, no key twice in a batch, optionally by length;
* :mod:`.shuffled`: :class:`ShuffledBatchSampler`, full batches of a fresh random order;
* :mod:`.wrappers`: :class:`SkipBatches` and :class:`ShardedBatches`, which pass another sampler's batches on;
* :mod:`.common`: the checks and conversions they share.
"""
