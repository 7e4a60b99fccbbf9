"""Losses: each against a hand computation or a brute-force loop; the registry and its messages."""
from __future__ import annotations

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from finetune.errors import InputError, OptionError
from finetune.losses import (DATA_KINDS, ArcFaceLoss, CLIPLoss, CosFaceLoss, CoSENTLoss, CosineSimilarityLoss,
                             InfoNCELoss, Loss, LossInputs, NormalizedSoftmaxLoss, TripletMarginLoss, build_loss,
                             default_loss, loss_class, loss_names, losses_for, register_loss,
                             required_model_options)


def _randn(*shape: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- InfoNCE: a 3x2 example by hand

# anchors at 0°, 90°, 45° (not unit length: the loss must normalize); positives at 0°, 60°, 90°
ANCHORS = torch.tensor([[2.0, 0.0], [0.0, 0.5], [1.0, 1.0]], dtype=torch.float64)
POSITIVES = torch.tensor([[3.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 4.0]], dtype=torch.float64)
C15, R = math.cos(math.radians(15)), math.sqrt(0.5)
COS = [[1.0, 0.5, 0.0],          # cos(anchor i, positive j), by hand from the angles
       [0.0, math.sqrt(3) / 2, 1.0],
       [R, C15, R]]


def _ce(logits: list[float], target: float) -> float:
    return -target + math.log(sum(math.exp(x) for x in logits))


def _infonce_by_hand(scale: float, symmetric: bool, dropped: frozenset = frozenset()) -> float:
    """Cross-entropy per anchor (row) and, if symmetric, per positive (column); `dropped`: masked (i, j)."""
    rows = [_ce([scale * COS[i][j] for j in range(3) if (i, j) not in dropped], scale * COS[i][i])
            for i in range(3)]
    loss = sum(rows) / 3
    if symmetric:
        cols = [_ce([scale * COS[i][j] for i in range(3) if (i, j) not in dropped], scale * COS[j][j])
                for j in range(3)]
        loss = (loss + sum(cols) / 3) / 2
    return loss


def test_cosines_of_the_hand_example():
    cos = F.normalize(ANCHORS, dim=-1) @ F.normalize(POSITIVES, dim=-1).t()
    torch.testing.assert_close(cos, torch.tensor(COS, dtype=torch.float64))


@pytest.mark.parametrize('symmetric', [True, False])
def test_infonce_equals_hand_computation(symmetric):
    loss = InfoNCELoss(symmetric=symmetric)(LossInputs(anchors=ANCHORS, positives=POSITIVES))
    assert loss.item() == pytest.approx(_infonce_by_hand(20.0, symmetric), rel=1e-9)


def test_symmetric_and_one_sided_differ_on_the_example():
    one = InfoNCELoss(symmetric=False)(LossInputs(anchors=ANCHORS, positives=POSITIVES)).item()
    both = InfoNCELoss(symmetric=True)(LossInputs(anchors=ANCHORS, positives=POSITIVES)).item()
    backwards = InfoNCELoss(symmetric=False)(LossInputs(anchors=POSITIVES, positives=ANCHORS)).item()
    assert abs(one - both) > 1e-3
    assert both == pytest.approx((one + backwards) / 2, rel=1e-9)


def test_group_ids_mask_false_negatives_exactly():
    groups = torch.tensor([0, 1, 1])  # rows 1 and 2 share a group: (1, 2) and (2, 1) are no negatives
    inputs = LossInputs(anchors=ANCHORS, positives=POSITIVES, labels=groups)
    for symmetric in (False, True):
        loss = InfoNCELoss(symmetric=symmetric)(inputs).item()
        assert loss == pytest.approx(_infonce_by_hand(20.0, symmetric, frozenset({(1, 2), (2, 1)})), rel=1e-9)
        assert loss != pytest.approx(_infonce_by_hand(20.0, symmetric), rel=0.1)
    distinct = LossInputs(anchors=ANCHORS, positives=POSITIVES, labels=torch.tensor([5, 6, 7]))
    assert InfoNCELoss()(distinct).item() == pytest.approx(_infonce_by_hand(20.0, True), rel=1e-9)


def test_infonce_temperature_option():
    loss = build_loss('InfoNCE', {'temperature': 0.5}, 'pairs')
    assert loss(LossInputs(anchors=ANCHORS, positives=POSITIVES)).item() == pytest.approx(
        _infonce_by_hand(2.0, True), rel=1e-9)
    assert list(loss.parameters()) == []


def test_infonce_learnable_temperature_is_a_parameter_with_a_gradient():
    loss = build_loss('MNRL', {'temperature': 0.1, 'learnable_temperature': True}, 'pairs')
    params = list(loss.parameters())
    assert len(params) == 1 and params[0].requires_grad
    assert math.exp(params[0].item()) == pytest.approx(10.0, rel=1e-6)
    value = loss(LossInputs(anchors=ANCHORS, positives=POSITIVES))
    assert value.item() == pytest.approx(_infonce_by_hand(10.0, True), rel=1e-5)
    value.backward()
    assert params[0].grad is not None and params[0].grad.abs().item() > 0


def test_infonce_gradient_reaches_both_sides():
    a, p = _randn(6, 8, seed=1).requires_grad_(), _randn(6, 8, seed=2).requires_grad_()
    InfoNCELoss()(LossInputs(anchors=a, positives=p)).backward()
    for t in (a, p):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_infonce_half_precision_inputs_are_computed_in_float32():
    a, p = _randn(5, 8, seed=3, dtype=torch.float32), _randn(5, 8, seed=4, dtype=torch.float32)
    half = InfoNCELoss()(LossInputs(anchors=a.bfloat16(), positives=p.bfloat16()))
    full = InfoNCELoss()(LossInputs(anchors=a.bfloat16().float(), positives=p.bfloat16().float()))
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full)


def test_losses_ignore_autocast_half_precision():
    a, p = _randn(6, 8, seed=19, dtype=torch.float32), _randn(6, 8, seed=20, dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    losses = [(InfoNCELoss(), LossInputs(anchors=a, positives=p)),
              (TripletMarginLoss(distance='euclidean'), LossInputs(embeddings=a, labels=labels)),
              (CosFaceLoss(num_classes=3, embedding_dim=8), LossInputs(embeddings=a, labels=labels))]
    for loss, inputs in losses:
        expected = loss(inputs)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            value = loss(inputs)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, expected)


def test_infonce_refuses_mismatched_or_missing_sides():
    with pytest.raises(InputError, match='same shape'):
        InfoNCELoss()(LossInputs(anchors=_randn(3, 4), positives=_randn(4, 4)))
    with pytest.raises(InputError, match='positives'):
        InfoNCELoss()(LossInputs(anchors=_randn(3, 4)))


# ---------------------------------------------------------------- CLIP

def test_clip_uses_the_models_logit_scale_and_its_gradient():
    logit_scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    loss = CLIPLoss()
    value = loss(LossInputs(anchors=ANCHORS, positives=POSITIVES, logit_scale=logit_scale))
    assert value.item() == pytest.approx(_infonce_by_hand(10.0, True), rel=1e-9)
    value.backward()
    assert logit_scale.grad is not None and logit_scale.grad.abs().item() > 0
    assert loss.log_scale.grad is None  # its own scale is not used then


def test_clip_clamps_the_scale_at_100():
    """As open_clip: the parameter itself is clamped to [0, ln 100], so at the bound it still gets a gradient
    (and can come back down); a tensor that is no parameter is clamped by value."""
    logit_scale = torch.tensor(math.log(1000.0), dtype=torch.float64, requires_grad=True)
    value = CLIPLoss()(LossInputs(anchors=ANCHORS, positives=POSITIVES, logit_scale=logit_scale))
    assert value.item() == pytest.approx(_infonce_by_hand(100.0, True), rel=1e-9)
    assert logit_scale.item() == pytest.approx(math.log(100.0), rel=1e-12)
    value.backward()
    assert logit_scale.grad.item() != 0.0
    below = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    value = CLIPLoss()(LossInputs(anchors=ANCHORS, positives=POSITIVES, logit_scale=below))
    assert below.item() == 0.0 and value.item() == pytest.approx(_infonce_by_hand(1.0, True), rel=1e-9)
    derived = torch.tensor(math.log(1000.0), dtype=torch.float64, requires_grad=True) * 1.0
    value = CLIPLoss()(LossInputs(anchors=ANCHORS, positives=POSITIVES, logit_scale=derived))
    assert value.item() == pytest.approx(_infonce_by_hand(100.0, True), rel=1e-9)


def test_clip_without_logit_scale_learns_its_own():
    loss = build_loss('CLIPLoss', None, 'text-image')
    assert math.exp(loss.log_scale.item()) == pytest.approx(1 / 0.07, rel=1e-6)
    value = loss(LossInputs(anchors=ANCHORS, positives=POSITIVES))
    assert value.item() == pytest.approx(_infonce_by_hand(1 / 0.07, True), rel=1e-5)
    value.backward()
    assert loss.log_scale.grad.abs().item() > 0


# ---------------------------------------------------------------- triplets against brute force

def _dist(x: torch.Tensor, i: int, j: int, distance: str) -> torch.Tensor:
    if distance == 'cosine':
        return 1 - torch.dot(x[i], x[j]) / (x[i].norm() * x[j].norm())
    return (x[i] - x[j]).norm()


def _triplet_reference(x: torch.Tensor, labels: list[int], margin: float, distance: str, mining: str):
    """Loops over anchors, positives, negatives; returns (loss, how many semi-hard / fallback choices)."""
    n = len(labels)
    d = [[_dist(x, i, j, distance) if i != j else None for j in range(n)] for i in range(n)]
    losses, semi, fallback = [], 0, 0
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(n) if labels[q] != labels[a]]
        if not pos or not neg:
            continue
        if mining == 'batch_hard':
            hp = max((d[a][p] for p in pos), key=lambda t: t.item())
            hn = min((d[a][q] for q in neg), key=lambda t: t.item())
            losses.append(torch.relu(hp - hn + margin))
        elif mining == 'semi_hard':
            for p in pos:
                window = [d[a][q] for q in neg if d[a][p].item() < d[a][q].item() < d[a][p].item() + margin]
                if window:
                    semi += 1
                    dn = min(window, key=lambda t: t.item())
                else:
                    fallback += 1
                    dn = min((d[a][q] for q in neg), key=lambda t: t.item())
                losses.append(torch.relu(d[a][p] - dn + margin))
        else:
            for p in pos:
                for q in neg:
                    value = d[a][p] - d[a][q] + margin
                    if value.item() > 0:
                        losses.append(value)
    return torch.stack(losses).mean(), semi, fallback


LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 5]  # classes 3 and 5: no positive (ignored as anchors)


@pytest.mark.parametrize('mining', ['batch_hard', 'semi_hard', 'all'])
@pytest.mark.parametrize('distance', ['cosine', 'euclidean'])
def test_triplet_equals_brute_force_value_and_gradient(mining, distance):
    margin = 0.3 if distance == 'cosine' else 0.5
    x = _randn(len(LABELS), 4, seed=5).requires_grad_()
    loss = build_loss('TripletMarginLoss', {'mining': mining, 'distance': distance, 'margin': margin}, 'labeled')
    value = loss(LossInputs(embeddings=x, labels=torch.tensor(LABELS)))
    (grad,) = torch.autograd.grad(value, x)
    expected, semi, fallback = _triplet_reference(x, LABELS, margin, distance, mining)
    (expected_grad,) = torch.autograd.grad(expected, x)
    assert value.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)
    torch.testing.assert_close(grad, expected_grad)
    assert value.item() > 0
    if mining == 'semi_hard':  # the example exercises both branches
        assert semi > 0 and fallback > 0


def test_triplet_with_no_valid_anchor_is_a_zero_with_grad_fn():
    x = _randn(4, 3, seed=6).requires_grad_()
    for labels in ([0, 1, 2, 3], [7, 7, 7, 7]):  # no positives; no negatives
        for mining in ('batch_hard', 'semi_hard', 'all'):
            value = TripletMarginLoss(mining=mining)(LossInputs(embeddings=x, labels=torch.tensor(labels)))
            assert value.item() == 0.0 and value.grad_fn is not None
            value.backward()
            assert x.grad is not None and x.grad.abs().sum() == 0


def test_triplet_all_with_every_triplet_satisfied_is_a_zero_with_grad_fn():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]], requires_grad=True)
    value = TripletMarginLoss(mining='all', margin=0.1)(LossInputs(embeddings=x, labels=torch.tensor([0, 0, 1, 1])))
    assert value.item() == 0.0 and value.grad_fn is not None


def test_triplet_on_pairs_uses_both_sides_with_pair_or_group_labels():
    a, p = _randn(5, 4, seed=7), _randn(5, 4, seed=8)
    loss = TripletMarginLoss(mining='all')
    on_pairs = loss(LossInputs(anchors=a, positives=p))
    stacked = loss(LossInputs(embeddings=torch.cat([a, p]), labels=torch.arange(5).repeat(2)))
    assert on_pairs.item() == pytest.approx(stacked.item(), rel=1e-12)
    groups = torch.tensor([0, 0, 1, 1, 2])
    grouped = loss(LossInputs(anchors=a, positives=p, labels=groups))
    expected = loss(LossInputs(embeddings=torch.cat([a, p]), labels=groups.repeat(2)))
    assert grouped.item() == pytest.approx(expected.item(), rel=1e-12)


# ---------------------------------------------------------------- normalized softmax

def test_normalized_softmax_is_cross_entropy_on_the_logits():
    logits, labels = _randn(6, 4, seed=9).requires_grad_(), torch.tensor([0, 1, 2, 3, 1, 0])
    value = build_loss('NormalizedSoftmax', None, 'labeled')(LossInputs(logits=logits, labels=labels))
    torch.testing.assert_close(value, F.cross_entropy(logits, labels))
    smoothed = NormalizedSoftmaxLoss(label_smoothing=0.1)(LossInputs(logits=logits, labels=labels))
    torch.testing.assert_close(smoothed, F.cross_entropy(logits, labels, label_smoothing=0.1))
    value.backward()
    assert logits.grad.abs().sum() > 0


def test_normalized_softmax_without_logits_says_which_head():
    assert NormalizedSoftmaxLoss.needs_classifier_head
    with pytest.raises(OptionError, match="cosine_classifier.*num_classes"):
        NormalizedSoftmaxLoss()(LossInputs(embeddings=_randn(3, 4), labels=torch.tensor([0, 1, 0])))
    assert required_model_options('normalizedsoftmaxloss', 10) == {
        'head': 'cosine_classifier', 'head_options': {'num_classes': 10}}
    assert required_model_options('InfoNCE', 10) == {}
    with pytest.raises(OptionError, match='num_classes'):
        required_model_options('NormalizedSoftmax')


def test_normalized_softmax_refuses_labels_out_of_range():
    with pytest.raises(InputError, match=r'\[0, 3\)'):
        NormalizedSoftmaxLoss()(LossInputs(logits=_randn(2, 3), labels=torch.tensor([0, 3])))


# ---------------------------------------------------------------- ArcFace / CosFace

def _cosine_softmax_reference(loss, x, labels, target_shift=None):
    cos = F.normalize(x, dim=-1) @ F.normalize(loss.weight.detach().to(x.dtype), dim=-1).t()
    if target_shift is not None:
        cos = cos - target_shift * F.one_hot(labels, cos.shape[1]).to(cos.dtype)
    return F.cross_entropy(loss.scale * cos, labels)


@pytest.mark.parametrize('cls', [ArcFaceLoss, CosFaceLoss])
def test_margin_zero_is_scaled_cosine_softmax_and_a_margin_raises_the_loss(cls):
    x, labels = _randn(8, 5, seed=10), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    torch.manual_seed(0)
    plain = cls(num_classes=4, embedding_dim=5, margin=0.0)
    torch.manual_seed(0)
    margined = cls(num_classes=4, embedding_dim=5)
    torch.testing.assert_close(plain.weight, margined.weight)
    value = plain(LossInputs(embeddings=x, labels=labels))
    torch.testing.assert_close(value, _cosine_softmax_reference(plain, x, labels))
    assert margined(LossInputs(embeddings=x, labels=labels)).item() > value.item() + 0.1


def test_cosface_equals_its_formula():
    x, labels = _randn(6, 5, seed=11), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = CosFaceLoss(num_classes=3, embedding_dim=5, margin=0.35, scale=30.0)
    torch.testing.assert_close(loss(LossInputs(embeddings=x, labels=labels)),
                               _cosine_softmax_reference(loss, x, labels, target_shift=0.35))


def test_arcface_target_logit_and_its_fallback():
    loss = ArcFaceLoss(num_classes=2, embedding_dim=3, margin=0.5)
    theta = torch.tensor([[0.3], [1.0], [2.5], [2.9], [math.pi]], dtype=torch.float64)
    out = loss.target_logit(torch.cos(theta)).flatten().tolist()
    assert out[0] == pytest.approx(math.cos(0.8), abs=1e-9)
    assert out[1] == pytest.approx(math.cos(1.5), abs=1e-9)
    assert out[2] == pytest.approx(math.cos(3.0), abs=1e-9)  # 2.5 + 0.5 < pi
    assert out[3] == pytest.approx(math.cos(2.9) - 0.5 * math.sin(0.5), abs=1e-9)  # 2.9 + 0.5 > pi: fallback
    assert out[4] == pytest.approx(-1.0 - 0.5 * math.sin(0.5), abs=1e-6)
    assert out == sorted(out, reverse=True)  # decreasing in theta across the switch


def test_arcface_equals_its_formula_and_trains_its_weights():
    x, labels = _randn(6, 5, seed=12), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = build_loss('arcface', {'margin': 0.3, 'scale': 16}, 'labeled', num_classes=3, embedding_dim=5)
    cos = F.normalize(x, dim=-1) @ F.normalize(loss.weight.detach().double(), dim=-1).t()
    target = cos.gather(1, labels[:, None])
    logits = cos.scatter(1, labels[:, None], torch.cos(torch.acos(target) + 0.3))
    value = loss(LossInputs(embeddings=x, labels=labels))
    torch.testing.assert_close(value, F.cross_entropy(16 * logits, labels))
    value.backward()
    assert loss.weight.grad is not None and loss.weight.grad.abs().sum() > 0
    assert [n for n, _ in loss.named_parameters()] == ['weight']


def test_margin_losses_check_labels_and_dimensions():
    loss = CosFaceLoss(num_classes=3, embedding_dim=5)
    with pytest.raises(InputError, match=r'\[0, 3\)'):
        loss(LossInputs(embeddings=_randn(2, 5), labels=torch.tensor([0, 3])))
    with pytest.raises(InputError, match='embedding_dim'):
        loss(LossInputs(embeddings=_randn(2, 4), labels=torch.tensor([0, 1])))
    with pytest.raises(OptionError, match='num_classes'):
        build_loss('CosFace', None, 'labeled', embedding_dim=5)


# ---------------------------------------------------------------- scored pairs

def test_cosent_equals_brute_force():
    a, b = _randn(7, 4, seed=13).requires_grad_(), _randn(7, 4, seed=14)
    scores = torch.tensor([0.9, 0.1, 0.5, 0.5, 0.0, 1.0, 0.3], dtype=torch.float64)  # a tie: no term
    value = build_loss('CoSENT', {'scale': 5.0}, 'scored')(LossInputs(anchors=a, positives=b, scores=scores))
    cos = [torch.dot(a[i], b[i]) / (a[i].norm() * b[i].norm()) for i in range(7)]
    terms = [5.0 * (cos[j] - cos[i]) for i in range(7) for j in range(7) if scores[i] > scores[j]]
    assert len(terms) == 20
    expected = torch.log(1 + sum(torch.exp(t) for t in terms))
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    (grad,) = torch.autograd.grad(value, a)
    (expected_grad,) = torch.autograd.grad(expected, a)
    torch.testing.assert_close(grad, expected_grad)


def test_cosent_with_all_scores_equal_is_log_one():
    a, b = _randn(3, 4, seed=15).requires_grad_(), _randn(3, 4, seed=16)
    value = CoSENTLoss()(LossInputs(anchors=a, positives=b, scores=torch.full((3,), 0.5, dtype=torch.float64)))
    assert value.item() == 0.0 and value.grad_fn is not None


def test_cosine_similarity_loss_is_mse():
    a, b = _randn(5, 4, seed=17), _randn(5, 4, seed=18)
    scores = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    value = CosineSimilarityLoss()(LossInputs(anchors=a, positives=b, scores=scores))
    cos = [(torch.dot(a[i], b[i]) / (a[i].norm() * b[i].norm())).item() for i in range(5)]
    assert value.item() == pytest.approx(sum((c - s) ** 2 for c, s in zip(cos, scores.tolist())) / 5, rel=1e-12)
    with pytest.raises(InputError, match='scores'):
        CosineSimilarityLoss()(LossInputs(anchors=a, positives=b))


# ---------------------------------------------------------------- registry

def test_names_aliases_and_defaults():
    assert loss_names() == ['InfoNCE', 'CLIPLoss', 'TripletMarginLoss', 'NormalizedSoftmaxLoss', 'ArcFaceLoss',
                            'CosFaceLoss', 'CoSENTLoss', 'CosineSimilarityLoss', 'MarginMSELoss', 'SigLIPLoss']
    assert 'MNRL' in loss_names(include_aliases=True)
    for alias in ('infonce', 'MultipleNegativesRankingLoss', 'mnrl'):
        assert loss_class(alias) is InfoNCELoss
    assert loss_class('normalizedsoftmax') is NormalizedSoftmaxLoss
    assert {kind: default_loss(kind) for kind in DATA_KINDS} == {
        'labeled': 'TripletMarginLoss', 'pairs': 'InfoNCE', 'scored': 'CoSENTLoss', 'text-image': 'CLIPLoss'}
    for kind in DATA_KINDS:
        assert default_loss(kind) in losses_for(kind)
        assert kind in loss_class(default_loss(kind)).data_kinds
    assert losses_for('scored') == ['CoSENTLoss', 'CosineSimilarityLoss']


def test_unknown_name_suggests_the_closest_and_lists_all():
    with pytest.raises(OptionError) as e:
        loss_class('TripletMarginLos')
    message = str(e.value)
    assert "Did you mean 'TripletMarginLoss'" in message
    assert all(repr(name) in message for name in loss_names())


def test_unknown_option_lists_valid_keys_and_bad_values_are_refused():
    with pytest.raises(OptionError, match="unknown key 'temprature'.*'temperature'.*Valid keys: 'temperature', "
                                          "'symmetric', 'learnable_temperature'"):
        build_loss('InfoNCE', {'temprature': 0.1}, 'pairs')
    with pytest.raises(OptionError, match='positive'):
        build_loss('InfoNCE', {'temperature': -1}, 'pairs')
    with pytest.raises(OptionError, match="'batch_hard'"):
        build_loss('TripletMarginLoss', {'mining': 'hardest'}, 'labeled')


def test_wrong_data_kind_says_which_losses_fit():
    with pytest.raises(OptionError, match="'CoSENTLoss' does not fit 'labeled'.*takes 'scored'.*Losses for "
                                          "'labeled' data: 'InfoNCE', 'TripletMarginLoss'.*default "
                                          "'TripletMarginLoss'"):
        build_loss('CoSENT', None, 'labeled')
    with pytest.raises(OptionError, match="Did you mean 'text-image'"):
        build_loss('CLIPLoss', None, 'text_image')


def test_every_loss_builds_for_each_kind_it_declares():
    for name in loss_names():
        for kind in loss_class(name).data_kinds:
            loss = build_loss(name, None, kind, num_classes=3, embedding_dim=4)
            assert isinstance(loss, nn.Module) and loss.name == name
            assert all(o.name in loss.validate_options(None) for o in loss.options)


def test_pml_adapter_says_how_to_install_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pytorch_metric_learning', None)
    monkeypatch.setitem(sys.modules, 'pytorch_metric_learning.losses', None)
    with pytest.raises(OptionError, match='pip install pytorch-metric-learning'):
        build_loss('PML:TripletMarginLoss', None, 'labeled')


def test_pml_adapter_with_a_stand_in_package(monkeypatch):
    class BaseLoss(nn.Module):
        def __init__(self, reducer=None, **kwargs):
            super().__init__()
            self.reducer = reducer

    class MarginLoss(BaseLoss):
        def __init__(self, margin=0.1, **kwargs):
            super().__init__(**kwargs)
            self.margin = margin

        def forward(self, embeddings, labels):
            return embeddings.sum() * self.margin + labels.sum()

    package, module = types.ModuleType('pytorch_metric_learning'), types.ModuleType('pytorch_metric_learning.losses')
    module.MarginLoss = MarginLoss
    package.losses = module
    monkeypatch.setitem(sys.modules, 'pytorch_metric_learning', package)
    monkeypatch.setitem(sys.modules, 'pytorch_metric_learning.losses', module)

    cls = loss_class('pml:marginloss')
    assert cls.name == 'PML:MarginLoss' and [o.name for o in cls.options] == ['margin', 'reducer']
    loss = build_loss('PML:MarginLoss', {'margin': 2.0}, 'pairs')
    a, p = torch.ones(2, 3), torch.ones(2, 3)
    assert loss(LossInputs(anchors=a, positives=p)).item() == 2.0 * 12 + (0 + 1) * 2
    with pytest.raises(OptionError, match="unknown key 'marg'.*Valid keys: 'margin', 'reducer'"):
        build_loss('PML:MarginLoss', {'marg': 2.0}, 'labeled')
    with pytest.raises(OptionError, match="no loss 'MarginLos'.*Did you mean 'MarginLoss'"):
        loss_class('PML:MarginLos')


# ---------------------------------------------------------------- a new loss: one subclass in one file

class OneMinusCosine(Loss):
    """A loss written outside the package: it says what it reads and computes one value per pair."""

    data_kinds = ('pairs', 'a-kind-registered-later')
    reads = 'pairs'

    def compute(self, inputs):
        from finetune.losses import rowwise_cosine
        return 1 - rowwise_cosine(inputs.anchors, inputs.positives)


@pytest.fixture
def outside_loss():
    from finetune.losses import registry
    saved = dict(registry._LOSSES), list(registry._NAMES), list(registry._SPELLINGS)
    register_loss('TestOneMinusCosine', OneMinusCosine, aliases=('TestOMC',))
    yield OneMinusCosine
    registry._LOSSES.clear()
    registry._LOSSES.update(saved[0])
    registry._NAMES[:], registry._SPELLINGS[:] = saved[1], saved[2]


def test_a_loss_registered_from_outside_the_package_is_checked_reduced_and_trained(outside_loss):
    loss = build_loss('testomc', None, 'pairs')
    assert isinstance(loss, OneMinusCosine) and 'TestOneMinusCosine' in losses_for('pairs')
    a, b = _randn(6, 4, seed=1), _randn(6, 4, seed=2)
    expected = (1 - F.cosine_similarity(a, b)).mean()
    torch.testing.assert_close(loss(LossInputs(anchors=a, positives=b)), expected)  # the base averaged the rows
    with pytest.raises(InputError, match='TestOneMinusCosine needs LossInputs.anchors and LossInputs.positives'):
        loss(LossInputs(anchors=a))  # the base checked what it reads
    with pytest.raises(InputError, match=r'labels must have shape \(6,\)'):
        loss(LossInputs(anchors=a, positives=b, labels=torch.zeros(5, dtype=torch.long)))
    with pytest.raises(OptionError, match="does not fit 'scored' data"):
        build_loss('TestOneMinusCosine', None, 'scored')  # the fit is checked where the loss is built
    import finetune
    from test_training import text_pairs
    run = finetune.fit('fake-text', text_pairs(), loss='TestOneMinusCosine', batch_size=8, num_workers=0,
                       device='cpu', precision='fp32', learning_rate=1e-2, log=lambda m: None)
    assert run.config['loss'] == 'TestOneMinusCosine' and all(h['loss'] >= 0 for h in run.history)


def test_a_loss_that_reads_nothing_known_is_refused_with_the_choices():
    class Odd(Loss):
        name, data_kinds, reads = 'Odd', ('pairs',), 'columns'
    with pytest.raises(OptionError, match="Odd.reads: expected one of 'pairs', 'items'"):
        Odd()(LossInputs(anchors=_randn(2, 3), positives=_randn(2, 3)))
    with pytest.raises(NotImplementedError, match='implements neither compute'):
        type('Bare', (Loss,), {'name': 'Bare', 'reads': 'pairs'})()(LossInputs(anchors=_randn(2, 3),
                                                                              positives=_randn(2, 3)))


# ---------------------------------------------------------------- Matryoshka

@pytest.mark.parametrize('name, kind, inputs', [
    ('InfoNCE', 'pairs', lambda: LossInputs(anchors=_randn(8, 12, seed=1), positives=_randn(8, 12, seed=2))),
    ('TripletMarginLoss', 'labeled', lambda: LossInputs(embeddings=_randn(8, 12, seed=3),
                                                        labels=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))),
    ('CoSENTLoss', 'scored', lambda: LossInputs(anchors=_randn(6, 12, seed=4), positives=_randn(6, 12, seed=5),
                                                 scores=torch.rand(6, generator=torch.Generator().manual_seed(6),
                                                                   dtype=torch.float64))),
    ('MarginMSELoss', 'margin-triplets', lambda: LossInputs(
        anchors=_randn(6, 12, seed=7), positives=_randn(6, 12, seed=8), negatives=_randn(6, 12, seed=9),
        scores=torch.rand(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))),
])
def test_a_matryoshka_loss_is_the_weighted_sum_of_the_losses_at_each_dimension(name, kind, inputs):
    from finetune.functional import l2_normalize
    batch = inputs()
    nested = build_loss(name, {'matryoshka_dims': [4, 12, 8], 'matryoshka_weights': [0.5, 1, 2]}, kind,
                        embedding_dim=12)
    plain = build_loss(name, None, kind, embedding_dim=12)
    assert nested.matryoshka_dims == (12, 8, 4) and nested.matryoshka_weights == (1.0, 2.0, 0.5)

    def at(dim):
        cut = {f: l2_normalize(getattr(batch, f)[:, :dim], dim=-1)
               for f in ('embeddings', 'anchors', 'positives', 'negatives') if getattr(batch, f) is not None}
        return plain(LossInputs(**{**batch.__dict__, **cut}))
    torch.testing.assert_close(nested(batch), at(12) + 2 * at(8) + 0.5 * at(4))


def test_arcface_takes_the_leading_dimensions_of_its_class_weights_too():
    loss = build_loss('ArcFaceLoss', {'matryoshka_dims': [8, 4]}, 'labeled', num_classes=3, embedding_dim=8)
    embeddings, labels = _randn(6, 8, seed=2), torch.tensor([0, 0, 1, 1, 2, 2])
    value = loss(LossInputs(embeddings=embeddings, labels=labels))
    loss.matryoshka_dims = None
    whole = loss(LossInputs(embeddings=embeddings, labels=labels))
    small = build_loss('ArcFaceLoss', None, 'labeled', num_classes=3, embedding_dim=4)
    with torch.no_grad():
        small.weight.copy_(loss.weight[:, :4])
    part = small(LossInputs(embeddings=F.normalize(embeddings[:, :4], dim=-1), labels=labels))
    torch.testing.assert_close(value, whole + part)


def test_matryoshka_options_are_checked():
    with pytest.raises(OptionError, match="'matryoshka_dims': 512 is more than the model's 384 dimensions"):
        build_loss('InfoNCE', {'matryoshka_dims': [512, 64]}, 'pairs', embedding_dim=384)
    with pytest.raises(OptionError, match='expected a list of distinct positive dimensions'):
        build_loss('InfoNCE', {'matryoshka_dims': [64, 64]}, 'pairs', embedding_dim=384)
    with pytest.raises(OptionError, match='2 weights for 3 matryoshka_dims'):
        build_loss('InfoNCE', {'matryoshka_dims': [8, 4, 2], 'matryoshka_weights': [1, 1]}, 'pairs')
    with pytest.raises(OptionError, match="'matryoshka_weights' needs 'matryoshka_dims'"):
        build_loss('InfoNCE', {'matryoshka_weights': [1.0]}, 'pairs')
    with pytest.raises(OptionError, match='reads logits of the model classifier head.*ArcFaceLoss'):
        build_loss('NormalizedSoftmaxLoss', {'matryoshka_dims': [8]}, 'labeled', num_classes=3)


def test_a_loss_whose_class_weights_cannot_be_cut_refuses_matryoshka():
    class OwnWeights(Loss):
        name, data_kinds, reads, needs_num_classes = 'OwnWeights', ('labeled',), 'items', True
    with pytest.raises(OptionError, match='holds class weights of the full size it cannot cut'):
        OwnWeights().set_matryoshka([8, 4], embedding_dim=8)
    assert build_loss('ArcFaceLoss', {'matryoshka_dims': [8, 4]}, 'labeled', num_classes=3,
                      embedding_dim=8).matryoshka_dims == (8, 4)  # ArcFace cuts its class weights
