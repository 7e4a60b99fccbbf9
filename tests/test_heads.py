"""Heads: the projection (Linear or MLP) and the bias-free cosine classifier."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from finetune.errors import OptionError
from finetune.heads import CosineClassifier, ProjectionHead, validate_head_options


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- projection

def test_linear_projection_is_one_linear_layer():
    head = ProjectionHead(16, 8)
    layers = list(head.layers)
    assert len(layers) == 1
    assert isinstance(layers[0], nn.Linear)
    assert (layers[0].in_features, layers[0].out_features) == (16, 8)
    assert (head.in_dim, head.out_dim) == (16, 8)
    x = _randn(5, 16)
    out = head(x)
    assert out.shape == (5, 8)
    torch.testing.assert_close(out, x @ layers[0].weight.t() + layers[0].bias)


def test_mlp_projection_structure_and_shape():
    head = ProjectionHead(16, 8, hidden_dims=(32, 24))
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    linears = [m for m in head.layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 24), (24, 8)]
    x = _randn(3, 16, seed=1)
    out = head(x)
    assert out.shape == (3, 8)
    hidden = torch.relu(linears[1](torch.relu(linears[0](x))))
    torch.testing.assert_close(out, linears[2](hidden))


@pytest.mark.parametrize('activation, cls', [('gelu', nn.GELU), ('tanh', nn.Tanh), ('silu', nn.SiLU),
                                             ('relu', nn.ReLU)])
def test_mlp_projection_activation(activation, cls):
    head = ProjectionHead(10, 4, hidden_dims=(6,), activation=activation)
    assert [type(m) for m in head.layers] == [nn.Linear, cls, nn.Linear]
    assert head(_randn(2, 10, seed=2)).shape == (2, 4)


def test_projection_dropout_precedes_every_linear():
    head = ProjectionHead(10, 4, hidden_dims=(6,), dropout=0.25)
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert all(m.p == 0.25 for m in head.layers if isinstance(m, nn.Dropout))
    head.eval()
    x = _randn(4, 10, seed=3)
    torch.testing.assert_close(head(x), head(x))  # dropout is off in eval mode


def test_projection_without_dropout_has_no_dropout_layer():
    head = ProjectionHead(10, 4, hidden_dims=(6,))
    assert not any(isinstance(m, nn.Dropout) for m in head.layers)


def test_projection_gradients_reach_every_layer():
    head = ProjectionHead(6, 3, hidden_dims=(5,))
    head(_randn(4, 6, seed=4)).pow(2).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name


# ---------------------------------------------------------------- cosine classifier

def test_cosine_classifier_has_no_bias():
    clf = CosineClassifier(12, 5)
    names = [name for name, _ in clf.named_parameters()]
    assert names == ['weight']
    assert clf.weight.shape == (5, 12)
    assert not hasattr(clf, 'bias') or getattr(clf, 'bias') is None


def _cosine_logits_by_hand(emb: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    rows = []
    for e in emb.tolist():
        row = []
        for w in weight.tolist():
            dot = sum(a * b for a, b in zip(e, w))
            norm_e = math.sqrt(sum(a * a for a in e))
            norm_w = math.sqrt(sum(b * b for b in w))
            row.append(scale * dot / (norm_e * norm_w))
        rows.append(row)
    return torch.tensor(rows)


@pytest.mark.parametrize('scale', [1.0, 16.0, 30.0])
def test_cosine_classifier_logits_are_scaled_cosines(scale):
    clf = CosineClassifier(7, 4, scale=scale)
    emb = _randn(6, 7, seed=5) * 3.0  # not unit-norm: the classifier normalizes
    with torch.no_grad():
        logits = clf(emb)
    assert logits.shape == (6, 4)
    expected = _cosine_logits_by_hand(emb, clf.weight.detach(), scale)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_cosine_classifier_logits_stay_within_scale():
    scale = 8.0
    clf = CosineClassifier(5, 3, scale=scale)
    emb = _randn(50, 5, seed=6) * 100.0
    # include embeddings parallel and anti-parallel to a weight row: the bounds are reached
    with torch.no_grad():
        emb[0] = clf.weight[1] * 7.0
        emb[1] = -clf.weight[2] * 0.01
        logits = clf(emb)
    assert torch.all(logits <= scale + 1e-4)
    assert torch.all(logits >= -scale - 1e-4)
    assert logits[0, 1].item() == pytest.approx(scale, abs=1e-4)
    assert logits[1, 2].item() == pytest.approx(-scale, abs=1e-4)


def test_cosine_classifier_ignores_embedding_and_weight_length():
    clf = CosineClassifier(6, 3, scale=2.0)
    emb = _randn(4, 6, seed=7)
    with torch.no_grad():
        before = clf(emb)
        after_scaling_embeddings = clf(emb * 9.0)
        clf.weight.mul_(0.1)
        after_scaling_weights = clf(emb)
    torch.testing.assert_close(after_scaling_embeddings, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after_scaling_weights, before, rtol=1e-5, atol=1e-5)


def test_cosine_classifier_trains_with_cross_entropy():
    clf = CosineClassifier(6, 3)
    emb = _randn(4, 6, seed=8).requires_grad_(True)
    loss = nn.functional.cross_entropy(clf(emb), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert clf.weight.grad is not None and clf.weight.grad.abs().sum() > 0
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_cosine_classifier_repr():
    text = repr(CosineClassifier(6, 3, scale=2.0))
    assert 'in_dim=6' in text and 'num_classes=3' in text and 'scale=2.0' in text


# ---------------------------------------------------------------- head_options

def test_validate_head_options_projection_defaults():
    opts = validate_head_options(None, 32, None)
    assert opts == {'hidden_dims': (), 'activation': 'relu', 'dropout': 0.0}


def test_validate_head_options_classifier_defaults():
    opts = validate_head_options('cosine_classifier', None, {'num_classes': 10})
    assert opts == {'num_classes': 10, 'scale': 16.0}


def test_validate_head_options_rejects_keys_of_inactive_heads():
    with pytest.raises(OptionError, match="'num_classes'"):
        validate_head_options(None, 32, {'num_classes': 10})
    with pytest.raises(OptionError, match='no head is active'):
        validate_head_options(None, None, {'hidden_dims': [64]})


@pytest.mark.parametrize('options, key', [
    ({'hidden_dims': [0]}, 'hidden_dims'), ({'hidden_dims': 64}, 'hidden_dims'),
    ({'activation': 'swish'}, 'activation'), ({'dropout': 1.0}, 'dropout'), ({'dropout': -0.1}, 'dropout'),
])
def test_validate_head_options_rejects_bad_projection_values(options, key):
    with pytest.raises(OptionError, match=repr(key)):
        validate_head_options(None, 16, options)


@pytest.mark.parametrize('options, key', [
    ({'num_classes': 0}, 'num_classes'), ({'num_classes': 2.5}, 'num_classes'), ({'scale': 0}, 'scale'),
])
def test_validate_head_options_rejects_bad_classifier_values(options, key):
    with pytest.raises(OptionError, match=repr(key)):
        validate_head_options('cosine_classifier', None, options)


def test_validate_head_options_activation_is_case_insensitive():
    assert validate_head_options(None, 8, {'activation': 'GELU'})['activation'] == 'gelu'
