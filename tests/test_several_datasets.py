"""Several datasets in one run (issue 25, point 1): fit(train_data={name: data}), a loss per dataset, each batch
from one dataset in the order dataset_sampling draws, eval_data as a dict (one table each, chosen on the mean),
exact resume, the CLI's NAME=PATH (finetune/data/several.py, finetune/training/several.py)."""
from __future__ import annotations

import collections
import csv
import os
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import Sampler

import finetune
from finetune.cli import main
from finetune.data import load_data
from finetune.data.several import SeveralBatches, SeveralData
from finetune.errors import InputError, OptionError
from finetune.samplers import ShuffledBatchSampler

sys.path.insert(0, os.path.dirname(__file__))
from test_training import coloured_squares, text_pairs  # noqa: E402

QUIET = dict(batch_size=8, num_workers=0, precision='fp32', seed=0, learning_rate=1e-2, log=lambda m: None)


def scored_pairs():
    """Each pair of text_pairs scored 1, and each query with another pair's document scored 0: 48 rows."""
    pairs = text_pairs()
    return [(a, b, 1.0) for a, b in pairs] + [(a, pairs[(i + 7) % len(pairs)][1], 0.0) for i, (a, _) in
                                              enumerate(pairs)]


def data():
    return {'pairs': text_pairs(), 'scored': scored_pairs()}


def _batches(sizes, sampling, epoch=0, batch_size=4, processes=1):
    samplers = [ShuffledBatchSampler(n, batch_size, seed=1) for n in sizes]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    sampler = SeveralBatches(samplers, starts, [f'd{i}' for i in range(len(sizes))], sampling, seed=3,
                             num_processes=processes)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    owner = [next(d for d in reversed(range(len(sizes))) if batch[0] >= starts[d]) for batch in batches]
    for batch, d in zip(batches, owner):  # every row of a batch from the batch's one dataset
        assert all(starts[d] <= i < starts[d] + sizes[d] for i in batch)
    return batches, owner


def test_each_batch_comes_from_one_dataset_in_the_order_the_sampling_draws():
    batches, owner = _batches([40, 12], 'proportional')
    assert collections.Counter(owner) == {0: 10, 1: 3}  # every batch of each, once
    assert sorted(i for b in batches for i in b) == list(range(52))
    assert owner != sorted(owner)  # shuffled among datasets
    assert _batches([40, 12], 'proportional', epoch=1)[1] != owner  # another order next epoch
    assert _batches([40, 12], 'proportional')[0] == batches  # the same for the same seed and epoch
    _, owner = _batches([40, 12], 'round_robin')
    assert owner == [0, 1] * 3  # until the smallest has given its batches
    _, owner = _batches([40, 12], {'d0': 1, 'd1': 3})
    counts = collections.Counter(owner)
    assert len(owner) == 13 and counts[1] > counts[0]  # the small dataset drawn more often: passes again
    _, owner = _batches([40, 12], {'d0': 1, 'd1': 0})
    assert set(owner) == {0}


def test_each_dataset_gives_its_own_epochs_batch_count():
    """A no-duplicates sampler's batch count changes from epoch to epoch: the epoch takes each dataset's batches of
    that epoch, no more (none drawn from a next pass, no row twice) and no fewer."""
    class Varying(Sampler):
        def __init__(self, size: int):
            self.size, self.epoch = size, 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return 3 + self.epoch % 2  # 3 batches at epoch 0, 4 at epoch 1

        def __iter__(self):
            rows = np.random.default_rng(self.epoch).permutation(self.size)
            return iter([rows[4 * b:4 * b + 4].tolist() for b in range(len(self))])
    sampler = SeveralBatches([Varying(16), Varying(16)], [0, 16], ['a', 'b'], 'proportional', seed=3)
    for epoch, count in ((0, 3), (1, 4), (2, 3)):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(sampler) == len(batches) == 2 * count
        for start in (0, 16):
            rows = [i for batch in batches if batch[0] >= start and (start or batch[0] < 16) for i in batch]
            assert len(rows) == len(set(rows)) == 4 * count  # the epoch's batches, none repeated


@pytest.mark.parametrize('sampling', ['proportional', 'round_robin', {'d0': 1, 'd1': 2}])
def test_under_two_processes_every_step_trains_one_dataset_on_both(sampling):
    """Each process takes every other batch (ShardedBatches): the two batches of a step must be of one dataset, or
    a loss that gathers across processes waits for a process that runs another loss."""
    from finetune.samplers import ShardedBatches
    sizes, starts = [40, 12], [0, 40]
    batches, owner = _batches(sizes, sampling, processes=2)
    assert owner[0::2] == owner[1::2]
    samplers = [ShuffledBatchSampler(n, 4, seed=1) for n in sizes]
    several = SeveralBatches(samplers, starts, ['d0', 'd1'], sampling, seed=3, num_processes=2)
    ranks = [list(ShardedBatches(several, 2, rank)) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    for a, b in zip(*ranks):
        assert (a[0] >= 40) == (b[0] >= 40)
    if sampling == 'proportional':  # every batch of each dataset (one more pass where a count is odd)
        assert collections.Counter(owner) == {0: 10, 1: 4}


def test_fit_trains_each_dataset_with_its_loss_and_measures_each_eval_dataset():
    logs = []
    run = finetune.fit('fake-text', data(), data(), epochs=2, **dict(QUIET, log=logs.append))
    text = '\n'.join(logs)
    assert 'losses: pairs InfoNCE, scored CoSENTLoss' in text
    before, after = run.metrics['before'], run.metrics['after']
    assert {'mean', 'pairs/ndcg@10', 'scored/spearman'} <= set(after)
    assert after['mean'] == pytest.approx((after['pairs/ndcg@10'] + after['scored/spearman']) / 2)
    assert after['pairs/ndcg@10'] > before['pairs/ndcg@10'] and after['scored/spearman'] > before['scored/spearman']
    assert run.metrics['selection']['metric'] == 'mean'
    # the figures are those of each dataset alone
    alone = finetune.evaluate(run.model, text_pairs())
    assert after['pairs/ndcg@10'] == pytest.approx(alone['ndcg@10'])
    both = finetune.evaluate(run.model, data())
    assert both['scored/spearman'] == pytest.approx(after['scored/spearman'])


def test_a_loss_per_dataset_options_per_dataset_and_one_named_metric():
    logs = []
    run = finetune.fit('fake-text', data(), data(), loss={'pairs': 'MultipleNegativesRankingLoss'},
                       loss_options={'pairs': {'temperature': 0.1}}, metric_for_best='scored/spearman',
                       dataset_sampling='round_robin', **dict(QUIET, log=logs.append))
    assert any('losses: pairs InfoNCE, scored CoSENTLoss' in line for line in logs)
    assert run.metrics['selection']['metric'] == 'scored/spearman'
    assert run.config['dataset_sampling'] == 'round_robin'


def test_a_batch_of_one_dataset_runs_only_that_datasets_loss(monkeypatch):
    from finetune.losses.several import PerDataset
    seen = []
    forward = PerDataset.forward

    def spy(self, inputs):
        seen.append((inputs.dataset, type(self.parts[inputs.dataset]).__name__))
        return forward(self, inputs)
    monkeypatch.setattr(PerDataset, 'forward', spy)
    finetune.fit('fake-text', data(), epochs=1, validation_split=0, **QUIET)
    assert collections.Counter(seen) == {(0, 'InfoNCELoss'): 3, (1, 'CoSENTLoss'): 6}


def test_labeled_images_and_text_image_pairs_train_the_towers_each_dataset_needs():
    squares = coloured_squares(6, size=32)
    captions = [(f'a {label} square', image) for image, label in squares]
    before = finetune.build_model('fake-clip')
    start = {k: v.clone() for k, v in before.state_dict().items()}
    run = finetune.fit(before, {'captions': captions, 'images': squares}, epochs=1, validation_split=0, **QUIET)
    changed = {k.split('.')[1] for k, v in run.model.state_dict().items()
               if k.startswith('towers.') and not torch.equal(v, start[k])}
    assert {'text', 'image'} <= changed


def test_resume_keeps_each_datasets_validation_rows_the_losses_given_and_learned_temperatures(tmp_path):
    """The default validation split held out of the large dataset only; a learned temperature (a loss parameter)
    comes back with the checkpoint; the same loss argument again is no change."""
    from test_honest_metrics import many_pairs
    rows = {'big': many_pairs(1200), 'small': text_pairs()}
    settings = dict(QUIET, save_steps=5, save_total_limit=50, loss={'big': 'InfoNCE'},
                    loss_options={'big': {'learnable_temperature': True}}, loss_learning_rate=0.5)
    full = finetune.fit('fake-text', rows, output_dir=str(tmp_path / 'full'), **settings)
    assert full.metrics['selected_on']['data'] == 'validation split'
    resumed = finetune.fit(None, rows, resume_from=str(tmp_path / 'full' / 'checkpoint-10'), loss={'big': 'InfoNCE'},
                           output_dir=str(tmp_path / 'resumed'), log=lambda m: None)
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    losses = [(h['step'], h['loss']) for h in full.history if 'loss' in h]
    assert [(h['step'], h['loss']) for h in resumed.history if 'loss' in h] == losses  # the steps after it too


def test_resume_continues_every_dataset_where_it_stopped(tmp_path):
    settings = dict(QUIET, epochs=2, save_steps=1, save_total_limit=20, validation_split=0,
                    dataset_sampling={'pairs': 1, 'scored': 2})
    full = finetune.fit('fake-text', data(), output_dir=str(tmp_path / 'full'), **settings)
    steps = full.config['steps_per_epoch']
    for step in (2, steps + 1):
        resumed = finetune.fit(None, data(), resume_from=str(tmp_path / 'full' / f'checkpoint-{step}'),
                               output_dir=str(tmp_path / f'resumed-{step}'), log=lambda m: None,
                               num_workers=int(step == 2))  # a worker process makes the batches, too
        for name, value in full.model.state_dict().items():
            assert torch.equal(resumed.model.state_dict()[name], value), name
    with pytest.raises(OptionError, match='dataset_sampling'):
        finetune.fit(None, data(), resume_from=str(tmp_path / 'full' / 'checkpoint-2'), dataset_sampling='round_robin',
                     output_dir=str(tmp_path / 'other'), log=lambda m: None)


def test_a_validation_split_is_held_out_of_each_dataset():
    from test_honest_metrics import many_pairs
    many = {'pairs': many_pairs(150), 'scored': scored_pairs() * 3}
    logs = []
    run = finetune.fit('fake-text', many, validation_split=0.2, **dict(QUIET, log=logs.append))
    assert run.metrics['selected_on']['data'] == 'validation split'
    assert {'mean', 'pairs/ndcg@10', 'scored/spearman'} <= set(run.metrics['after'])
    assert sum("train_data['pairs']: validation split" in line or "train_data['scored']: validation split" in line
               for line in logs) == 2


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(loss={'logs': 'InfoNCE'}), OptionError, "'logs' is not a dataset of train_data"),
    (dict(loss_options={'pairs': {'temperature': 0.1}, 'temperature': 0.1}), OptionError, 'either one setting'),
    (dict(dataset_sampling='random'), OptionError, "expected 'proportional'"),
    (dict(dataset_sampling={'logs': 1}), OptionError, "'logs' is not a dataset"),
    (dict(loss={'scored': 'InfoNCE'}), OptionError, "train_data\\['scored'\\]: loss 'InfoNCE' does not fit"),
    (dict(batch_size=30), InputError, "larger than train_data\\['pairs'\\]"),
    (dict(loss_options={'pairs': {'mini_batch_size': 4}}), OptionError, 'trains one dataset at a time'),
])
def test_several_dataset_mistakes_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        finetune.fit('fake-text', data(), **{**QUIET, 'validation_split': 0, **kwargs})


def test_a_dict_of_losses_needs_several_datasets():
    with pytest.raises(OptionError, match='a dict of losses'):
        finetune.fit('fake-text', text_pairs(), loss={'pairs': 'InfoNCE'}, **QUIET)


def test_the_report_of_a_run_on_several_datasets_shows_each_datasets_examples(tmp_path):
    run = finetune.fit('fake-text', data(), data(), output_dir=str(tmp_path), **QUIET)
    page = (tmp_path / 'report.html').read_text()
    assert 'pairs/ndcg@10' in page and 'scored/spearman' in page
    parts = run.report_data['retrieval']['datasets']
    assert parts['scored'] is None  # scored pairs are not ranked
    pairs = parts['pairs']['examples']
    assert pairs['compared'] == len(text_pairs())  # each distinct query of the pairs' eval data
    assert pairs['improved'] and all(len(e['after']) == 5 for e in pairs['improved'])
    assert page.count('<h3>eval dataset pairs</h3>') == 2  # its examples and its map
    assert '<h3>eval dataset scored</h3>' in page and 'alt="embedding map of pairs"' in page


def test_a_bad_dataset_name_and_an_empty_dict_are_refused():
    with pytest.raises(InputError, match='not a plain name'):
        finetune.fit('fake-text', {'a/b': text_pairs()}, **QUIET)
    with pytest.raises(InputError, match='an empty dict'):
        finetune.fit('fake-text', {}, **QUIET)
    data_ = SeveralData({'x': load_data(text_pairs()), 'y': load_data(scored_pairs())})
    assert len(data_) == 72 and data_.locate(30) == (1, 6) and data_.where(30).endswith('row 6')
    assert data_.modalities == ('text',)
    from finetune.data.several import load_several
    assert load_several(data_, 'train_data', load_data) is data_  # read once (the CLI reads it for the task)


def _csv(path, rows):
    with open(path, 'w', newline='') as f:
        csv.writer(f).writerows(rows)
    return str(path)


def test_the_cli_takes_name_equals_path_and_prints_a_table_per_dataset(tmp_path):
    pairs = _csv(tmp_path / 'pairs.csv', [('query', 'doc'), *text_pairs()])
    scored = _csv(tmp_path / 'scored.csv', [('a', 'b', 'score'), *scored_pairs()])
    result = CliRunner().invoke(main, ['fit', '--model', 'fake-text', '--train-data', f'pairs={pairs}',
                                       '--train-data', f'scored={scored}', '--eval-data', f'pairs={pairs}',
                                       '--eval-data', f'scored={scored}', '--loss', 'scored=CoSENTLoss',
                                       '--loss-option', 'pairs.temperature=0.1',
                                       '--dataset-sampling', 'pairs=1,scored=1', '--batch-size', '8',
                                       '--precision', 'fp32', '--num-workers', '0'])
    assert result.exit_code == 0, result.output
    for title in ('retrieval metrics: pairs', 'retrieval metrics: scored', 'retrieval metrics: mean', '│ mean'):
        assert title in result.output
    bad = CliRunner().invoke(main, ['fit', '--model', 'fake-text', '--train-data', f'pairs={pairs}',
                                    '--train-data', scored])
    assert bad.exit_code != 0 and 'NAME=VALUE' in bad.output and 'Traceback' not in bad.output


def test_two_processes_train_several_datasets_in_lockstep(tmp_path):
    """torchrun with 2 CPU processes (gloo), round robin: InfoNCE gathers negatives across processes and CoSENT does
    not, so a step in which the processes drew different datasets would wait forever; both ranks end equal."""
    import textwrap

    from launch import two_processes
    script = tmp_path / 'ddp_several.py'
    script.write_text(textwrap.dedent(f'''
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import conftest  # noqa: F401  (the fake family)
        import finetune
        from test_several_datasets import data
        run = finetune.fit('fake-text', data(), epochs=1, batch_size=8, device='cpu', precision='fp32',
                           num_workers=0, validation_split=0, dataset_sampling='round_robin',
                           loss_options={{'pairs': {{'learnable_temperature': True}}}}, log=lambda m: None)
        total = sum(float(p.double().sum()) for p in run.model.parameters())
        with open('{tmp_path}/rank' + os.environ['RANK'], 'w') as f:
            f.write(repr(total))
    '''))
    result = two_processes(str(script), 29583)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / 'rank0').read_text() == (tmp_path / 'rank1').read_text()
