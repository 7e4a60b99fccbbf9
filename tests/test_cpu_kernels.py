"""The CPU training paths of finetune.training.cpu_kernels: embedding gradients of the rows looked up, dropout
masks from 16 random bits."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import finetune
from finetune.training.cpu_kernels import MASK_LEVELS, CpuKernels, QuickDropout, RowGradients, dropout_mask


class TwoTables(nn.Module):
    """A word table (padding row 0) looked up several times per loss, and a small table beside it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.words = nn.Embedding(50, 8, padding_idx=0)
        self.kinds = nn.Embedding(3, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, ids, kinds):
        return self.out(torch.tanh(self.words(ids) + self.kinds(kinds))).sum(1)


def _loss(model, generator_seed=0):
    g = torch.Generator().manual_seed(generator_seed)
    total = 0
    for length in (5, 3, 7):  # three lookups of different shapes, padding (id 0) in each
        ids = torch.randint(0, 50, (4, length), generator=g)
        ids[:, -1] = 0
        kinds = torch.randint(0, 3, (4, length), generator=g)
        total = total + model(ids, kinds).pow(2).mean()
    return total


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gradients_equal_the_dense_ones_over_several_lookups_and_micro_batches():
    model = TwoTables()
    for seed in (0, 1):  # two micro-batches accumulate
        _loss(model, seed).backward()
    dense = _grads(model)
    model.zero_grad(set_to_none=True)
    with CpuKernels(model, 'cpu') as kernels:
        rows = kernels.parts[0]
        assert len(rows.hooks) == 2
        for step in range(2):  # the buffer is reused by the next step, and cleared first
            model.zero_grad(set_to_none=True)
            for seed in (0, 1):
                _loss(model, seed).backward()
            got = _grads(model)
            assert set(got) == set(dense)
            for name in dense:
                assert not got[name].is_sparse
                torch.testing.assert_close(got[name], dense[name], rtol=1e-5, atol=1e-6)
        assert torch.all(model.words.weight.grad[0] == 0)  # the padding row learns nothing
        assert model.words.weight.grad.abs().sum() > 0


def test_detach_restores_the_modules_and_copies_made_meanwhile_train_densely():
    model = TwoTables()
    with CpuKernels(model, 'cpu'):
        assert type(model.words) is not nn.Embedding and isinstance(model.words, nn.Embedding)
        twin = copy.deepcopy(model)
        _loss(twin).backward()  # a copy is not attached: nn.Embedding's own dense gradient
        assert not twin.words.weight.grad.is_sparse
        with torch.no_grad():  # no graph: the plain lookup
            assert torch.equal(model.words(torch.tensor([[1, 2]])), model.words.weight[[1, 2]].unsqueeze(0))
    assert type(model.words) is nn.Embedding and type(model.kinds) is nn.Embedding
    _loss(model).backward()
    assert not model.words.weight.grad.is_sparse


def test_only_trainable_plain_tables_on_the_cpu_are_attached():
    model = TwoTables()
    model.kinds.weight.requires_grad_(False)
    with CpuKernels(model, 'cuda') as kernels:  # a GPU's allocator makes dense tables cheap: nothing to do
        assert kernels.parts == [] and type(model.words) is nn.Embedding
    rows = RowGradients(model).attach()
    assert [m for m, _ in rows.swapped.modules] == [model.words]
    rows.detach()
    model.words = nn.Embedding(50, 8, sparse=True)
    model.kinds = nn.Embedding(3, 8, max_norm=1.0)
    rows = RowGradients(model).attach()
    assert rows.swapped.modules == [] and rows.hooks == []


def test_fit_trains_the_word_table_and_gives_back_plain_modules(tmp_path):
    model = finetune.build_model('fake-text')
    table = model.backbone.embed
    before = table.weight.detach().clone()
    pairs = [('a man eats food', 'the man is eating'), ('a dog runs fast', 'the dog plays'),
             ('a red car', 'the blue car'), ('the sky is blue', 'the sea is green')] * 4
    finetune.fit(model, pairs, loss='InfoNCE', epochs=1, batch_size=4, progress=False, log=lambda m: None)
    assert type(table) is nn.Embedding
    changed = (table.weight.detach() != before).any(1)
    assert changed[1:].any() and not changed[0]  # rows learned; the padding row stayed


@pytest.mark.parametrize('accumulation', [1, 2])
def test_fit_with_and_without_row_gradients_ends_at_the_same_weights(monkeypatch, accumulation):
    """(The dropout masks are the same in both runs: only the embedding gradients differ.)"""
    pairs = [('a man eats food', 'the man is eating'), ('a dog runs fast', 'the dog plays'),
             ('a red car', 'the blue car'), ('the sky is blue', 'the sea is green'),
             ('a cat is sad', 'the old cat'), ('big house', 'a small house'), ('the woman plays piano', 'guitar'),
             ('new tree', 'an old tree')]
    weights = []
    for attach in (True, False):
        if not attach:
            monkeypatch.setattr(RowGradients, 'attach', lambda self: self)
        torch.manual_seed(0)
        model = finetune.build_model('fake-text')
        finetune.fit(model, pairs, loss='InfoNCE', epochs=2, batch_size=4, seed=3, progress=False,
                     gradient_accumulation_steps=accumulation, log=lambda m: None)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------- dropout
@pytest.mark.parametrize('p', [0.1, 0.5, 0.9])
def test_dropout_masks_drop_with_probability_p_and_keep_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(1_000_000)
    mask = dropout_mask(x, p)
    dropped = round(p * MASK_LEVELS)
    scale = MASK_LEVELS / (MASK_LEVELS - dropped)
    values = mask.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(scale)
    share = float((mask == 0).float().mean())
    sigma = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(share - p) < 5 * sigma  # a biased generator (e.g. a bit always 0) lands far outside
    assert float(mask.mean()) == pytest.approx(1.0, abs=5 * sigma * scale)
    halves = mask.view(2, -1)  # both 16-bit halves of each 32-bit draw are used, and both are uniform
    for half in (mask[0::2], mask[1::2], halves[0], halves[1]):
        assert abs(float((half == 0).float().mean()) - p) < 8 * sigma


def test_dropout_masks_repeat_with_the_seed_and_follow_the_dtype():
    x = torch.randn(3, 5, 7, dtype=torch.bfloat16)
    torch.manual_seed(4)
    first = dropout_mask(x, 0.25)
    torch.manual_seed(4)
    assert torch.equal(first, dropout_mask(x, 0.25))
    assert first.dtype == torch.bfloat16 and first.shape == x.shape
    assert not torch.equal(first, dropout_mask(x, 0.25))


def test_quick_dropout_in_training_only_with_its_gradient():
    model = nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5), nn.Dropout(0.0), nn.Dropout(0.3, inplace=True))
    quick = QuickDropout(model).attach()
    assert [m for m, _ in quick.swapped.modules] == [model[1]]
    x = torch.randn(64, 6, requires_grad=True)
    model.train()
    torch.manual_seed(1)
    y = model[1](x)
    torch.manual_seed(1)
    expected = x * dropout_mask(x, 0.5)
    assert torch.equal(y, expected)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 2.0)
    model.eval()
    assert torch.equal(model[1](x), x)
    quick.detach()
    assert type(model[1]) is nn.Dropout


def test_fit_uses_quick_dropout_and_gives_back_plain_modules(monkeypatch):
    calls = []
    real = dropout_mask
    monkeypatch.setattr('finetune.training.cpu_kernels.dropout_mask', lambda x, p: calls.append(p) or real(x, p))
    model = finetune.build_model('fake-text')
    pairs = [('a man eats food', 'the man is eating'), ('a dog runs fast', 'the dog plays'),
             ('a red car', 'the blue car'), ('the sky is blue', 'the sea is green')]
    finetune.fit(model, pairs, loss='InfoNCE', epochs=1, batch_size=4, progress=False, log=lambda m: None)
    assert calls and set(calls) == {0.1}
    assert type(model.backbone.dropout) is nn.Dropout


def test_the_cpu_paths_attach_through_the_trainers_training_context():
    """The epochs run in Trainer.training_context(): by default the CPU paths are attached there; a subclass
    that returns another context trains on torch's own modules."""
    from contextlib import nullcontext

    from finetune.training import Trainer, TrainingConfig

    class Plain(Trainer):
        def training_context(self):
            return nullcontext()

    class Watched(Trainer):
        seen: list = []

        def compute_loss(self, batch):
            backbone = self.unwrapped.backbone
            self.seen.append((type(backbone.embed), type(backbone.dropout)))
            return super().compute_loss(batch)

    class WatchedPlain(Watched, Plain):
        seen: list = []

    pairs = [('a man eats food', 'the man is eating'), ('a dog runs fast', 'the dog plays'),
             ('a red car', 'the blue car'), ('the sky is blue', 'the sea is green')]
    config = TrainingConfig.from_arguments(epochs=1, batch_size=4, num_workers=0, progress=False)
    Watched('fake-text', pairs, config=config, log=lambda m: None).train()
    WatchedPlain('fake-text', pairs, config=config, log=lambda m: None).train()
    assert Watched.seen and all(e is not nn.Embedding and d is not nn.Dropout for e, d in Watched.seen)
    assert WatchedPlain.seen and all(e is nn.Embedding and d is nn.Dropout for e, d in WatchedPlain.seen)


def test_cpu_gradient_clipping_matches_torch_and_flags_non_finite_norms():
    from accelerate import Accelerator

    from finetune.training.guard import gradients_ok
    accelerator = Accelerator(cpu=True)
    model = TwoTables()
    _loss(model).backward()
    twin = copy.deepcopy(model)
    _loss(twin).backward()
    torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.01, foreach=False)  # torch's per-tensor clip, on a copy
    expected = [p.grad for p in twin.parameters()]
    assert gradients_ok(model, accelerator, 0.01, 'fp32')
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert float(total) == pytest.approx(0.01, rel=1e-4)
    model.out.weight.grad[0, 0] = float('inf')
    assert not gradients_ok(model, accelerator, 0.01, 'fp32')


# ------------------------------------------------------------------------------ length groups, joined features
def _cuts_by_search(ordered):
    """Every way to cut into 1..LENGTH_GROUPS groups (cuts between different lengths, groups of
    LENGTH_SPLIT_ROWS rows or more): the cheapest after the per-group saving rule."""
    import itertools

    from finetune import backbone
    rows, least = len(ordered), backbone.LENGTH_SPLIT_ROWS
    places = [c for c in range(least, rows - least + 1) if ordered[c - 1] < ordered[c]]
    best = []
    for count in range(backbone.LENGTH_GROUPS):
        for cuts in itertools.combinations(places, count):
            bounds = [0, *cuts, rows]
            if all(b - a >= least for a, b in zip(bounds, bounds[1:])):
                cost = sum((b - a) * ordered[b - 1] for a, b in zip(bounds, bounds[1:]))
                best.append((cost / (1 - backbone.LENGTH_SPLIT_SAVING) ** count, list(cuts)))
    return min(best)[0] if best else None


def test_length_cuts_are_the_cheapest_by_the_rule():
    import random

    from finetune.backbone import length_cuts
    rng = random.Random(0)
    for _ in range(200):
        rows = rng.randint(8, 36)
        ordered = sorted(rng.randint(1, rng.choice([4, 30])) for _ in range(rows))
        cuts = length_cuts(torch.tensor(ordered))
        bounds = [0, *cuts, rows]
        cost = sum((b - a) * ordered[b - 1] for a, b in zip(bounds, bounds[1:])) / 0.85 ** len(cuts)
        assert cost == pytest.approx(_cuts_by_search(ordered)), ordered
        assert all(b - a >= 4 for a, b in zip(bounds, bounds[1:]))
    assert length_cuts(torch.tensor([3] * 20)) == [] and length_cuts(torch.tensor([1, 9] * 3)) == []
    assert length_cuts(torch.tensor([1] * 12 + [12] * 12 + [40] * 12)) == [12, 24]
    assert length_cuts(torch.tensor([2] * 10 + [8] * 10 + [30] * 10)) == [20]  # a third group saves too little


def test_join_features_pads_tokens_and_stacks_maps():
    from finetune.backbone import Features, join_features
    a = Features(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.long))
    b = Features(torch.full((1, 5, 4), 2.0), torch.ones(1, 5, dtype=torch.long))
    joined = join_features([a, b])
    assert joined.tensor.shape == (3, 5, 4) and joined.mask.tolist() == [[1, 1, 1, 0, 0]] * 2 + [[1] * 5]
    assert float(joined.tensor[:2, 3:].abs().sum()) == 0 and torch.equal(joined.tensor[2], b.tensor[0])
    maps = join_features([Features(torch.ones(2, 4, 3, 3)), Features(torch.zeros(1, 4, 3, 3))])
    assert maps.tensor.shape == (3, 4, 3, 3) and maps.mask is None
    assert join_features([Features(torch.ones(2, 4, 3, 3)), Features(torch.ones(1, 4, 2, 2))]) is None
    assert join_features([a, Features(torch.ones(1, 5, 4))]) is None  # one masked, one not


def test_swapped_modules_pickle_and_copy_as_their_own_class():
    import pickle
    model = nn.Sequential(nn.Embedding(5, 3), nn.Dropout(0.2))
    with CpuKernels(model, 'cpu'):
        assert type(model[0]) is not nn.Embedding
        copied = copy.deepcopy(model)
        unpickled = pickle.loads(pickle.dumps(model))
        for twin in (copied, unpickled):
            assert type(twin[0]) is nn.Embedding and type(twin[1]) is nn.Dropout
            assert torch.equal(twin[0].weight, model[0].weight)
        assert type(model[0]) is not nn.Embedding  # the original stays attached
        assert model[1](input=torch.ones(4)).shape == (4,)  # called by keyword, as torch's forward allows


def test_edge_cases_of_the_cpu_paths():
    model = nn.Sequential(nn.Embedding(5, 3), nn.Dropout(0.99999999))
    with CpuKernels(model, 'cpu'):
        model.train()
        assert torch.equal(model[1](torch.ones(6)), torch.zeros(6))  # drops all, as p rounds to 1
        out = model[0](torch.zeros(0, 2, dtype=torch.long))  # no rows looked up
        (out.sum() + model[0](torch.tensor([1])).sum()).backward()
        assert model[0].weight.grad.shape == (5, 3) and float(model[0].weight.grad[1].sum()) == 3.0


# ------------------------------------------------------------------------------------------------- the choice
def test_auto_chooses_by_thread_count_and_nothing_off_a_cpu():
    from finetune.training.cpu_kernels import QUICK_DROPOUT_MAX_THREADS, choose
    assert choose('auto', 'cpu', 1) == ('row gradients', 'quick dropout')
    assert choose('auto', 'cpu', QUICK_DROPOUT_MAX_THREADS + 1) == ('row gradients',)
    assert choose(True, 'cpu', 64) == ('row gradients', 'quick dropout')
    assert choose(False, 'cpu', 1) == () and choose(True, 'cuda', 1) == () and choose('auto', 'meta', 1) == ()


@pytest.mark.parametrize('setting, expected', [(False, ()), (True, ('row gradients', 'quick dropout'))])
def test_fit_attaches_what_cpu_kernels_says_logs_it_and_saves_it(setting, expected):
    seen, logs = [], []

    class Look(finetune.callbacks.Callback):
        def on_step_end(self, state):
            seen.append((type(model.backbone.embed) is nn.Embedding,
                         all(type(m) is nn.Dropout for m in model.modules() if isinstance(m, nn.Dropout))))
    model = finetune.build_model('fake-text')
    pairs = [('a man eats food', 'the man is eating'), ('a dog runs fast', 'the dog plays')] * 4
    run = finetune.fit(model, pairs, loss='InfoNCE', epochs=1, batch_size=4, progress=False, cpu_kernels=setting,
                       callbacks=[Look()], log=logs.append)
    plain = not expected
    assert seen and all(embed is plain for embed, _ in seen)
    assert run.config['cpu_kernels'] is setting and run.config['cpu_paths'] == list(expected)
    assert any(line.startswith(f'CPU paths (cpu_kernels={setting!r}') for line in logs)
    with pytest.raises(finetune.OptionError, match=r"cpu_kernels: expected 'auto'"):
        finetune.fit(model, pairs, cpu_kernels='yes', log=lambda m: None)
