"""Batch samplers: class-balanced batches for labeled data, duplicate-free batches for pairs."""
from __future__ import annotations

import time
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from finetune.errors import InputError, OptionError
from finetune.samplers import ClassBalancedBatchSampler, NoDuplicatesBatchSampler


def _quiet(factory, *args, **kwargs):
    """Build a sampler, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        return factory(*args, **kwargs)


def _groups(batch: list[int], labels) -> list[tuple[object, int]]:
    """(class, run length) of consecutive items of one class in a batch."""
    runs: list[list] = []
    for i in batch:
        if runs and runs[-1][0] == labels[i]:
            runs[-1][1] += 1
        else:
            runs.append([labels[i], 1])
    return [tuple(r) for r in runs]


# ---------------------------------------------------------------- class-balanced

def test_class_balanced_batches_have_classes_times_items():
    labels = np.repeat(np.arange(10), 8)  # 10 classes x 8 items
    sampler = _quiet(ClassBalancedBatchSampler, labels, batch_size=16, items_per_class=4)
    assert (sampler.items_per_class, sampler.classes_per_batch, sampler.group_sizes) == (4, 4, (4, 4, 4, 4))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 80 // 16
    for batch in batches:
        assert len(batch) == 16 and len(set(batch)) == 16  # no item twice: every class has >= 4 items
        groups = _groups(batch, labels)
        assert [n for _, n in groups] == [4, 4, 4, 4]
        assert len({c for c, _ in groups}) == 4


def test_class_balanced_epoch_shows_every_item_once_when_classes_divide_evenly():
    labels = np.repeat(np.arange(10), 8)
    sampler = ClassBalancedBatchSampler(labels, batch_size=16, items_per_class=4, seed=3)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        seen = [i for batch in sampler for i in batch]
        assert sorted(seen) == list(range(80))


def test_class_balanced_len_with_and_without_drop_last():
    labels = np.repeat(np.arange(10), 7)  # 70 items
    assert len(_quiet(ClassBalancedBatchSampler, labels, 16, items_per_class=4)) == 4
    sampler = _quiet(ClassBalancedBatchSampler, labels, 16, items_per_class=4, drop_last=False)
    assert len(sampler) == 5
    batches = list(sampler)
    assert len(batches) == 5 and all(len(b) == 16 for b in batches)


def test_class_balanced_small_classes_repeat_items_within_their_group():
    labels = ['a'] * 2 + ['b'] * 6 + ['c'] * 6 + ['d'] * 6
    sampler = _quiet(ClassBalancedBatchSampler, labels, batch_size=8, items_per_class=4)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        for batch in sampler:
            for cls, n in _groups(batch, labels):
                assert n == 4
                members = [i for i in batch if labels[i] == cls]
                # class 'a' has 2 items: each used twice; the others: 4 distinct items
                assert len(set(members)) == (2 if cls == 'a' else 4)


def test_class_balanced_accepts_tensors_and_strings():
    tensor_labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    batches = list(_quiet(ClassBalancedBatchSampler, tensor_labels, batch_size=4, items_per_class=2))
    assert len(batches) == 2
    for batch in batches:
        assert sorted(Counter(tensor_labels[batch].tolist()).values()) == [2, 2]


def _adjusted(labels, batch_size, items_per_class):
    with pytest.warns(UserWarning, match=f'items_per_class={items_per_class} changed to') as record:
        sampler = ClassBalancedBatchSampler(labels, batch_size, items_per_class=items_per_class)
    return sampler, str(record[0].message)


def test_class_balanced_adjusts_items_per_class_that_does_not_divide_the_batch():
    labels = np.repeat(np.arange(20), 6)
    sampler, message = _adjusted(labels, 30, 4)
    assert sampler.group_sizes == (3,) * 10
    assert 'changed to 3 (10 classes x 3 items)' in message and '4 does not divide batch_size 30' in message
    for batch in sampler:
        assert [n for _, n in _groups(batch, labels)] == [3] * 10


def test_class_balanced_adjusts_items_per_class_to_the_class_sizes():
    labels = np.repeat(np.arange(20), 3)  # no class has 4 items
    sampler, message = _adjusted(labels, 32, 4)
    assert sampler.group_sizes == (2,) * 16
    assert 'no class has more than 3 items' in message and 'changed to 2' in message


def test_class_balanced_adjusts_when_batch_is_too_small_or_classes_too_few():
    sampler, message = _adjusted(np.repeat(np.arange(5), 8), 8, 8)
    assert sampler.group_sizes == (4, 4) and 'at least 2 classes' in message
    labels = np.repeat(np.arange(3), 20)
    sampler, message = _adjusted(labels, 32, 4)
    assert sampler.group_sizes == (11, 11, 10) and 'only 3 classes' in message
    for batch in sampler:
        assert sorted(n for _, n in _groups(batch, labels)) == [10, 11, 11]


def test_class_balanced_prime_batch_size_gets_groups_one_item_apart():
    labels = np.repeat(np.arange(20), 6)
    sampler, message = _adjusted(labels, 31, 4)
    assert sampler.group_sizes == (5, 5, 5, 4, 4, 4, 4) and 'no divisor' in message
    for batch in sampler:
        assert len(batch) == 31 and sorted(n for _, n in _groups(batch, labels)) == [4, 4, 4, 4, 5, 5, 5]


def test_class_balanced_leaves_out_single_item_classes_with_a_warning():
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 4]  # classes 2, 3, 4 have one item each
    with pytest.warns(UserWarning, match='3 of 5 classes have a single item'):
        sampler = ClassBalancedBatchSampler(labels, batch_size=4, items_per_class=2)
    seen = {i for batch in sampler for i in batch}
    assert seen <= set(range(8)) and len(sampler) == 2


def test_class_balanced_refuses_what_cannot_work():
    with pytest.raises(InputError, match='each of the 4 classes has a single item'):
        ClassBalancedBatchSampler([0, 1, 2, 3], batch_size=4)
    with pytest.raises(InputError, match='at least 2 classes, got 1'):
        ClassBalancedBatchSampler([7] * 10, batch_size=4)
    with pytest.raises(InputError, match='at least 2 classes with 2 or more items'):
        ClassBalancedBatchSampler([0, 0, 0, 1, 2], batch_size=4)
    with pytest.raises(InputError, match='batch_size 16 is larger than the 8 items'):
        ClassBalancedBatchSampler([0] * 4 + [1] * 4, batch_size=16)
    with pytest.raises(OptionError, match='items_per_class'):
        ClassBalancedBatchSampler([0, 0, 1, 1], batch_size=4, items_per_class=1)
    with pytest.raises(OptionError, match='batch_size'):
        ClassBalancedBatchSampler([0, 0, 1, 1], batch_size=2)


def test_class_balanced_is_deterministic_per_seed_and_epoch():
    labels = np.random.default_rng(0).integers(0, 30, size=600)
    a = ClassBalancedBatchSampler(labels, 32, seed=1)
    b = ClassBalancedBatchSampler(labels, 32, seed=1)
    first = list(a)
    assert first == list(b) == list(a)
    a.set_epoch(1)
    second = list(a)
    assert second != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(ClassBalancedBatchSampler(labels, 32, seed=2)) != first


def test_class_balanced_works_as_a_dataloader_batch_sampler():
    labels = np.repeat(np.arange(6), 4)
    loader = DataLoader(torch.arange(24), batch_sampler=ClassBalancedBatchSampler(labels, 8, items_per_class=4))
    out = list(loader)
    assert len(out) == len(loader) == 3 and all(t.shape == (8,) for t in out)


def test_class_balanced_100k_items_is_fast():
    labels = np.random.default_rng(1).integers(0, 5000, size=100_000)
    start = time.perf_counter()
    sampler = ClassBalancedBatchSampler(labels, 64, items_per_class=4)
    batches = list(sampler)
    assert time.perf_counter() - start < 2.0
    assert len(batches) == len(sampler) == 100_000 // 64
    assert all(len(b) == 64 for b in batches[:50])


# ---------------------------------------------------------------- no duplicates

def _check_no_duplicates(batches, keys_of_row):
    for batch in batches:
        keys = [k for row in batch for k in keys_of_row(row)]
        assert len(keys) == len(set(keys))


def test_no_duplicates_single_keys_every_row_once():
    keys = np.random.default_rng(2).integers(0, 40, size=500).tolist()  # ~12 rows per key
    sampler = NoDuplicatesBatchSampler(keys, batch_size=16, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        _check_no_duplicates(batches, lambda row: [keys[row]])
        assert sorted(i for b in batches for i in b) == list(range(500))
        assert sum(len(b) < 16 for b in batches) <= 2


def test_no_duplicates_tuple_keys_constrain_every_key_of_a_row():
    rng = np.random.default_rng(3)
    queries, docs = rng.integers(0, 60, size=400), rng.integers(0, 80, size=400)
    keys = [(f'q{q}', f'd{d}') for q, d in zip(queries, docs)]
    keys[0] = ('same', 'same')  # one key twice in a row is not a clash with itself
    sampler = NoDuplicatesBatchSampler(keys, batch_size=8, seed=4)
    batches = list(sampler)
    _check_no_duplicates(batches, lambda row: set(keys[row]))
    assert sorted(i for b in batches for i in b) == list(range(400))
    assert len(batches) == len(sampler)


def test_no_duplicates_drop_last_gives_only_full_batches():
    keys = np.random.default_rng(5).integers(0, 30, size=203).tolist()
    sampler = NoDuplicatesBatchSampler(keys, batch_size=10, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) and all(len(b) == 10 for b in batches)
    rows = [i for b in batches for i in b]
    assert len(rows) == len(set(rows)) and len(batches) >= 19
    _check_no_duplicates(batches, lambda row: [keys[row]])


def test_no_duplicates_a_key_on_too_many_rows_warns_and_is_still_never_repeated():
    keys = ['hot'] * 30 + list(range(70))  # 'hot' cannot fit once per batch: only 10 full batches of 10
    with pytest.warns(UserWarning, match="key 'hot' is on 30 rows .* only 10 full batches"):
        sampler = NoDuplicatesBatchSampler(keys, batch_size=10)
    batches = list(sampler)
    _check_no_duplicates(batches, lambda row: [keys[row]])
    assert sorted(i for b in batches for i in b) == list(range(100))  # drop_last=False: every row once
    assert len(batches) == len(sampler) >= 30
    with pytest.warns(UserWarning, match='left out'):
        dropping = NoDuplicatesBatchSampler(keys, batch_size=10, drop_last=True)
    full = list(dropping)
    assert all(len(b) == 10 for b in full) and len(full) == len(dropping)
    _check_no_duplicates(full, lambda row: [keys[row]])


def test_no_duplicates_too_few_distinct_keys_for_a_full_batch():
    keys = [i % 5 for i in range(40)]  # 5 keys: no duplicate-free batch of 8 exists
    with pytest.warns(UserWarning):
        sampler = NoDuplicatesBatchSampler(keys, batch_size=8, drop_last=True)
    with pytest.raises(InputError, match='no batch of 8 rows without a repeated key'):
        len(sampler)
    with pytest.warns(UserWarning):
        keeping = NoDuplicatesBatchSampler(keys, batch_size=8)
    batches = list(keeping)
    assert len(batches) == 8 and all(len(b) == 5 for b in batches)
    _check_no_duplicates(batches, lambda row: [keys[row]])


def test_no_duplicates_batch_size_larger_than_rows():
    with pytest.raises(InputError, match='batch_size 11 is larger than the number of rows, 10'):
        NoDuplicatesBatchSampler(list(range(10)), batch_size=11)
    with pytest.raises(OptionError, match='batch_size'):
        NoDuplicatesBatchSampler(list(range(10)), batch_size=0)


def test_no_duplicates_is_deterministic_per_seed_and_epoch():
    keys = np.random.default_rng(6).integers(0, 50, size=300).tolist()
    a, b = NoDuplicatesBatchSampler(keys, 16, seed=1), NoDuplicatesBatchSampler(keys, 16, seed=1)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(NoDuplicatesBatchSampler(keys, 16, seed=2)) != first


def test_no_duplicates_100k_rows_is_fast():
    rng = np.random.default_rng(7)
    keys = [(int(q), f'doc {i}') for i, q in enumerate(rng.integers(0, 30_000, size=100_000))]
    start = time.perf_counter()
    sampler = NoDuplicatesBatchSampler(keys, batch_size=64)
    batches = list(sampler)
    assert time.perf_counter() - start < 2.0
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(100_000))
    assert sum(len(b) < 64 for b in batches) <= 1
    _check_no_duplicates(batches[:200], lambda row: keys[row])


def _padding(batches: list[list[int]], lengths) -> float:
    """The fraction of a padded batch that is padding: 1 - sum(lengths) / (rows x longest)."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - real / padded


def test_no_duplicates_grouped_by_length_pads_less_and_keeps_its_rules():
    rng = np.random.default_rng(5)
    n = 2000
    keys = [(f'q{q}', f'd{i}') for i, q in enumerate(rng.integers(0, 300, size=n))]  # ~7 rows per query
    lengths = rng.lognormal(3.0, 0.7, size=n).round().astype(int) + 1
    plain = NoDuplicatesBatchSampler(keys, batch_size=32, seed=1)
    grouped = NoDuplicatesBatchSampler(keys, batch_size=32, seed=1)
    grouped.group_by_length(lengths.tolist(), pool=16)
    for epoch in range(2):
        for sampler in (plain, grouped):
            sampler.set_epoch(epoch)
        batches = list(grouped)
        _check_no_duplicates(batches, lambda row: set(keys[row]))
        assert sorted(i for b in batches for i in b) == list(range(n))  # every row once, as without grouping
        assert _padding(batches, lengths) < 0.5 * _padding(list(plain), lengths)
        # the batches are shuffled: not sorted short to long through each pool
        maxima = [max(lengths[i] for i in b) for b in batches[:8]]
        assert maxima != sorted(maxima)
    grouped.set_epoch(0)
    first = list(grouped)
    grouped.set_epoch(1)
    assert list(grouped) != first
    grouped.set_epoch(0)
    assert list(grouped) == first  # deterministic per seed and epoch
    grouped.group_by_length(lengths.tolist(), pool=0)  # off again: the plain order
    plain.set_epoch(0)
    assert list(grouped) == list(plain)
    with pytest.raises(InputError, match='lengths'):
        grouped.group_by_length([1, 2, 3])


def test_no_duplicates_grouped_by_the_lengths_of_both_sides():
    """Queries and documents are padded apart: with a length per side, both sides of a batch pad less than
    sorting by their sum does."""
    rng = np.random.default_rng(6)
    n = 3000
    keys = [(f'q{i}', f'd{i}') for i in range(n)]
    query = rng.lognormal(3.0, 0.5, size=n).round() + 1
    doc = rng.lognormal(2.0, 0.7, size=n).round() + 1  # shorter on average, independent of the query

    def padded_tokens(sampler):
        return sum(len(b) * (query[b].max() + doc[b].max()) for b in map(np.asarray, sampler))

    plain = NoDuplicatesBatchSampler(keys, batch_size=32, seed=2)
    by_sum = NoDuplicatesBatchSampler(keys, batch_size=32, seed=2)
    by_sum.group_by_length((query + doc).tolist())
    by_side = NoDuplicatesBatchSampler(keys, batch_size=32, seed=2)
    by_side.group_by_length(list(zip(doc.tolist(), query.tolist())))  # in either column order
    batches = list(by_side)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert padded_tokens(by_side) < 0.95 * padded_tokens(by_sum) < 0.95 * padded_tokens(plain)


def test_each_process_resumes_its_own_share_of_the_epoch():
    """Sharded first, then skipped: after 2 steps, every process goes on with its own 3rd batch, as the
    uninterrupted run does (skipping 2 x N batches before sharding dealt the padded tail out differently)."""
    from finetune.samplers import ShardedBatches, SkipBatches
    sampler = NoDuplicatesBatchSampler([(i,) for i in range(10 * 4 + 3)], 4, seed=0)  # 11 batches, 4 processes
    for rank in range(4):
        whole = list(SkipBatches(ShardedBatches(sampler, 4, rank)))
        resumed = SkipBatches(ShardedBatches(sampler, 4, rank), skip=2)
        assert len(whole) == 3 and list(resumed) == whole[2:] and len(resumed) == 1
    firsts = [list(SkipBatches(ShardedBatches(sampler, 4, r), skip=2))[0] for r in range(4)]
    assert len({tuple(b) for b in firsts}) == 4  # four different batches in the resumed step

