"""GradCache (loss_options mini_batch_size) and negatives gathered across processes: the gradients equal those
of the whole batch in one process."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import finetune
from finetune.data.kinds import get_kind
from finetune.errors import OptionError
from finetune.losses import build_loss
from finetune.backbone import rows_of, slice_batch
from finetune.training.gradcache import CachedStep
from finetune.training.module import TrainingModule

from test_training import coloured_squares, text_pairs


def _no_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _pairs_batch(model, rows):
    kind = get_kind('pairs')
    groups = {q: i for i, q in enumerate(dict.fromkeys(q for q, _ in rows))}
    return kind.collate([(q, d, groups[q]) for q, d in rows], model.preprocess, model.preprocess)


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _cached(module: TrainingModule, batch, size: int):
    step = CachedStep(module, size, contextlib.nullcontext, lambda v: v.backward())
    value, sides = step.loss(batch, torch.device('cpu'))
    step.backpropagate(value, sides, torch.device('cpu'))
    return value


def _assert_same_grads(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-5, msg=name)


def _training_module(name: str, loss: str, kind: str, towers=None, **loss_options) -> TrainingModule:
    torch.manual_seed(0)
    model = finetune.build_model(name)
    model.train()
    return TrainingModule(model, build_loss(loss, loss_options, kind), get_kind(kind), towers)


@pytest.mark.parametrize('size', [1, 3, 8, 100])
def test_cached_gradients_equal_the_whole_batch(size):
    module = _training_module('fake-text', 'InfoNCE', 'pairs')
    _no_dropout(module)
    batch = _pairs_batch(module.model, text_pairs()[:8])
    whole = module(batch)
    whole.backward()
    expected = _grads(module)
    module.zero_grad(set_to_none=True)
    value = _cached(module, batch, size)
    assert float(value) == pytest.approx(whole.item(), abs=1e-6)
    _assert_same_grads(_grads(module), expected)


def _chunked_reference(module: TrainingModule, batch, size: int):
    """The loss of embeddings computed chunk by chunk with a graph: what GradCache must equal for a model
    with dropout or BatchNorm (both passes see chunks)."""
    def embed(side, x, logits=False):
        n = rows_of(x)
        return torch.cat([module.embed(side, module.slice(side, x, i, i + size)) for i in range(0, n, size)])
    value = module.loss(module.kind.loss_inputs(embed, batch, module.loss,
                                                getattr(module.model, 'logit_scale', None)))
    value.backward()
    return value


@pytest.mark.parametrize('cpu_kernels', [False, True])
def test_dropout_draws_the_same_masks_in_both_passes(cpu_kernels):
    """Also with fit's CPU paths attached (cpu_kernels.QuickDropout): the first pass runs without a graph, the
    second with one, and both must draw their masks the same way."""
    from contextlib import nullcontext

    from finetune.training.cpu_kernels import CpuKernels
    module = _training_module('fake-text', 'InfoNCE', 'pairs')
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.5
    batch = _pairs_batch(module.model, text_pairs()[:8])
    with CpuKernels(module.model, 'cpu') if cpu_kernels else nullcontext():
        torch.manual_seed(1)
        reference = _chunked_reference(module, batch, 3)
        after_reference = torch.rand(1)
        expected = _grads(module)
        module.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        value = _cached(module, batch, 3)
    assert float(value) == pytest.approx(float(reference), abs=1e-6)
    _assert_same_grads(_grads(module), expected)
    assert torch.rand(1).item() == after_reference.item()  # the random stream goes on as without the cache


def test_batchnorm_and_a_learned_temperature_in_two_towers():
    """fake-clip: a BatchNorm image tower (chunk statistics, running statistics updated once per chunk) and the
    model's logit_scale, whose gradient comes from the loss pass."""
    module = _training_module('fake-clip', 'CLIPLoss', 'text-image', towers={'a': 'text', 'b': 'image'})
    images = [img for img, _ in coloured_squares(2, size=16)][:8]
    texts = [f'the {c} dog' for c in ('red', 'blue', 'green', 'old', 'new', 'big', 'small', 'happy')]
    kind = get_kind('text-image')
    towers = module.model.towers
    batch = kind.collate([(t, i, n) for n, (t, i) in enumerate(zip(texts, images))], towers['text'].preprocess,
                         towers['image'].preprocess)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    _chunked_reference(module, batch, 4)
    expected, expected_state = _grads(module), {k: v.clone() for k, v in module.state_dict().items()}
    module.load_state_dict(initial)
    module.zero_grad(set_to_none=True)
    _cached(module, batch, 4)
    got = _grads(module)
    assert 'model.logit_scale' in got
    _assert_same_grads(got, expected, atol=1e-5)
    for name, value in module.state_dict().items():  # running statistics: one update per chunk, not two
        torch.testing.assert_close(value, expected_state[name], msg=name)


def test_fit_with_mini_batches_trains_the_same_model():
    data = text_pairs()
    runs = []
    for options in (None, {'mini_batch_size': 3}):
        torch.manual_seed(0)
        model = _no_dropout(finetune.build_model('fake-text'))
        runs.append(finetune.fit(model, data, epochs=2, batch_size=8, seed=3, num_workers=0, precision='fp32',
                                 loss_options=options, learning_rate=1e-2, log=lambda m: None))
    for (name, a), (_, b) in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_mini_batch_size_is_validated():
    with pytest.raises(OptionError, match='mini_batch_size'):
        build_loss('InfoNCE', {'mini_batch_size': 0}, 'pairs')
    with pytest.raises(OptionError, match='mini_batch_size'):
        build_loss('TripletMarginLoss', {'mini_batch_size': 4}, 'pairs')


def test_slice_batch_cuts_every_tensor_of_an_input():
    x = {'input_ids': torch.arange(10).reshape(5, 2), 'nested': [torch.ones(5, 3)], 'name': 'keep'}
    part = slice_batch(x, 1, 3)
    assert part['input_ids'].tolist() == [[2, 3], [4, 5]] and part['nested'][0].shape == (2, 3)
    assert part['name'] == 'keep' and rows_of(x) == 5


DISTRIBUTED = '''
import json, os, sys, contextlib, torch
import torch.distributed as dist
sys.path.insert(0, {tests!r})
import finetune
from torch.nn.parallel import DistributedDataParallel
from finetune.training.gradcache import CachedStep, all_reduce_gradients
from test_gradcache import _training_module, _no_dropout, _pairs_batch, _grads
from test_training import text_pairs

dist.init_process_group('gloo')
rank, world = dist.get_rank(), dist.get_world_size()
rows = text_pairs()[:8]
lo, hi = {split}[rank], {split}[rank + 1]
out = {{}}
for mode in ('ddp', 'cached'):
    module = _no_dropout(_training_module('fake-text', 'InfoNCE', 'pairs', learnable_temperature=True))
    batch = _pairs_batch(module.model, rows)
    part = {{'a': {{k: v[lo:hi] for k, v in batch['a'].items()}}, 'b': {{k: v[lo:hi] for k, v in batch['b'].items()}},
            'groups': batch['groups'][lo:hi]}}
    if mode == 'ddp':
        wrapped = DistributedDataParallel(module)
        value = wrapped(part)
        value.backward()
    else:
        step = CachedStep(module, 3, contextlib.nullcontext, lambda v: v.backward())
        value, sides = step.loss(part, torch.device('cpu'))
        step.backpropagate(value, sides, torch.device('cpu'))
        all_reduce_gradients(module, world)
    out[mode] = {{'loss': float(value), 'grads': {{k: v.tolist() for k, v in _grads(module).items()}}}}
with open(os.path.join({folder!r}, f'rank{{rank}}.json'), 'w') as f:
    json.dump(out, f)
dist.destroy_process_group()
'''


@pytest.mark.slow
@pytest.mark.parametrize('split', [[0, 4, 8], [0, 6, 8]])
def test_two_processes_see_the_global_batch_as_negatives(tmp_path, split):
    """2 gloo processes, 4 rows each (or 6 and 2: an epoch's short last batch): the loss and the gradients
    (plain DDP, and GradCache with its own all-reduce) equal one process on the 8 rows."""
    script = tmp_path / 'gather.py'
    script.write_text(DISTRIBUTED.format(tests=os.path.dirname(__file__), folder=str(tmp_path), split=split))
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                             '--master_port', str(29541 + split[1]), str(script)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    module = _no_dropout(_training_module('fake-text', 'InfoNCE', 'pairs', learnable_temperature=True))
    whole = module(_pairs_batch(module.model, text_pairs()[:8]))
    whole.backward()
    expected = _grads(module)
    for rank in (0, 1):
        found = json.loads((tmp_path / f'rank{rank}.json').read_text())
        for mode in ('ddp', 'cached'):
            assert found[mode]['loss'] == pytest.approx(float(whole), abs=1e-5)
            _assert_same_grads({k: torch.tensor(v) for k, v in found[mode]['grads'].items()}, expected, atol=1e-5)


def _margin_triplets_batch(model):
    kind = get_kind('margin-triplets')
    rows = [(q, d, text_pairs()[(i + 3) % 8][1], 0.5 + i / 10, i) for i, (q, d) in enumerate(text_pairs()[:8])]
    return kind.collate(rows, model.preprocess, model.preprocess)


def test_cached_hard_negatives_equal_the_whole_batch():
    """Margin-triplets rows embed the negatives through the same callback: GradCache covers them too, and
    the two embeddings of the documents' side (positives, negatives) get their own gradients."""
    module = _training_module('fake-text', 'InfoNCE', 'margin-triplets', mini_batch_size=3)
    _no_dropout(module)
    batch = _margin_triplets_batch(module.model)
    whole = module(batch)
    whole.backward()
    expected = _grads(module)
    module.zero_grad(set_to_none=True)
    value = _cached(module, batch, 3)
    assert float(value) == pytest.approx(whole.item(), abs=1e-6)
    _assert_same_grads(_grads(module), expected)


def test_length_grouping_sees_the_hard_negatives():
    from finetune.data import load_data
    from finetune.training.setup import text_lengths
    data = load_data([('a query', 'its document', 'a much longer negative document', 0.7),
                      ('q', 'd', 'n', 0.1)], kind='margin-triplets')
    assert text_lengths(data) == [(7, 12, 31), (1, 1, 1)]


def test_gradcache_with_matryoshka_trains_the_same_model():
    """The cached second pass backpropagates the Matryoshka sum: the same model as the whole batch at once."""
    runs = []
    for chunk in (None, 3):
        options = {'matryoshka_dims': [32, 16, 8, 4], **({'mini_batch_size': chunk} if chunk else {})}
        torch.manual_seed(0)
        model = _no_dropout(finetune.build_model('fake-text'))
        runs.append(finetune.fit(model, text_pairs(), epochs=2, batch_size=8, seed=3, num_workers=0, precision='fp32',
                                 loss_options=options, learning_rate=1e-2, log=lambda m: None))
    for (name, a), (_, b) in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
