"""Data kinds as objects (finetune/data/kinds.py): the built-in four, and a new kind added as one class."""
from __future__ import annotations

import pytest
import torch

import finetune
from finetune.data import get_kind, kind_names, load_data, register_kind
from finetune.data.kinds import DataKind
from finetune.data.loading import TrainingData
from finetune.errors import InputError
from finetune.losses import Loss, LossInputs, in_batch_contrastive, register_loss
from test_training import text_pairs


class TripletsKind(DataKind):
    """(anchor, positive, negative) rows: the negative of each row is one more candidate for its anchor."""

    name = 'test-triplets'
    columns = ('anchor', 'positive', 'negative')
    default_loss = 'TestHardNegatives'

    def read_rows(self, rows, header, source, lines):
        if any(len(r) != 3 for r in rows):
            raise InputError(f'{source}: {self.name} rows have 3 columns: anchor, positive, negative.')
        a, b, c = (list(col) for col in zip(*rows))
        return TrainingData(self.name, a, b, list(range(len(rows))), None, a, source, lines, {'negative': c})

    def row(self, data, i):
        return data.a[i], data.b[i], data.extra['negative'][i], data.groups[i]

    def collate(self, rows, preprocess_a, preprocess_b):
        a, b, c, groups = zip(*rows)
        return {'a': preprocess_a(list(a)), 'b': preprocess_b(list(b)), 'c': preprocess_b(list(c)),
                'groups': torch.tensor(groups)}

    def loss_inputs(self, embed, batch, loss, logit_scale=None):
        candidates = torch.cat([embed('b', batch['b']), embed('b', batch['c'])])
        return LossInputs(anchors=embed('a', batch['a']), positives=candidates)


class HardNegatives(Loss):
    """InfoNCE over the positives and the hard negatives of the batch."""

    data_kinds = ('test-triplets',)

    def forward(self, inputs):
        return in_batch_contrastive(inputs.anchors, inputs.positives, 20.0, symmetric=False)


@pytest.fixture
def triplets_kind():
    """The kind and its loss, registered for one test and taken out again."""
    from finetune.data import kinds
    from finetune.losses import registry as losses
    saved = dict(kinds._KINDS), dict(losses._LOSSES), list(losses._NAMES), list(losses._SPELLINGS)
    kind = register_kind(TripletsKind())
    register_loss('TestHardNegatives', HardNegatives)
    yield kind
    kinds._KINDS.clear()
    kinds._KINDS.update(saved[0])
    losses._LOSSES.clear()
    losses._LOSSES.update(saved[1])
    losses._NAMES[:], losses._SPELLINGS[:] = saved[2], saved[3]


def test_the_built_in_kinds():
    assert kind_names()[:4] == ('labeled', 'pairs', 'scored', 'text-image')
    assert get_kind('pairs').default_loss == 'InfoNCE' and get_kind('labeled').sides == 1
    with pytest.raises(InputError, match="unknown data kind 'pair'.*'pairs'"):
        get_kind('pair')


def test_a_new_kind_is_one_class(triplets_kind):
    pairs = text_pairs()
    rows = [(q, d, pairs[(i + 5) % len(pairs)][1]) for i, (q, d) in enumerate(pairs)]
    data = load_data(rows, kind='test-triplets')
    assert data.kind == 'test-triplets' and data.extra['negative'][0] == pairs[5][1]
    run = finetune.fit('fake-text', rows, epochs=2, batch_size=8, num_workers=0, data_kind='test-triplets',
                       learning_rate=1e-2, log=lambda m: None)
    assert run.config['loss'] == 'TestHardNegatives' and len(run.history) == 6
    assert run.history[-1]['loss'] < run.history[0]['loss']
    metrics = finetune.evaluate(run.model, data)  # the base class evaluates (anchor, positive) as pairs
    assert 0 < metrics['ndcg@10'] <= 1


@pytest.mark.parametrize('name', ['labeled', 'pairs', 'scored', 'text-image', 'margin-triplets'])
def test_each_kind_declares_the_inputs_its_loss_inputs_embed(name):
    """`embedded` (what training joins and embeds at once) lists what loss_inputs embeds, in its order: a
    missing entry would lose the joining, an extra one would embed an input for nothing."""
    kind = get_kind(name)
    batch = {'a': object(), 'b': object(), 'c': object(), 'groups': torch.tensor([0, 0, 1, 1]),
             'scores': torch.rand(4)}
    names = {id(batch[k]): k for k in ('a', 'b', 'c')}
    seen = []

    def embed(side, x, logits=False):
        seen.append((side, names[id(x)]))
        return torch.randn(4, 3)

    class PlainLoss:
        takes_pairs = needs_classifier_head = False

    kind.loss_inputs(embed, batch, PlainLoss())
    assert tuple(seen) == kind.embedded
