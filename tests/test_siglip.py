"""SigLIPLoss against a hand-written loop (value and gradients), with group ids, hard negatives, Matryoshka,
GradCache and two processes."""
from __future__ import annotations

import contextlib
import json
import math
import os
import textwrap

import pytest
import torch

from finetune.data.kinds import get_kind
from finetune.errors import OptionError
from finetune.losses import LossInputs, SigLIPLoss, build_loss, loss_class

from launch import two_processes


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference(anchors, positives, log_scale, bias, groups=None, negatives=None):
    """The SigLIP loss written out pair by pair: -sum log sigmoid(y * (t * cos + b)) / n."""
    n = anchors.shape[0]
    t = log_scale.exp()
    total = 0.0
    candidates = [(positives[j], j) for j in range(n)] + \
        ([(negatives[j], None) for j in range(negatives.shape[0])] if negatives is not None else [])
    for i in range(n):
        a = anchors[i] / anchors[i].norm()
        for c, j in candidates:
            cos = (a * (c / c.norm())).sum()
            together = j is not None and (j == i or (groups is not None and groups[i] == groups[j]))
            y = 1.0 if together else -1.0
            total = total - torch.log(1 / (1 + torch.exp(-y * (t * cos + bias))))
    return total / n


def _leaves(*tensors):
    return [t.clone().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize('case', ['plain', 'groups', 'negatives'])
def test_siglip_equals_the_loop_in_value_and_gradients(case):
    anchors, positives, negatives = _leaves(_randn(5, 6, seed=1), _randn(5, 6, seed=2), _randn(5, 6, seed=3))
    groups = torch.tensor([0, 1, 1, 2, 3]) if case == 'groups' else None
    negatives = negatives if case == 'negatives' else None
    loss = SigLIPLoss(temperature=0.2, bias=-3.0).double()
    got = loss(LossInputs(anchors=anchors, positives=positives, labels=groups, negatives=negatives))
    grads = torch.autograd.grad(got, [anchors, positives, loss.log_scale, loss.logit_bias])
    log_scale, bias = _leaves(torch.tensor(math.log(5.0), dtype=torch.float64),
                              torch.tensor(-3.0, dtype=torch.float64))
    a, p = _leaves(anchors.detach(), positives.detach())
    expected = _reference(a, p, log_scale, bias, groups, negatives)
    want = torch.autograd.grad(expected, [a, p, log_scale, bias])
    torch.testing.assert_close(got, expected)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w)


def test_siglip_defaults_are_the_papers_and_learn():
    loss = build_loss('SigLIP', None, 'text-image')
    assert isinstance(loss, SigLIPLoss) and loss_class('siglip') is SigLIPLoss
    assert math.exp(loss.log_scale.item()) == pytest.approx(10.0) and loss.logit_bias.item() == -10.0
    assert loss.log_scale.requires_grad and loss.logit_bias.requires_grad
    fixed = build_loss('SigLIPLoss', {'learnable_bias': False, 'bias': 0.5}, 'pairs')
    assert not fixed.logit_bias.requires_grad and fixed.logit_bias.item() == 0.5
    with pytest.raises(OptionError, match="'bias'"):
        build_loss('SigLIPLoss', {'bias': 'low'}, 'pairs')
    with pytest.raises(OptionError, match='temperature'):
        build_loss('SigLIPLoss', {'temperature': 0}, 'pairs')


def test_siglip_keeps_its_log_scale_within_100_as_open_clip():
    loss = SigLIPLoss().double()
    with torch.no_grad():
        loss.log_scale.fill_(math.log(1000.0))
    a, p = _randn(4, 3, seed=4), _randn(4, 3, seed=5)
    value = loss(LossInputs(anchors=a, positives=p))
    assert loss.log_scale.item() == pytest.approx(math.log(100.0))
    value.backward()
    assert loss.log_scale.grad.item() != 0.0


def test_siglip_with_matryoshka_is_the_sum_over_the_cut_embeddings():
    from finetune.functional import l2_normalize
    a, p = _randn(6, 8, seed=6), _randn(6, 8, seed=7)
    nested = build_loss('SigLIPLoss', {'matryoshka_dims': [8, 4], 'matryoshka_weights': [1, 0.5]}, 'pairs',
                        embedding_dim=8).double()
    log_scale, bias = nested.log_scale.detach(), nested.logit_bias.detach()
    cut = lambda x, d: l2_normalize(x[:, :d], dim=-1)  # noqa: E731
    expected = _reference(a, p, log_scale, bias) + 0.5 * _reference(cut(a, 4), cut(p, 4), log_scale, bias)
    torch.testing.assert_close(nested(LossInputs(anchors=a, positives=p)), expected)


def test_siglip_under_gradcache_equals_the_whole_batch():
    import finetune
    from finetune.training.gradcache import CachedStep
    from finetune.training.module import TrainingModule
    from test_gradcache import _assert_same_grads, _grads, _no_dropout, _pairs_batch
    from test_training import text_pairs
    torch.manual_seed(0)
    model = _no_dropout(finetune.build_model('fake-text')).train()
    module = TrainingModule(model, build_loss('SigLIPLoss', {'mini_batch_size': 3}, 'pairs'), get_kind('pairs'))
    batch = _pairs_batch(model, text_pairs()[:8])
    whole = module(batch)
    whole.backward()
    expected = _grads(module)
    assert 'loss.logit_bias' in expected and 'loss.log_scale' in expected
    module.zero_grad(set_to_none=True)
    step = CachedStep(module, 3, contextlib.nullcontext, lambda v: v.backward())
    value, sides = step.loss(batch, torch.device('cpu'))
    step.backpropagate(value, sides, torch.device('cpu'))
    assert value.item() == pytest.approx(whole.item(), abs=1e-6)
    _assert_same_grads(_grads(module), expected)


@pytest.mark.slow
def test_two_processes_give_the_gradient_of_the_global_loss(tmp_path):
    """2 gloo processes of 4 rows each: each scores its anchors against all 8 positives; after the average of
    the gradients (what DDP does), they equal the gradient of the 8-row loss in one process."""
    script = tmp_path / 'siglip.py'
    script.write_text(textwrap.dedent(f'''
        import json, math, os, torch
        import torch.distributed as dist
        from finetune.losses import LossInputs, SigLIPLoss
        dist.init_process_group('gloo')
        rank = dist.get_rank()
        g = torch.Generator().manual_seed(0)
        a, p = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)
        groups = torch.tensor([0, 1, 2, 3, 3, 4, 5, 6])
        mine = slice(4 * rank, 4 * rank + 4)
        a, p = a[mine].clone().requires_grad_(True), p[mine].clone().requires_grad_(True)
        loss = SigLIPLoss(temperature=0.3, bias=-2.0).double()
        value = loss(LossInputs(anchors=a, positives=p, labels=groups[mine]))
        value.backward()
        grads = [a.grad, p.grad, loss.log_scale.grad, loss.logit_bias.grad]
        for grad in grads[2:]:
            dist.all_reduce(grad)
            grad /= 2  # what DDP does to the parameters' gradients
        with open(os.path.join({str(tmp_path)!r}, f'rank{{rank}}.json'), 'w') as f:
            json.dump({{'loss': float(value), 'grads': [x.tolist() for x in grads]}}, f)
        dist.destroy_process_group()
    '''))
    result = two_processes(str(script), 29571)
    assert result.returncode == 0, result.stderr[-3000:]
    g = torch.Generator().manual_seed(0)
    a, p = _leaves(torch.randn(8, 5, generator=g, dtype=torch.float64),
                   torch.randn(8, 5, generator=g, dtype=torch.float64))
    loss = SigLIPLoss(temperature=0.3, bias=-2.0).double()
    whole = loss(LossInputs(anchors=a, positives=p, labels=torch.tensor([0, 1, 2, 3, 3, 4, 5, 6])))
    whole.backward()
    found = [json.loads((tmp_path / f'rank{rank}.json').read_text()) for rank in (0, 1)]
    # the mean of the processes' losses is the global loss; each row's gradient is that of the global loss
    # times the number of processes (DDP's average divides parameter gradients by it)
    assert (found[0]['loss'] + found[1]['loss']) / 2 == pytest.approx(whole.item(), abs=1e-10)
    for rank in (0, 1):
        rows = slice(4 * rank, 4 * rank + 4)
        torch.testing.assert_close(torch.tensor(found[rank]['grads'][0], dtype=torch.float64) / 2, a.grad[rows])
        torch.testing.assert_close(torch.tensor(found[rank]['grads'][1], dtype=torch.float64) / 2, p.grad[rows])
        torch.testing.assert_close(torch.tensor(found[rank]['grads'][2], dtype=torch.float64), loss.log_scale.grad)
        torch.testing.assert_close(torch.tensor(found[rank]['grads'][3], dtype=torch.float64), loss.logit_bias.grad)


def test_fit_trains_with_siglip():
    import finetune
    from test_training import text_pairs
    run = finetune.fit('fake-text', text_pairs(), loss='SigLIP', epochs=1, batch_size=8, num_workers=0,
                       precision='fp32', loss_learning_rate=0.1, log=lambda m: None)
    assert run.config['loss'] in ('SigLIP', 'SigLIPLoss')
    losses = [entry['loss'] for entry in run.history if entry.get('loss') is not None]
    assert losses and all(math.isfinite(v) for v in losses)
