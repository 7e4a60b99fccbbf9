"""MarginMSELoss and InfoNCE with hard negatives (finetune/losses.py), against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from finetune.errors import InputError
from finetune.losses import LossInputs, build_loss, default_loss


def _unit(*rows):
    t = torch.tensor(rows, dtype=torch.float64)
    return t / t.norm(dim=1, keepdim=True)


def test_margin_mse_value_and_gradient_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    p = _unit([1.0, 1.0], [0.0, 1.0])
    n = _unit([0.0, 1.0], [1.0, 0.0])
    teacher = torch.tensor([0.5, 0.2], dtype=torch.float64)
    loss = build_loss('MarginMSELoss', {'scale': 2.0}, 'margin-triplets')
    value = loss(LossInputs(anchors=q, positives=p, negatives=n, scores=teacher))
    # student margins: 2 * (cos(q, p) - cos(q, n)) = 2 * (1/sqrt2 - 0) and 2 * (1 - 0)
    m1, m2 = 2 * (1 / math.sqrt(2)), 2.0
    assert value.item() == pytest.approx(((m1 - 0.5) ** 2 + (m2 - 0.2) ** 2) / 2, abs=1e-12)
    value.backward()
    # d/dq1 of (m1 - t1)^2 / 2 = (m1 - t1) * 2 * d(cos(q1, p1) - cos(q1, n1))/dq1; for unit q1,
    # d cos(q, v)/dq = v - cos(q, v) q
    v = p[0] - n[0]
    dcos = v - (q[0] @ v) * q[0]
    expected = (m1 - 0.5) * 2 * dcos
    assert torch.allclose(q.grad[0], expected.detach(), atol=1e-12)


def test_margin_triplets_default_to_margin_mse_and_need_the_teacher():
    assert default_loss('margin-triplets') == 'MarginMSELoss'
    loss = build_loss('MarginMSE', None, 'margin-triplets')
    x = torch.randn(3, 4)
    with pytest.raises(InputError, match='scores'):
        loss(LossInputs(anchors=x, positives=x, negatives=x))
    with pytest.raises(InputError, match='negatives .* same shape'):
        loss(LossInputs(anchors=x, positives=x, negatives=x[:2], scores=torch.zeros(3)))


def test_infonce_with_hard_negatives_by_hand():
    q = _unit([1.0, 0.0], [0.0, 1.0])
    p = _unit([1.0, 0.2], [0.1, 1.0])
    n = _unit([1.0, 0.5], [1.0, 1.0])
    scale = 20.0
    loss = build_loss('InfoNCE', {'symmetric': False}, 'margin-triplets')
    value = loss(LossInputs(anchors=q, positives=p, negatives=n)).item()
    candidates = torch.cat([p, n])
    expected = 0.0
    for i in range(2):
        logits = [scale * float(q[i] @ c) for c in candidates]
        expected += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    assert value == pytest.approx(expected / 2, rel=1e-9)
    # symmetric: plus each positive picking its anchor among the anchors, averaged
    sym = build_loss('InfoNCE', None, 'margin-triplets')(LossInputs(anchors=q, positives=p, negatives=n)).item()
    back = 0.0
    for j in range(2):
        logits = [scale * float(p[j] @ a) for a in q]
        back += -logits[j] + math.log(sum(math.exp(x) for x in logits))
    assert sym == pytest.approx((expected / 2 + back / 2) / 2, rel=1e-9)


def test_hard_negatives_keep_same_group_positives_out():
    q = _unit([1.0, 0.0], [1.0, 0.1])
    p = _unit([1.0, 0.05], [1.0, 0.0])
    n = _unit([0.0, 1.0], [0.0, 1.0])
    loss = build_loss('InfoNCE', {'symmetric': False}, 'margin-triplets')
    grouped = loss(LossInputs(anchors=q, positives=p, negatives=n, labels=torch.tensor([0, 0]))).item()
    expected = 0.0
    for i in range(2):  # the other row's positive is masked: the candidates are the own positive and 2 negatives
        logits = [20 * float(q[i] @ c) for c in (p[i], n[0], n[1])]
        expected += -logits[0] + math.log(sum(math.exp(x) for x in logits))
    assert grouped == pytest.approx(expected / 2, rel=1e-9)
