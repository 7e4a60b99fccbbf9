"""The guide (GISTEmbed): false negatives masked as a direct computation says, counted, the same under GradCache,
and carried through fit."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

import finetune
from finetune.data import load_data
from finetune.data.batches import Collator
from finetune.data.kinds import get_kind
from finetune.errors import OptionError
from finetune.losses import LossInputs, build_loss
from finetune.losses.guided import guide_masks
from finetune.training.gradcache import CachedStep
from finetune.training.guide import guide_preprocessors
from finetune.training.module import TrainingModule

from test_gradcache import _assert_same_grads, _grads, _no_dropout
from test_training import text_pairs


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _direct(anchors, positives, negatives, guide, margin, scale, groups=None):
    """Symmetric InfoNCE written out row by row: a candidate leaves a row's softmax when the guide scores it above
    that row's positive minus the margin (or it shares the row's group)."""
    a, p = _unit(anchors), _unit(positives)
    ga, gp = _unit(guide.anchors), _unit(guide.positives)
    n = a.shape[0]
    cands = [p[j] for j in range(n)] + ([_unit(negatives)[j] for j in range(n)] if negatives is not None else [])
    gcands = [gp[j] for j in range(n)] + ([_unit(guide.negatives)[j] for j in range(n)] if negatives is not None
                                         else [])
    masked = seen = 0
    forward = backward = 0.0
    for i in range(n):
        keep, logits = [], []
        own = float(ga[i] @ gp[i])
        for j, (c, g) in enumerate(zip(cands, gcands)):
            if j != i and j < n and groups is not None and groups[i] == groups[j]:
                continue
            if j != i:
                seen += 1
                if float(ga[i] @ g) > own - margin:
                    masked += 1
                    continue
            keep.append(j)
            logits.append(scale * (a[i] @ c))
        forward = forward - F.log_softmax(torch.stack(logits), 0)[keep.index(i)]
    for j in range(n):  # positive j picks its anchor among the anchors
        keep, logits = [], []
        own = float(ga[j] @ gp[j])
        for i in range(n):
            if i != j and groups is not None and groups[i] == groups[j]:
                continue
            if i != j:
                seen += 1
                if float(ga[i] @ gp[j]) > own - margin:
                    masked += 1
                    continue
            keep.append(i)
            logits.append(scale * (a[i] @ p[j]))
        backward = backward - F.log_softmax(torch.stack(logits), 0)[keep.index(j)]
    return (forward / n + backward / n) / 2, masked, seen


@pytest.mark.parametrize('case', ['in-batch', 'groups', 'hard negatives', 'margin'])
def test_guided_infonce_equals_the_direct_computation(case):
    anchors, positives, negatives = _randn(6, 5, seed=1), _randn(6, 5, seed=2), _randn(6, 5, seed=3)
    # a guide that agrees with the embeddings in part, so that some negatives pass its test and some fail
    guide = LossInputs(anchors=anchors + 0.8 * _randn(6, 5, seed=4), positives=positives + 0.8 * _randn(6, 5, seed=5),
                       negatives=negatives + 0.8 * _randn(6, 5, seed=6))
    negatives = negatives if case == 'hard negatives' else None
    groups = torch.tensor([0, 0, 1, 2, 3, 3]) if case == 'groups' else None
    margin = 0.3 if case == 'margin' else 0.0
    loss = build_loss('InfoNCE', {'guide': 'fake-text', 'guide_margin': margin, 'temperature': 0.5}, 'pairs')
    got = loss(LossInputs(anchors=anchors, positives=positives, negatives=negatives, labels=groups, guide=guide))
    expected, masked, seen = _direct(anchors, positives, negatives, guide, margin, 2.0, groups)
    torch.testing.assert_close(got, expected)
    assert loss.guide_counts() == (masked, seen) and 0 < masked < seen
    assert loss.epoch_note() == (f'guide: masked {masked:,} of {seen:,} in-batch and hard negatives '
                                 f'({masked / seen:.1%}) as false negatives')
    assert loss.guide_counts() == (0, 0)  # the note starts the count again


def test_a_guide_that_sees_the_embeddings_masks_nothing_at_margin_zero_and_more_with_a_margin():
    a, p = _unit(_randn(8, 4, seed=7)), _unit(_randn(8, 4, seed=8))
    p = _unit(a + 0.1 * p)  # each positive nearest its own anchor
    forward, backward = guide_masks(LossInputs(anchors=a, positives=p), 0.0)
    assert not forward.any() and not backward.any()
    wide, _ = guide_masks(LossInputs(anchors=a, positives=p), 2.0)  # cosines differ by at most 2
    assert wide.sum() == 8 * 7 and not wide.diagonal().any()


def test_clip_loss_takes_a_guide_and_the_matryoshka_sum_masks_every_size():
    anchors, positives = _randn(5, 8, seed=9), _randn(5, 8, seed=10)
    guide = LossInputs(anchors=anchors + _randn(5, 8, seed=11), positives=positives + _randn(5, 8, seed=12))
    loss = build_loss('CLIPLoss', {'guide': 'fake-clip'}, 'text-image')
    scale = torch.tensor(math.log(1 / 0.07))
    got = loss(LossInputs(anchors=anchors, positives=positives, guide=guide, logit_scale=scale))
    expected, masked, _ = _direct(anchors, positives, None, guide, 0.0, 1 / 0.07)
    torch.testing.assert_close(got, expected.to(got.dtype))
    assert masked > 0
    nested = build_loss('InfoNCE', {'guide': 'fake-text', 'matryoshka_dims': [8, 4]}, 'pairs', embedding_dim=8)
    cut = LossInputs(anchors=anchors[:, :4], positives=positives[:, :4], guide=guide)
    plain = build_loss('InfoNCE', {'guide': 'fake-text'}, 'pairs')
    torch.testing.assert_close(nested(LossInputs(anchors=anchors, positives=positives, guide=guide)),
                               plain(LossInputs(anchors=anchors, positives=positives, guide=guide)) + plain(cut))
    # counted once per batch (both directions), not once per size: plain saw the batch twice
    assert nested.guide_counts()[1] == 2 * 5 * 4 and nested.guide_counts() == tuple(
        c // 2 for c in plain.guide_counts())


def test_guide_options_are_checked():
    with pytest.raises(OptionError, match="'guide'"):
        build_loss('InfoNCE', {'guide': 3}, 'pairs')
    with pytest.raises(OptionError, match="'guide_margin'"):
        build_loss('InfoNCE', {'guide': 'fake-text', 'guide_margin': 'wide'}, 'pairs')
    with pytest.raises(OptionError, match='guide'):
        build_loss('TripletMarginLoss', {'guide': 'fake-text'}, 'pairs')
    loss = build_loss('InfoNCE', {'guide': 'fake-text'}, 'pairs')
    with pytest.raises(OptionError, match='no guide embeddings'):
        loss(LossInputs(anchors=_randn(3, 4, seed=1), positives=_randn(3, 4, seed=2)))


def _guided_module(rows, kind_name='pairs', **options):
    torch.manual_seed(0)
    model = _no_dropout(finetune.build_model('fake-text')).train()
    torch.manual_seed(5)
    guide = finetune.build_model('fake-text')  # another random model: it disagrees with the model in places
    loss = build_loss('InfoNCE', {'guide': guide, 'guide_margin': 0.05, **options}, kind_name)
    module = TrainingModule(model, loss, get_kind(kind_name))
    data = load_data(rows, kind=kind_name)
    collator = Collator(kind_name, model.preprocess, model.preprocess, guide=guide_preprocessors(loss, data))
    kind = get_kind(kind_name)
    batch = collator([kind.row(data, i) for i in range(8)])
    return module, batch


@pytest.mark.parametrize('kind_name', ['pairs', 'margin-triplets'])
def test_gradcache_with_a_guide_equals_the_whole_batch(kind_name):
    rows = text_pairs()[:8] if kind_name == 'pairs' else \
        [(q, d, text_pairs()[(i + 3) % 8][1], 0.5) for i, (q, d) in enumerate(text_pairs()[:8])]
    module, batch = _guided_module(rows, kind_name, mini_batch_size=3)
    assert set(batch['guide']) == set(batch) - {'guide'}
    whole = module(batch)
    whole.backward()
    expected, counts = _grads(module), module.loss.guide_counts()
    assert 0 < counts[0] < counts[1]
    assert not any(p.grad is not None for p in module.loss.guide.parameters())
    module.zero_grad(set_to_none=True)
    module.loss.reset_guide_counts()
    step = CachedStep(module, 3, contextlib.nullcontext, lambda v: v.backward())
    value, sides = step.loss(batch, torch.device('cpu'))
    step.backpropagate(value, sides, torch.device('cpu'))
    assert value.item() == pytest.approx(whole.item(), abs=1e-6)
    _assert_same_grads(_grads(module), expected)
    assert module.loss.guide_counts() == counts
    assert not any(name.startswith('loss.guide') for name in module.state_dict())  # not saved, not trained


def test_fit_with_a_guide_logs_the_masked_negatives_and_saves_its_config(tmp_path):
    lines = []
    guide = finetune.build_model('fake-text')
    result = finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=8, num_workers=0, precision='fp32',
                          loss_options={'guide': guide, 'guide_margin': 0.1}, log=lines.append,
                          output_dir=str(tmp_path / 'run'))
    assert any('guide: masked' in line and 'epoch 1' in line for line in lines), lines
    assert result.model is not None
    by_name = finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=8, num_workers=0, precision='fp32',
                           loss_options={'guide': 'fake-text'}, log=lines.append)
    assert by_name.model is not None


def test_a_clip_guide_embeds_each_side_with_its_tower():
    """CLIPLoss on text-image rows with a two-tower guide: texts through its text tower, images through its image
    tower."""
    import numpy as np
    rng = np.random.default_rng(0)
    colours = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220), 'grey': (128, 128, 128)}
    rows = [(f'a {name} car {i}', np.clip(rng.normal(0, 20, (32, 32, 3)) + rgb, 0, 255).astype(np.uint8))
            for name, rgb in colours.items() for i in range(2)]
    lines = []
    run = finetune.fit('fake-clip', rows, epochs=1, batch_size=4, num_workers=0, precision='fp32', log=lines.append,
                       loss='CLIPLoss', loss_options={'guide': 'fake-clip', 'guide_margin': 0.5})
    assert run.model is not None and any('guide: masked' in line for line in lines), lines
