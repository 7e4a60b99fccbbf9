"""unlocked_layers and layer_decay on any family through Backbone.depth_layers() (here its default, layer_groups())."""
from __future__ import annotations

import pytest
import torch

import finetune
from finetune.errors import OptionError
from finetune.layers import PatchDropout, block_layers, layer_index
from finetune.losses import build_loss
from finetune.training.optim import parameter_groups

from test_training import text_pairs


def test_the_default_layers_are_the_layer_groups_and_every_parameter_has_one():
    model = finetune.build_model('fake-text')
    backbone = model.backbone
    assert backbone.depth_layers() == [(g,) for g in backbone.layer_groups()]
    index, count = layer_index(backbone)
    assert count == len(backbone.layer_groups()) and set(index) == {n for n, _ in backbone.named_parameters()}
    assert min(index.values()) == 0 and max(index.values()) == count - 1


def test_block_layers_put_the_rest_with_the_last_block():
    names = ['emb.w', 'pos', 'blocks.0.w', 'blocks.1.w', 'norm.w', 'proj']
    assert block_layers(names, ['blocks.0', 'blocks.1'], ['emb', 'pos']) == [
        ('emb.w', 'pos'), ('blocks.0',), ('blocks.1', 'norm.w', 'proj')]


def test_unlocked_layers_and_layer_decay_on_a_one_tower_model():
    model = finetune.build_model('fake-text', {'unlocked_layers': 1, 'layer_decay': 0.5})
    index, count = layer_index(model.backbone)
    for name, p in model.backbone.named_parameters():
        assert p.requires_grad == (index[name] == count - 1), name
    groups = parameter_groups(model, build_loss('InfoNCE', None, 'pairs'), 1e-3, 1e-2)
    assert [g['lr'] for g in groups][0] == 1e-3  # one block trains: the full rate (and the head, if any)
    decayed = finetune.build_model('fake-text', {'layer_decay': 0.5})
    index, count = layer_index(decayed.backbone)
    rates = {id(p): g['lr'] for g in parameter_groups(decayed, build_loss('InfoNCE', None, 'pairs'), 1.0, 1.0)
             for p in g['params']}
    for name, p in decayed.backbone.named_parameters():
        assert rates[id(p)] == pytest.approx(0.5 ** (count - 1 - index[name])), name
    with pytest.raises(OptionError, match='one tower'):
        finetune.build_model('fake-text', {'unlocked_layers': {'text': 1}})


def test_fit_trains_with_layer_decay():
    run = finetune.fit('fake-text', text_pairs(), epochs=1, batch_size=8, num_workers=0, precision='fp32',
                       model_options={'layer_decay': 0.5}, log=lambda m: None)
    assert run.model.options['layer_decay'] == 0.5


def test_patch_dropout_keeps_the_first_tokens_and_the_order():
    drop = PatchDropout(0.5, keep_first=2)
    x = torch.arange(10, dtype=torch.float32).reshape(1, 10, 1).repeat(3, 1, 4)
    out = drop.train()(x)
    assert out.shape == (3, 2 + 4, 4)
    assert torch.equal(out[:, :2], x[:, :2])
    kept = out[:, 2:, 0]
    assert torch.all(kept[:, 1:] > kept[:, :-1])  # in their order
    assert torch.equal(drop.eval()(x), x)
