"""Never worse than where you started (finetune/training/selection.py, choose.py): model selection over the
evaluated models, the base included; the guard data's rows and rule; WiSE-FT in fit."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import finetune
from finetune.errors import OptionError
from finetune.evaluation import format_metrics_table
from finetune.training.selection import Candidate, Selection
from test_training import text_pairs

QUIET = dict(batch_size=8, num_workers=0, precision='fp32', seed=0, log=lambda m: None)


def scrambled_pairs():
    """The pairs with their documents shuffled: training on them unlearns the true pairs."""
    pairs = text_pairs()
    docs = [d for _, d in pairs]
    random.Random(0).shuffle(docs)
    return [(q, d) for (q, _), d in zip(pairs, docs)]


def trained_on_the_true_pairs():
    """A model that already retrieves the true pairs well: the base of the runs below."""
    return finetune.fit('fake-text', text_pairs(), epochs=4, learning_rate=1e-2, **QUIET).model


def test_a_run_that_gets_worse_hands_back_the_base_and_says_so(tmp_path):
    base = trained_on_the_true_pairs()
    base_embeddings = base.encode(['the red dog', 'food runs'])
    logs = []
    run = finetune.fit(base, scrambled_pairs(), text_pairs(), epochs=3, learning_rate=3e-2, output_dir=str(tmp_path),
                       **dict(QUIET, log=logs.append))
    assert run.metrics['last']['ndcg@10'] < run.metrics['before']['ndcg@10'] - 0.1  # training made it worse
    assert run.metrics['after'] == run.metrics['before']
    assert run.metrics['selection']['chosen']['model'] == 'base'
    assert [c['model'] for c in run.metrics['selection']['curve']] == ['base', 'step 3', 'step 6', 'step 9']
    assert any(line.startswith('kept the base model: no trained model beat it on eval_data (ndcg@10')
               for line in logs)
    np.testing.assert_array_equal(run.model.encode(['the red dog', 'food runs']), base_embeddings)
    saved = finetune.load(str(tmp_path / 'model'))
    np.testing.assert_array_equal(saved.encode(['the red dog', 'food runs']), base_embeddings)
    assert (tmp_path / 'best').is_dir()  # the best so far, kept on disk for a resumed run


def test_keep_last_keeps_the_worse_last_model():
    base = trained_on_the_true_pairs()
    run = finetune.fit(base, scrambled_pairs(), text_pairs(), epochs=3, learning_rate=3e-2, select_best=False,
                       **QUIET)
    assert 'selection' not in run.metrics
    assert run.metrics['after'] == run.metrics['last'] and run.metrics['after']['ndcg@10'] < \
        run.metrics['before']['ndcg@10']


def test_the_best_step_is_chosen_and_the_curve_shown():
    run = finetune.fit('fake-text', text_pairs(), text_pairs(), epochs=2, learning_rate=1e-2, eval_every=1, **QUIET)
    selection = run.metrics['selection']
    assert selection['metric'] == 'ndcg@10' and len(selection['curve']) == 1 + 6
    best = max(selection['curve'], key=lambda c: c['ndcg@10'])
    assert selection['chosen'] == best and run.metrics['after']['ndcg@10'] == best['ndcg@10']
    assert run.metrics['after']['ndcg@10'] >= run.metrics['last']['ndcg@10']


def test_the_default_metric_follows_the_data_kind_and_a_wrong_one_is_named():
    labeled = [(f'{c} {a}', a) for a in ('dog', 'cat', 'car', 'tree') for c in ('red', 'blue', 'old')]
    run = finetune.fit('fake-text', labeled, labeled, epochs=1, **QUIET)
    assert run.metrics['selection']['metric'] == 'map@10'
    with pytest.raises(OptionError, match=r"metric_for_best='ndcg@100' is not among .*Did you mean 'ndcg@10'"):
        finetune.fit('fake-text', text_pairs(), text_pairs(), metric_for_best='ndcg@100', **QUIET)
    with pytest.raises(OptionError, match='guard_data needs eval_data'):
        finetune.fit('fake-text', text_pairs(), guard_data=text_pairs(), **QUIET)


def test_guard_rows_and_the_guard_rule():
    guard = [(f'the {c}', f'{c} sky') for c in ('red', 'blue', 'green', 'old', 'new', 'big', 'small', 'happy')]
    run = finetune.fit('fake-text', text_pairs(), text_pairs(), guard_data=guard, epochs=2, learning_rate=1e-2,
                       **QUIET)
    assert set(run.metrics['guard']) == {'before', 'last', 'after'}
    curve = run.metrics['selection']['curve']
    assert all('guard ndcg@10' in c for c in curve)
    table = format_metrics_table(run.metrics['before'], run.metrics['after'], guard=run.metrics['guard'])
    rows = [cell for column in table.columns[:1] for cell in column._cells]
    assert 'guard ndcg@10' in [str(r) for r in rows] and 'ndcg@10' in [str(r) for r in rows]
    # the rule: the best eval metric among the candidates that keep the guard within the tolerance
    selection = Selection('ndcg@10', 'ndcg@10', tolerance=0.01)
    selection.offer(Candidate('base', 0, {'ndcg@10': 0.5}, {'ndcg@10': 0.8}), dict)
    selection.offer(Candidate('step 1', 1, {'ndcg@10': 0.9}, {'ndcg@10': 0.7}), dict)  # forgets: out
    selection.offer(Candidate('step 2', 2, {'ndcg@10': 0.7}, {'ndcg@10': 0.795}), dict)
    assert selection.best.label == 'step 2'
    assert [c['model'] for c in selection.report()['curve']] == ['base', 'step 1', 'step 2']


def _fresh():
    torch.manual_seed(1)
    return finetune.build_model('fake-text')


def test_wise_ft_in_fit_is_the_merge_of_the_base_and_the_chosen_model():
    base_state = {k: v.clone() for k, v in _fresh().state_dict().items()}
    last = finetune.fit(_fresh(), text_pairs(), text_pairs(), epochs=2, learning_rate=1e-2, select_best=False,
                        **QUIET).model
    half = finetune.fit(_fresh(), text_pairs(), text_pairs(), epochs=2, learning_rate=1e-2, select_best=False,
                        wise_ft=0.5, **QUIET)
    assert half.metrics['wise_ft']['alpha'] == 0.5
    for name, value in half.model.state_dict().items():
        if value.is_floating_point():
            expected = (0.5 * base_state[name].double() + 0.5 * last.state_dict()[name].double()).float()
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-7, msg=name)
    auto = finetune.fit(_fresh(), text_pairs(), text_pairs(), epochs=2, learning_rate=1e-2, wise_ft='auto', **QUIET)
    grid = auto.metrics['wise_ft']['grid']
    assert [g['alpha'] for g in grid] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert auto.metrics['wise_ft']['of'] == max(auto.metrics['selection']['curve'][1:3],
                                                key=lambda c: c['ndcg@10'])['model']  # the best trained model
    # the interpolations are candidates too: the chosen model is the best of the epochs' and the grid's
    everything = auto.metrics['selection']['curve']
    assert [c['model'] for c in everything][-5:] == [f'WiSE-FT alpha {a:g}' for a in (0, 0.25, 0.5, 0.75, 1)]
    assert auto.metrics['after']['ndcg@10'] == max(c['ndcg@10'] for c in everything)
    assert auto.metrics['selection']['chosen'] == max(everything, key=lambda c: c['ndcg@10'])
    with pytest.raises(OptionError, match="wise_ft: expected None, 'auto' or a number in"):
        finetune.fit('fake-text', text_pairs(), text_pairs(), wise_ft=1.5, **QUIET)


def test_a_resumed_run_still_chooses_among_all_candidates(tmp_path):
    base = trained_on_the_true_pairs()
    finetune.fit(base, scrambled_pairs(), text_pairs(), epochs=3, learning_rate=3e-2, output_dir=str(tmp_path),
                 save_total_limit=10, **QUIET)
    again = finetune.fit(None, scrambled_pairs(), text_pairs(), resume_from=str(tmp_path / 'checkpoint-3'),
                         log=lambda m: None)
    assert again.metrics['selection']['chosen']['model'] == 'base'  # read back from out/best
    config = json.loads((tmp_path / 'best' / 'finetune_config.json').read_text())
    assert config['candidate']['label'] == 'base'
