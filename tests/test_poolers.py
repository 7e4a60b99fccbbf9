"""Poolers: GeM / avg / max / cls / last on image maps and masked token sequences, and their options."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from finetune.errors import OptionError
from finetune.poolers import (ClsPooler, GeMPooler, LastPooler, MaxPooler, MeanPooler, build_pooler,
                              canonical_pooler_name, pooler_class, pooler_names, validate_pooler_options)


def _positive(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen) * 2.0 + 0.1  # in [0.1, 2.1): clear of GeM's eps clamp


# ---------------------------------------------------------------- GeM limits

def test_gem_p1_equals_average_on_maps():
    x = _positive(2, 5, 4, 3)
    out = GeMPooler(p=1.0)(x)
    expected = x.sum(dim=(2, 3)) / 12.0
    assert out.shape == (2, 5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_gem_p1_equals_average_on_tokens():
    x = _positive(3, 7, 6, seed=1)
    out = GeMPooler(p=1.0)(x)
    expected = x.sum(dim=1) / 7.0
    assert out.shape == (3, 6)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_gem_matches_its_formula_for_p3():
    x = _positive(2, 4, 3, 3, seed=2)
    out = GeMPooler(p=3.0)(x)
    expected = (x ** 3).mean(dim=(2, 3)) ** (1.0 / 3.0)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_gem_with_large_p_approaches_max_on_maps():
    x = _positive(2, 8, 4, 4, seed=3)
    n = 16
    peak = x.amax(dim=(2, 3))
    mean = x.mean(dim=(2, 3))
    out50 = GeMPooler(p=50.0)(x)
    out10 = GeMPooler(p=10.0)(x)
    # mean(x**p)**(1/p) lies between max * n**(-1/p) and max
    assert torch.all(out50 <= peak * (1 + 1e-5))
    assert torch.all(out50 >= peak * n ** (-1 / 50) * (1 - 1e-5))
    torch.testing.assert_close(out50, peak, rtol=0.06, atol=0.0)
    # and it is much nearer the max than the average, and nearer than a small p
    assert torch.all((out50 - peak).abs() < (mean - peak).abs())
    assert torch.all((out50 - peak).abs() <= (out10 - peak).abs() + 1e-6)


def test_gem_with_large_p_approaches_max_on_tokens():
    x = _positive(2, 5, 4, seed=4)
    out = GeMPooler(p=50.0)(x)
    torch.testing.assert_close(out, x.amax(dim=1), rtol=5 ** (1 / 50) - 1 + 1e-4, atol=0.0)


def test_gem_with_large_p_on_large_activations_does_not_overflow():
    # ReLU features of ~10-20 are common; 20 ** 50 is far beyond float32's range (3.4e38)
    x = _positive(2, 8, 4, 4, seed=15) * 10.0
    out = GeMPooler(p=50.0)(x)
    assert torch.isfinite(out).all()
    peak = x.amax(dim=(2, 3))
    assert torch.all(out <= peak * (1 + 1e-5))
    assert torch.all(out >= peak * 16 ** (-1 / 50) * (1 - 1e-5))


@pytest.mark.parametrize('p', [3.0, 10.0, 50.0])
def test_gem_gradient_is_finite_when_a_channel_is_all_zero(p):
    # a dead ReLU channel (all zeros, clamped to eps) must not turn p's gradient into NaN:
    # eps ** p underflows to 0 in float32 once p is about 7 or more
    x = torch.zeros(2, 3, 4, 4)
    x[:, 0] = _positive(2, 4, 4, seed=16)
    x.requires_grad_(True)
    pooler = GeMPooler(p=p)
    out = pooler(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 1:], torch.full((2, 2), 1e-6), rtol=1e-3, atol=0.0)
    out.sum().backward()
    assert torch.isfinite(pooler.p.grad)
    assert torch.isfinite(x.grad).all()


def test_gem_gradient_matches_formula_for_p():
    # d/dp of mean(x ** p) ** (1 / p), computed independently with plain float64 autograd
    x = _positive(1, 2, 3, 3, seed=17)
    pooler = GeMPooler(p=2.5)
    pooler(x).sum().backward()
    p64 = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    ((x.double() ** p64).mean(dim=(2, 3)) ** (1 / p64)).sum().backward()
    assert pooler.p.grad.item() == pytest.approx(p64.grad.item(), rel=1e-4)


# ---------------------------------------------------------------- padding never leaks

@pytest.mark.parametrize('name', ['avg', 'mean', 'max', 'GeM'])
def test_padding_under_mask_zero_does_not_change_the_pooled_vector(name):
    pooler = build_pooler(name)
    gen = torch.Generator().manual_seed(5)
    real = torch.rand(1, 4, 6, generator=gen) + 0.05
    alone = pooler(real, torch.ones(1, 4, dtype=torch.long))
    alone_no_mask = pooler(real)
    garbage = torch.full((1, 3, 6), 1e4)
    garbage[0, 1] = -1e4
    padded = torch.cat([real, garbage], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]])
    out = pooler(padded, mask)
    torch.testing.assert_close(out, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(alone_no_mask, alone, rtol=0, atol=1e-5)
    # the same padding without the mask would change the result: the mask is what removes it
    assert (pooler(padded) - alone).abs().max() > 1.0


@pytest.mark.parametrize('name', ['avg', 'max', 'GeM'])
def test_masked_batch_pools_each_row_over_its_own_tokens(name):
    pooler = build_pooler(name)
    a = _positive(1, 2, 3, seed=6)
    b = _positive(1, 5, 3, seed=7)
    batch = torch.cat([torch.cat([a, torch.full((1, 3, 3), 50.0)], dim=1), b], dim=0)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = pooler(batch, mask)
    torch.testing.assert_close(out[0], pooler(a)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], pooler(b)[0], rtol=0, atol=1e-5)


def test_gem_large_p_padding_and_empty_rows_stay_finite():
    pooler = GeMPooler(p=20.0)
    real = _positive(1, 3, 4, seed=18)
    x = torch.cat([real, torch.full((1, 2, 4), 1e4)], dim=1).repeat(2, 1, 1)  # 1e4 ** 20 overflows
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])  # the second row has no real token
    x.requires_grad_(True)
    out = pooler(x, mask)
    torch.testing.assert_close(out[0], pooler(real)[0], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out).all()
    assert torch.all(out[1].abs() < 1e-3)
    out.sum().backward()
    assert torch.isfinite(pooler.p.grad)
    assert torch.isfinite(x.grad).all()


def test_max_pooler_masks_padding_even_when_real_values_are_negative():
    real = -_positive(1, 3, 4, seed=8)
    padded = torch.cat([real, torch.zeros(1, 2, 4)], dim=1)
    out = MaxPooler()(padded, torch.tensor([[1, 1, 1, 0, 0]]))
    torch.testing.assert_close(out, real.amax(dim=1), rtol=0, atol=1e-6)
    assert torch.all(out < 0)


def test_mean_pooler_on_maps_is_spatial_average():
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(MeanPooler()(x), x.mean(dim=(2, 3)))
    torch.testing.assert_close(MaxPooler()(x), x.flatten(2).max(dim=2).values)


# ---------------------------------------------------------------- cls

def test_cls_takes_token_zero():
    x = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(10))
    out = ClsPooler()(x, torch.ones(3, 6))
    assert out.shape == (3, 4)
    assert torch.equal(out, x[:, 0])


def test_cls_refuses_image_maps():
    with pytest.raises(ValueError, match='token'):
        ClsPooler()(torch.randn(2, 3, 4, 4))
    assert pooler_class('cls').layouts == ('tokens',)


# ---------------------------------------------------------------- last

def test_last_takes_the_last_real_token_with_padding_on_either_side():
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(13))
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    torch.testing.assert_close(LastPooler()(x, right), torch.stack([x[0, 2], x[1, 4], x[2, 0]]))
    left = right.flip(1)  # padding on the left: the last position is every row's last real token
    torch.testing.assert_close(LastPooler()(x, left), x[:, -1])
    torch.testing.assert_close(LastPooler()(x), x[:, -1])  # no mask: every position is real


def test_last_ignores_what_the_padding_holds_and_passes_the_gradient_to_one_token():
    x = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(14)).requires_grad_(True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    out = build_pooler('last')(x, mask)
    changed = x.detach().clone()
    changed[mask == 0] = 1e6
    torch.testing.assert_close(LastPooler()(changed, mask), out.detach())
    out.sum().backward()
    assert (x.grad.abs().sum(-1) > 0).tolist() == [[False, True, False, False], [False, False, True, False]]


def test_last_refuses_image_maps():
    with pytest.raises(ValueError, match='token'):
        LastPooler()(torch.randn(2, 3, 4, 4))
    assert pooler_class('LAST').layouts == ('tokens',) and canonical_pooler_name('Last') == 'last'


@pytest.mark.parametrize('name', ['avg', 'max', 'GeM', 'cls', 'last'])
def test_poolers_reject_other_ranks(name):
    with pytest.raises(ValueError, match='got shape'):
        build_pooler(name)(torch.randn(2, 3))


# ---------------------------------------------------------------- learnable p

def test_gem_p_is_a_learnable_parameter_with_a_gradient():
    pooler = GeMPooler(p=3.0)
    assert isinstance(pooler.p, nn.Parameter)
    assert pooler.p.requires_grad
    assert [name for name, _ in pooler.named_parameters()] == ['p']
    pooler(_positive(2, 4, 3, 3, seed=11)).sum().backward()
    assert pooler.p.grad is not None
    assert torch.isfinite(pooler.p.grad) and pooler.p.grad.abs() > 0
    # an optimizer step changes p
    before = pooler.p.item()
    torch.optim.SGD(pooler.parameters(), lr=0.1).step()
    assert pooler.p.item() != before


def test_gem_learnable_false_freezes_p():
    pooler = build_pooler('GeM', {'p': 2.5, 'learnable': False})
    assert pooler.p.item() == pytest.approx(2.5)
    assert not pooler.p.requires_grad
    x = _positive(2, 4, 3, 3, seed=12).requires_grad_(True)
    pooler(x).sum().backward()
    assert x.grad is not None  # the input still gets its gradient
    assert pooler.p.grad is None


def test_build_pooler_passes_options_through():
    pooler = build_pooler('gem', {'p': 4.0, 'eps': 1e-3})
    assert isinstance(pooler, GeMPooler)
    assert pooler.p.item() == pytest.approx(4.0)
    assert pooler.eps == pytest.approx(1e-3)
    assert pooler.p.requires_grad


def test_gem_clamps_inputs_at_eps():
    x = torch.full((1, 2, 2, 2), -5.0)
    out = GeMPooler(p=3.0, eps=0.25)(x)
    torch.testing.assert_close(out, torch.full((1, 2), 0.25))


# ---------------------------------------------------------------- names

@pytest.mark.parametrize('spelling, canonical, cls', [
    ('gem', 'GeM', GeMPooler), ('GEM', 'GeM', GeMPooler), ('GeM', 'GeM', GeMPooler),
    ('AVG', 'avg', MeanPooler), ('Mean', 'avg', MeanPooler), ('MAX', 'max', MaxPooler), ('CLS', 'cls', ClsPooler),
])
def test_pooler_names_are_case_insensitive(spelling, canonical, cls):
    assert canonical_pooler_name(spelling) == canonical
    assert pooler_class(spelling) is cls
    assert type(build_pooler(spelling)) is cls


def test_pooler_names_lists_the_builtin_spellings():
    names = pooler_names()
    for name in ('GeM', 'avg', 'mean', 'max', 'cls', 'last'):
        assert name in names


def test_unknown_pooler_name_suggests_the_closest():
    with pytest.raises(OptionError) as info:
        canonical_pooler_name('gemm')
    message = str(info.value)
    assert 'gemm' in message
    assert "Did you mean 'GeM'" in message
    assert "'max'" in message  # the available poolers are listed


def test_pooler_name_must_be_a_string():
    with pytest.raises(OptionError, match='pooler'):
        canonical_pooler_name(3)


# ---------------------------------------------------------------- validate_pooler_options

def test_validate_pooler_options_fills_defaults():
    assert validate_pooler_options('gem', None) == {'p': 3.0, 'eps': 1e-6, 'learnable': True}
    assert validate_pooler_options('GeM', {'p': 2}) == {'p': 2.0, 'eps': 1e-6, 'learnable': True}
    assert isinstance(validate_pooler_options('GeM', {'p': 2})['p'], float)
    assert validate_pooler_options('avg', {}) == {}


@pytest.mark.parametrize('p', [0, 0.0, -1.0, -3, float('nan'), float('inf'), '3', True, None])
def test_validate_pooler_options_rejects_bad_p(p):
    with pytest.raises(OptionError) as info:
        validate_pooler_options('GeM', {'p': p})
    message = str(info.value)
    assert "'p'" in message
    assert 'positive' in message


def test_validate_pooler_options_rejects_bad_eps_and_learnable():
    with pytest.raises(OptionError, match="'eps'"):
        validate_pooler_options('GeM', {'eps': 0})
    with pytest.raises(OptionError, match="'learnable'"):
        validate_pooler_options('GeM', {'learnable': 'yes'})


def test_validate_pooler_options_rejects_unknown_keys_listing_valid_ones():
    with pytest.raises(OptionError) as info:
        validate_pooler_options('GeM', {'pp': 3.0})
    message = str(info.value)
    assert "'pp'" in message
    assert 'Valid keys' in message
    for key in ("'p'", "'eps'", "'learnable'"):
        assert key in message
    assert "Did you mean 'p'" in message


def test_poolers_without_options_reject_any_key():
    with pytest.raises(OptionError) as info:
        validate_pooler_options('max', {'p': 3.0})
    assert "'p'" in str(info.value)
    with pytest.raises(OptionError):
        build_pooler('avg', {'eps': 1e-6})


def test_validate_pooler_options_rejects_non_dict():
    with pytest.raises(OptionError, match='dict'):
        validate_pooler_options('GeM', [('p', 3.0)])


# ---------------------------------------------------------------- precision

class _RecordPowDtypes(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if 'pow' in getattr(func, '__name__', ''):
            self.dtypes += [a.dtype for a in args if isinstance(a, torch.Tensor)]
        return func(*args, **kwargs)


def test_gem_computes_in_float32_for_bfloat16_input():
    x32 = torch.rand(2, 4, 5, 5, generator=torch.Generator().manual_seed(13)) * 2.0 + 9.0  # ~10
    x = x32.to(torch.bfloat16)
    pooler = GeMPooler(p=3.0)
    with _RecordPowDtypes() as spy:
        out = pooler(x)
    assert out.dtype == torch.bfloat16
    assert out.shape == (2, 4)
    assert torch.isfinite(out.float()).all()
    assert spy.dtypes and all(dt == torch.float32 for dt in spy.dtypes), spy.dtypes
    expected = (x.float() ** 3).mean(dim=(2, 3)) ** (1.0 / 3.0)
    torch.testing.assert_close(out.float(), expected, rtol=2 ** -7, atol=0.0)


def test_gem_does_not_overflow_in_float16():
    # 100 ** 3 = 1e6 is beyond float16's range (65504): computing the power in half precision gives inf
    x = torch.full((1, 2, 3, 3), 100.0, dtype=torch.float16)
    out = GeMPooler(p=3.0)(x)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), torch.full((1, 2), 100.0), rtol=1e-3, atol=0.0)


def test_gem_bfloat16_tokens_with_mask():
    x = (torch.rand(2, 6, 4, generator=torch.Generator().manual_seed(14)) + 9.5).to(torch.bfloat16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = GeMPooler(p=3.0)(x, mask)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    expected0 = (x[0, :3].float() ** 3).mean(dim=0) ** (1 / 3)
    torch.testing.assert_close(out[0].float(), expected0, rtol=2 ** -7, atol=0.0)
    assert not math.isnan(out.float().sum().item())


def test_gem_extra_repr_shows_p():
    assert 'p=2.5' in repr(GeMPooler(p=2.5))
