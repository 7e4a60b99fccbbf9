"""synthesize(positive_aware=...): NV-Retriever's positive-aware mining keeps only negatives scored below a
ceiling set by the positive's score (a share of it, or an absolute margin below it)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from finetune.errors import OptionError
from finetune.synthesis.relations import positive_aware_ceiling, relation_rows

from test_synthesis import QUERIES, overlap, rows, run

CORPUS = ['positive', 'near one', 'near two', 'mid', 'far']
SCORES = np.array([1.0, 0.99, 0.96, 0.9, 0.5])
UNIT = np.eye(len(CORPUS))  # no near-duplicates by the miner's cosine


def _negatives(rule, scores=SCORES, num_relations=5):
    made = relation_rows('q', list(range(len(CORPUS))), scores, CORPUS, UNIT, num_relations, 0.95, 'hardest', 0,
                         rule)
    return [r['negative'] for r in made]


def test_a_share_or_a_margin_of_the_positive_sets_the_ceiling():
    assert _negatives(None) == ['near one', 'near two', 'mid', 'far']
    assert _negatives(('share', 0.95)) == ['mid', 'far']  # below 0.95: 0.99 and 0.96 are likely positives
    assert _negatives(('margin', 0.2)) == ['far']  # below 0.8
    assert _negatives(('share', 0.95), num_relations=2) == ['mid']  # the hardest of what is left
    assert _negatives(('share', 1.0)) == ['near one', 'near two', 'mid', 'far']  # strictly below the positive
    assert _negatives(('margin', 0.6)) == []


def test_a_negative_positive_score_keeps_the_ceiling_below_it():
    assert positive_aware_ceiling(2.0, ('share', 0.9)) == pytest.approx(1.8)
    assert positive_aware_ceiling(-2.0, ('share', 0.9)) == pytest.approx(-2.2)  # a logit below 0
    assert positive_aware_ceiling(-2.0, ('margin', 0.5)) == pytest.approx(-2.5)
    logits = SCORES - 3.0  # positive -2.0: the ceiling -2.2 keeps -2.5 only
    assert _negatives(('share', 0.9), scores=logits) == ['far']


def test_synthesize_keeps_only_negatives_below_the_share(tmp_path):
    plain = run(num_relations=3, num_candidates=8)
    assert any(overlap(q, n) >= 0.7 * overlap(q, p) for q, p, n, _ in rows(plain))  # the setting has work to do
    output = tmp_path / 'rows.jsonl'
    aware = run(num_relations=3, num_candidates=8, positive_aware=0.7, output=str(output))
    assert len(aware) > 0 and rows(aware) != rows(plain)
    for q, p, n, _ in rows(aware):
        assert overlap(q, n) < 0.7 * overlap(q, p) + 1e-6
    meta = json.loads((tmp_path / 'rows.meta.json').read_text())
    assert json.dumps(meta).count('positive_aware') == 1 and ['share', 0.7] == next(
        v for k, v in _walk(meta) if k == 'positive_aware')
    with pytest.raises(Exception, match='positive_aware'):  # a resume with another rule is refused
        run(num_relations=3, num_candidates=8, positive_aware={'margin': 0.1}, output=str(output), resume=True)
    absolute = run(num_relations=3, num_candidates=8, positive_aware={'margin': 0.3})
    assert all(overlap(q, n) < overlap(q, p) - 0.3 + 1e-6 for q, p, n, _ in rows(absolute))
    assert set(q for q, *_ in rows(absolute)) <= set(QUERIES)


def _walk(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from _walk(v)


@pytest.mark.parametrize('bad', [0, 1.5, -0.1, 'high', {'share': 2}, {'margn': 0.1}, {'margin': -1}, True,
                                 {'share': 0.5, 'margin': 0.1}])
def test_bad_rules_are_refused_naming_the_setting(bad):
    with pytest.raises(OptionError, match='positive_aware'):
        run(num_relations=3, positive_aware=bad)


def test_the_command_line_takes_a_share_or_a_margin(tmp_path):
    from click.testing import CliRunner

    from finetune.cli import main
    from test_synthesis import CORPUS as TEXTS
    (tmp_path / 'q.txt').write_text('\n'.join(QUERIES) + '\n')
    (tmp_path / 'c.txt').write_text('\n'.join(TEXTS) + '\n')
    for i, rule in enumerate(['0.7', 'margin=0.3']):
        out = tmp_path / f's{i}.jsonl'
        args = ['synthesize', '--queries', str(tmp_path / 'q.txt'), '--corpus', str(tmp_path / 'c.txt'), '--output',
                str(out), '--relation-miner', 'fake-text', '--cross-encoder', 'fake-cross', '--positive-aware', rule]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        made = [json.loads(line) for line in out.read_text().splitlines()]
        limit = (lambda p: 0.7 * p) if i == 0 else (lambda p: p - 0.3)
        assert made and all(r['negative_score'] < limit(r['positive_score']) + 1e-6 for r in made)
    bad = CliRunner().invoke(main, args[:-1] + ['wide=0.3', '--overwrite'])
    assert bad.exit_code == 2 and 'positive_aware' in bad.output
