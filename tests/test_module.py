"""The training module's host batch: on an accelerator, length groups (and GradCache's chunks) are found and cut
on the batch as it was before it moved, so that no step reads row lengths back from the device. Here the "device"
batch is a copy on the CPU: the lengths must come from the host copy alone, and the loss and gradients must equal
those of the batch grouped where it is."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch

import finetune
from finetune.data.kinds import get_kind
from finetune.losses import build_loss
from finetune.training.gradcache import CachedStep
from finetune.training.module import TrainingModule

from fake_plugin import FakeText
from test_gradcache import _grads, _no_dropout, _pairs_batch


class LengthText(FakeText):
    """fake-text whose rows have lengths (the attention mask's sum) and whose slices drop all-padding columns,
    remembering every mask it measured."""
    measured: list = []

    def row_lengths(self, batch):
        LengthText.measured.append(batch['attention_mask'])
        return batch['attention_mask'].sum(1)

    def slice_batch(self, batch, start, stop):
        part = super().slice_batch(batch, start, stop)
        keep = int(part['attention_mask'].sum(1).max())
        return {k: v[:, :keep] for k, v in part.items()}


class OnDevice(torch.Tensor):
    """Stands for a tensor on an accelerator: whatever torch computes from it stays of this class."""


def _on_device(batch: dict) -> dict:
    return {key: {k: v.as_subclass(OnDevice) for k, v in value.items()} if isinstance(value, dict) else value
            for key, value in batch.items()}


SHORT = ['dog', 'a cat', 'red car', 'food', 'old dog', 'a car', 'cat runs', 'dog food']
LONG = ['the old red dog runs to the food and the car and the cat'] * 8


def _module(kind: str, loss: str, **options) -> TrainingModule:
    torch.manual_seed(0)
    model = finetune.build_model('fake-text')
    model.backbone.__class__ = LengthText
    _no_dropout(model)
    model.train()
    return TrainingModule(model, build_loss(loss, options, kind), get_kind(kind))


def _run(module, batch, host):
    module.zero_grad(set_to_none=True)
    module.host_batch = host
    LengthText.measured = []
    value = module(batch)
    value.backward()
    module.host_batch = None
    return float(value.detach()), _grads(module)


def _assert_same(found, expected) -> None:
    """The (loss, gradients) of `found` equal those of `expected`."""
    assert found[0] == pytest.approx(expected[0], abs=1e-6)
    for name, grad in expected[1].items():
        torch.testing.assert_close(found[1][name], grad)


def _mixed_pairs(module) -> tuple[dict, dict]:
    """Short and long texts on both sides: ``(the batch on the host, the same batch "on the device")``."""
    host = _pairs_batch(module.model, list(zip(SHORT + LONG[:4], LONG[:4] + SHORT)))
    return host, _on_device(host)


def test_length_groups_are_cut_on_the_host_copy_and_change_nothing():
    module = _module('labeled', 'TripletMarginLoss')
    texts = [t for pair in zip(SHORT, LONG) for t in pair]
    batch = get_kind('labeled').collate([(t, i % 4) for i, t in enumerate(texts)], module.model.preprocess, None)
    assert len(module.model.backbone.length_groups(batch['a'])) > 1  # grouping pays here
    where_it_is = _run(module, batch, None)
    assert len(LengthText.measured) == 1 and LengthText.measured[0] is batch['a']['attention_mask']
    host = copy.deepcopy(batch)
    from_host = _run(module, batch, host)
    assert LengthText.measured and all(mask is host['a']['attention_mask'] for mask in LengthText.measured)
    _assert_same(from_host, where_it_is)


def test_joined_sides_are_joined_and_grouped_on_the_host():
    module = _module('pairs', 'InfoNCE')
    host, batch = _mixed_pairs(module)
    where_it_is = _run(module, batch, None)
    assert any(isinstance(m, OnDevice) for m in LengthText.measured)  # joined and measured "on the device"
    from_host = _run(module, batch, host)
    assert LengthText.measured and not any(isinstance(m, OnDevice) for m in LengthText.measured)
    _assert_same(from_host, where_it_is)


def test_gradcache_chunks_are_ordered_and_cut_on_the_host():
    module = _module('pairs', 'InfoNCE')
    host_batch, batch = _mixed_pairs(module)
    results = []
    for host in (None, host_batch):
        module.zero_grad(set_to_none=True)
        LengthText.measured = []
        step = CachedStep(module, 3, contextlib.nullcontext, lambda v: v.backward())
        value, sides = step.loss(batch, torch.device('cpu'), host)
        step.backpropagate(value, sides, torch.device('cpu'))
        results.append((float(value.detach()), _grads(module), list(LengthText.measured)))
    assert any(isinstance(m, OnDevice) for m in results[0][2])  # without a host copy: measured in place
    assert results[1][2] and not any(isinstance(m, OnDevice) for m in results[1][2])
    _assert_same(results[1][:2], results[0][:2])
