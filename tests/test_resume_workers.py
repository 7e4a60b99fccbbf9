"""Exact resume with DataLoader workers: a batch's random draws (augmentation, sampled points) depend on the run's
seed, the epoch and the batch's place in it only, never on the worker that made it, on how many batches that
worker made before, or on the number of workers (finetune/data/batches.py, finetune/sampling/wrappers.py)."""
from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest
import torch

import finetune
from finetune.data import load_data
from finetune.data.batches import Collator, RowsDataset
from finetune.samplers import (SeededBatch, SeededBatches, ShardedBatches, ShuffledBatchSampler, SkipBatches,
                               batch_seed)

sys.path.insert(0, os.path.dirname(__file__))
from fake_plugin import FakeImage  # noqa: E402
from test_training import coloured_squares  # noqa: E402

SETTINGS = dict(epochs=2, batch_size=8, device='cpu', precision='fp32', seed=5, learning_rate=1e-2, save_steps=1,
                save_total_limit=10, log=lambda m: None)


def augmented(self, items):
    """A random training view from each of the generators a family may draw from: torch's (a crop offset),
    Python's (a flip) and NumPy's (noise)."""
    batch = self.preprocess(items)
    shift = torch.randint(-2, 3, (2,)).tolist()
    batch = torch.roll(batch, shifts=shift, dims=(2, 3))
    if random.random() < 0.5:
        batch = batch.flip(3)
    return batch + torch.from_numpy(np.random.normal(0, 0.1, batch.shape).astype(np.float32))


def _weights(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def _assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f'{len(differing)} tensors differ, e.g. {differing[0]}: max ' \
                          f'{(a[differing[0]].float() - b[differing[0]].float()).abs().max():.3g}'


@pytest.fixture()
def augmenting_image_family(monkeypatch):
    """fake-image with a random training transform (workers are forked: they see the patch)."""
    monkeypatch.setattr(FakeImage, 'preprocess_train', augmented)


def test_a_run_with_workers_and_augmentation_resumes_exactly(augmenting_image_family, tmp_path):
    rows = coloured_squares(6, size=16)  # 24 rows: 3 batches of 8 an epoch
    full = finetune.fit('fake-image', rows, output_dir=str(tmp_path / 'full'), num_workers=2, **SETTINGS)
    final = _weights(full)
    for step, workers in ((2, 2), (4, 1)):  # mid first epoch; mid second epoch with another number of workers
        resumed = finetune.fit(None, rows, resume_from=str(tmp_path / 'full' / f'checkpoint-{step}'),
                               output_dir=str(tmp_path / f'resumed-{step}'), num_workers=workers, log=lambda m: None)
        _assert_equal(_weights(resumed), final)
        assert [h['loss'] for h in resumed.history] == [h['loss'] for h in full.history]
    # the batches do not depend on the number of workers at all: none gives the same run
    alone = finetune.fit('fake-image', rows, num_workers=0, **{**SETTINGS, 'save_steps': None})
    _assert_equal(_weights(alone), final)


def test_a_batchs_views_depend_on_the_seed_the_epoch_and_its_place_only(augmenting_image_family):
    """Seeded batches must not make augmentation repeat (other epochs, places and seeds draw other views) and must
    leave the caller's generators as they were (the training process draws its dropout from them)."""
    data = load_data(coloured_squares(2, size=16))
    model = finetune.build_model('fake-image')
    rows, collate = RowsDataset(data), Collator(data.data_kind, model.preprocess_for_training, None)

    def views(seed: int, epoch: int, index: int) -> torch.Tensor:
        return collate(rows.__getitems__(SeededBatch([0, 1, 2, 3], batch_seed(seed, epoch, index))))['a']

    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    first = views(5, 0, 1)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])
    assert torch.equal(views(5, 0, 1), first)
    for other in ((5, 1, 1), (6, 0, 1), (5, 0, 2)):
        assert not torch.equal(views(*other), first), other
    unseeded = collate(rows.__getitems__([0, 1, 2, 3]))['a']  # plain indices: the caller's generators, as before
    assert not torch.equal(torch.get_rng_state(), before[0]) and unseeded.shape == first.shape


def test_seeded_batches_number_every_batch_of_the_epoch_before_sharding_and_skipping():
    sampler = ShuffledBatchSampler(24, 4, seed=1)
    seeded = SeededBatches(sampler, seed=9)
    skipper = SkipBatches(ShardedBatches(seeded, 2, 1), skip=1)
    skipper.set_epoch(3)  # passed on to the seeds and to the sampler
    assert sampler.epoch == 3 and seeded.epoch == 3
    got = list(skipper)
    expected = [b for i, b in enumerate(sampler) if i % 2 == 1][1:]
    assert got == expected  # the same rows, in the same batches
    assert [b.seed for b in got] == [batch_seed(9, 3, i) for i in (3, 5)]
    assert len({batch_seed(9, 3, i) for i in range(100)} | {batch_seed(9, 4, i) for i in range(100)}) == 200
