"""l2_normalize (finetune/functional.py): unit length for any non-zero vector, the gradient of x / ||x||."""
from __future__ import annotations

import pytest
import torch

import finetune
from finetune.functional import l2_normalize


@pytest.mark.parametrize('scale', [1e-30, 5e-13, 1.0, 1e30])
def test_any_non_zero_vector_becomes_unit_length(scale):
    x = torch.randn(5, 16, dtype=torch.float32) * scale
    out = l2_normalize(x)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    exact = x.double() / x.double().norm(dim=1, keepdim=True)
    torch.testing.assert_close(out, exact.float())


def test_an_all_zero_vector_stays_zero_and_bf16_works():
    x = torch.zeros(2, 4)
    x[1] = torch.tensor([1e-20, 0, 0, 0])
    out = l2_normalize(x)
    assert torch.equal(out[0], torch.zeros(4)) and out[1, 0] == 1.0
    half = l2_normalize(torch.randn(3, 8).bfloat16() * 1e-30)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float().norm(dim=1), torch.ones(3), atol=1e-2)


def test_the_gradient_is_that_of_x_over_its_norm():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 6, dtype=torch.float64)
    (l2_normalize(x) * weights).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    (x / x.norm(dim=1, keepdim=True) * weights).sum().backward()
    torch.testing.assert_close(ours, x.grad)


def test_a_model_whose_features_have_a_tiny_norm_embeds_at_unit_length():
    """Features of norm near 1e-13 (a random EfficientNet on a small image pools to that) are below
    F.normalize's eps, which left them at norms of 0.1-0.8."""
    model = finetune.build_model('fake-text', {'pooler': 'mean'})
    with torch.no_grad():
        model.backbone.embed.weight.mul_(1e-13)
        model.backbone.mix.weight.mul_(1e-13)
        model.backbone.mix.bias.zero_()
    raw = finetune.build_model('fake-text', {'pooler': 'mean', 'normalize': False})
    raw.load_state_dict(model.state_dict())
    assert raw.encode(['the red dog']).max() < 1e-12
    emb = model.eval()(model.preprocess(['the red dog', 'a cat']))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
