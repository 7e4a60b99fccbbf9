"""Figures that mean what they say (issue 22, point 12): test data that chooses nothing, the table saying when
"after" was chosen on the data it is measured on, and a validation share held out of the training rows when no
eval data is given (finetune/data/split.py, SetupSteps.hold_out_validation)."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

import finetune
from finetune.data import load_data
from finetune.data.split import LEAST_VALIDATION_ROWS, rows_by_group, rows_within_classes
from finetune.errors import OptionError
from test_training import text_pairs

QUIET = dict(batch_size=8, num_workers=0, precision='fp32', seed=0, log=lambda m: None)


def many_pairs(n: int, seed: int = 0):
    """`n` (query, doc) pairs of random made-up words, some queries with two documents."""
    rng = random.Random(seed)
    words = [''.join(rng.choice('abcdefghij') for _ in range(4)) for _ in range(300)]
    rows = []
    while len(rows) < n:
        query = ' '.join(rng.sample(words, 3))
        for _ in range(rng.choice((1, 1, 2))):
            rows.append((query, ' '.join(rng.sample(words, 2))))
    return rows[:n]


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_test_data_is_measured_before_and_after_and_chooses_nothing():
    test = text_pairs()[:12]
    base = finetune.build_model('fake-text')
    expected_before = finetune.evaluate(base, test, ks=(1, 5, 10))
    with_test = finetune.fit(copy.deepcopy(base), text_pairs(), text_pairs(), test_data=test, epochs=2,
                             learning_rate=1e-2, eval_every=2, **QUIET)
    without = finetune.fit(copy.deepcopy(base), text_pairs(), text_pairs(), epochs=2, learning_rate=1e-2,
                           eval_every=2, **QUIET)
    metrics = with_test.metrics['test']
    assert metrics['before'] == pytest.approx(expected_before)
    assert metrics['after'] == pytest.approx(finetune.evaluate(with_test.model, test, ks=(1, 5, 10)))
    # the same choice and the same weights as the run without test data: it chose nothing
    assert with_test.metrics['selection']['chosen'] == without.metrics['selection']['chosen']
    for name, value in weights(without.model).items():
        torch.testing.assert_close(with_test.model.state_dict()[name], value, rtol=0, atol=0)
    assert with_test.metrics['selected_on'] == {'data': 'eval_data', 'rows': len(text_pairs())}


def test_test_data_alone_needs_no_eval_data_and_the_log_names_it():
    logs = []
    run = finetune.fit('fake-text', text_pairs(), test_data=text_pairs()[:12], epochs=1,
                       **dict(QUIET, log=logs.append))
    assert set(run.metrics['test']) == {'before', 'after'} and 'selected_on' not in run.metrics
    assert any(line.startswith('test data before: ndcg@10') for line in logs)
    assert any(line.startswith('test data after: ndcg@10') for line in logs)
    assert any('test data: test_data' in line for line in logs)


def test_the_after_line_and_table_say_the_eval_data_chose_the_model(tmp_path):
    from click.testing import CliRunner
    from finetune.cli import main
    logs = []
    finetune.fit('fake-text', text_pairs(), text_pairs(), epochs=1, **dict(QUIET, log=logs.append))
    assert any(line.startswith('after (chosen on this eval_data): ndcg@10') for line in logs)
    train, test = tmp_path / 'train.csv', tmp_path / 'test.csv'
    for path, rows in ((train, text_pairs()), (test, text_pairs()[:12])):
        path.write_text('query,doc\n' + ''.join(f'{q},{d}\n' for q, d in rows))
    result = CliRunner().invoke(main, ['fit', '--model', 'fake-text', '--train-data', str(train), '--eval-data',
                                       str(train), '--test-data', str(test), '--batch-size', '8', '--precision',
                                       'fp32'])
    assert result.exit_code == 0, result.output
    assert 'after: chosen on this eval_data' in result.output
    assert 'test data (chose nothing)' in result.output


def test_rows_by_group_keep_a_querys_rows_together_and_follow_the_seed():
    groups = [0, 0, 1, 2, 2, 2, 3, 4, 5, 5] * 10
    groups = [g + 10 * (i // 10) for i, g in enumerate(groups)]
    rows = rows_by_group(groups, len(groups), 0.2, seed=3)
    held = {groups[r] for r in rows}
    assert all((groups[i] in held) == (i in rows) for i in range(len(groups)))  # whole groups only
    assert 20 <= len(rows) <= 22 and rows == sorted(rows)
    assert rows_by_group(groups, len(groups), 0.2, seed=3) == rows
    assert rows_by_group(groups, len(groups), 0.2, seed=4) != rows
    assert len(rows_by_group(None, 50, 0.1, seed=0)) == 5


def test_labeled_rows_are_held_out_within_each_class():
    groups = [0] * 30 + [1] * 10 + [2] * 5
    rows = rows_within_classes(groups, 0.2, seed=0)
    counts = {g: sum(groups[r] == g for r in rows) for g in (0, 1, 2)}
    assert counts == {0: 6, 1: 2, 2: 0}  # class 2: one held-out item would have nothing to find


def test_a_fit_without_eval_data_holds_out_a_validation_split_and_is_never_worse():
    rows = many_pairs(10 * LEAST_VALIDATION_ROWS + 20)
    logs = []
    run = finetune.fit('fake-text', rows, epochs=1, batch_size=32, num_workers=0, precision='fp32', seed=0,
                       log=logs.append)
    said = next(line for line in logs if line.startswith('validation split:'))
    assert 'validation_split=0.1' in said and 'trains on the other' in said
    assert run.metrics['selected_on']['data'] == 'validation split'
    held = run.metrics['selected_on']['rows']
    assert LEAST_VALIDATION_ROWS <= held <= LEAST_VALIDATION_ROWS + 5
    assert f'{len(rows) - held:,} pairs rows' in run.data_description
    assert run.metrics['after'][run.metrics['selection']['metric']] >= run.metrics['before'][
        run.metrics['selection']['metric']]
    plain = finetune.fit('fake-text', rows, epochs=1, batch_size=32, num_workers=0, precision='fp32', seed=0,
                         validation_split=0, log=logs.append)
    assert 'before' not in plain.metrics and f'{len(rows):,} pairs rows' in plain.data_description


def test_the_default_split_needs_enough_rows_and_a_chosen_one_applies_anyway():
    logs = []
    run = finetune.fit('fake-text', text_pairs(), epochs=1, **dict(QUIET, log=logs.append))
    assert 'before' not in run.metrics
    assert any(line.startswith('no validation split:') and f'fewer than {LEAST_VALIDATION_ROWS}' in line
               for line in logs)
    chosen = finetune.fit('fake-text', text_pairs(), epochs=1, validation_split=0.25, **QUIET)
    assert chosen.metrics['selected_on'] == {'data': 'validation split', 'rows': 6}
    kept_last = finetune.fit('fake-text', text_pairs(), epochs=1, validation_split=0.25, select_best=False, **QUIET)
    assert 'before' not in kept_last.metrics  # nothing to choose: every row trains
    with pytest.raises(OptionError, match=r'validation_split: expected a share of the training rows in \[0, 0.5\]'):
        finetune.fit('fake-text', text_pairs(), validation_split=0.9, **QUIET)


def test_a_resumed_run_holds_out_the_same_rows(tmp_path):
    exact = dict(QUIET, seed=3, learning_rate=1e-3)
    whole = finetune.fit('fake-text', text_pairs(), epochs=2, validation_split=0.25, output_dir=str(tmp_path / 'a'),
                         save_steps=1, save_total_limit=10, **exact)
    assert whole.metrics['selected_on'] == {'data': 'validation split', 'rows': 6}
    resumed = finetune.fit(None, text_pairs(), resume_from=str(tmp_path / 'a' / 'checkpoint-2'),
                           output_dir=str(tmp_path / 'b'), log=lambda m: None)
    assert resumed.metrics['selected_on'] == whole.metrics['selected_on']
    assert resumed.data_description == whole.data_description  # the same 18 rows trained on
    assert resumed.metrics['last'] == pytest.approx(whole.metrics['last'], abs=1e-6)
    assert resumed.metrics['before'] == pytest.approx(whole.metrics['before'])


def test_subset_keeps_group_ids_and_label_names():
    data = load_data([('a', 'x'), ('b', 'y'), ('c', 'x'), ('d', 'z')], 'rows', kind='labeled')
    part = data.subset([3, 1], 'part')
    assert part.a == ['d', 'b'] and part.groups == [data.groups[3], data.groups[1]]
    assert part.label_names == data.label_names and part.source == 'part' and len(part) == 2
    assert np.all(np.array(part.groups) < len(part.label_names))


def test_the_model_card_shows_the_test_rows_and_says_what_chose_the_model(tmp_path):
    run = finetune.fit('fake-text', text_pairs(), text_pairs(), test_data=text_pairs()[:12], epochs=1, **QUIET)
    run.save(str(tmp_path / 'm'))
    card = (tmp_path / 'm' / 'README.md').read_text()
    assert '"after" is the model chosen on this eval_data, so it flatters.' in card
    assert 'Test data (chose nothing):' in card
    assert f"{run.metrics['test']['after']['ndcg@10']:.4f}" in card
