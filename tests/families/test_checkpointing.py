"""Gradient checkpointing (model_options={'gradient_checkpointing': True}) in each family that has it: the same
gradients as without it, its layers run again in the backward pass, and it trains with LoRA adapters on a frozen
backbone; families without it say so by name."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import finetune
from finetune.errors import OptionError
from test_training import text_pairs

TEXTS = ['a dog runs', 'the old man plays the red guitar', 'the cat eats bread']


def _no_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model.train()


def _gradients(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    """The gradients of a loss that ties the rows together (their similarities), by parameter name."""
    model.zero_grad(set_to_none=True)
    embeddings = model(batch)
    (embeddings @ embeddings.T).triu(1).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _count_calls(module: nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_pre_hook(lambda *args: calls.append(1))  # a recomputation may stop before the end
    return calls


def _same_gradients_checkpointed(name: str, options: dict, batch_of, layer_of) -> None:
    """Build `name` twice with the same weights, with and without checkpointing: equal gradients, and a module
    inside a checkpointed layer (`layer_of(backbone)`) runs once more, in the backward pass."""
    torch.manual_seed(0)
    plain = _no_dropout(finetune.build_model(name, options))
    checkpointed = _no_dropout(finetune.build_model(name, dict(options, gradient_checkpointing=True)))
    checkpointed.load_state_dict(plain.state_dict())
    batch = batch_of(plain)
    calls = _count_calls(layer_of(checkpointed.backbone))
    expected, got = _gradients(plain, batch), _gradients(checkpointed, batch)
    assert len(calls) == 2, 'the checkpointed layer should run again in the backward pass'
    assert got.keys() == expected.keys() and len(got) > 10
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)


def test_a_bert_gives_the_same_gradients_with_checkpointing(tiny_bert_dir):
    _same_gradients_checkpointed(f'hf:{tiny_bert_dir}', {}, lambda model: model.preprocess(TEXTS),
                                 lambda backbone: backbone.model.encoder.layer[0].attention)


def test_a_timm_vit_gives_the_same_gradients_with_checkpointing():
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    _same_gradients_checkpointed('timm:vit_tiny_patch16_224', {'pretrained': False, 'pooler': 'mean'},
                                 lambda model: images, lambda backbone: backbone.model.blocks[0].norm1)


def test_a_hf_clip_tower_checkpoints_its_layers(tiny_clip_dir):
    model = finetune.build_model(f'hf:{tiny_clip_dir}', {'tower': 'text', 'gradient_checkpointing': True})
    model = _no_dropout(model)
    layer = next(m for n, m in model.backbone.named_modules() if n.endswith('encoder.layers.0'))
    calls = _count_calls(layer.layer_norm1)
    _gradients(model, model.preprocess(TEXTS))
    assert len(calls) == 2


def test_a_module_of_a_transformers_model_checkpoints_its_layers_too(tiny_bert_dir):
    """The way older transformers' CLIP towers (plain modules of a PreTrainedModel) get it."""
    from finetune_hfhub import enable_checkpointing
    model = _no_dropout(finetune.build_model(f'hf:{tiny_bert_dir}'))
    encoder = model.backbone.model.encoder
    assert enable_checkpointing(encoder) and not enable_checkpointing(nn.Linear(2, 2))
    calls = _count_calls(encoder.layer[1].attention)
    _gradients(model, model.preprocess(TEXTS))
    assert len(calls) == 2


def test_checkpointing_trains_lora_adapters_on_a_frozen_bert(tiny_bert_dir):
    options = {'gradient_checkpointing': True, 'lora': True}
    base = finetune.build_model(f'hf:{tiny_bert_dir}', options)
    frozen = {n: p.detach().clone() for n, p in base.named_parameters() if not p.requires_grad}
    run = finetune.fit(base, text_pairs()[:16], epochs=1, batch_size=8, learning_rate=1e-2, num_workers=0,
                       progress=False, log=lambda m: None, precision='fp32')
    losses = [h['loss'] for h in run.history if 'loss' in h]
    assert len(losses) == 2 and all(np.isfinite(losses))
    trained = dict(run.model.named_parameters())
    assert any('lora_B' in n and p.abs().sum() > 0 for n, p in trained.items())  # the adapters (B starts at 0) moved
    for name, value in frozen.items():  # the backbone's own weights never moved
        torch.testing.assert_close(trained[name], value, msg=name)


def test_families_without_checkpointing_say_so():
    with pytest.raises(OptionError, match="'gradient_checkpointing'.*TorchvisionBackbone.*leave it False"):
        finetune.build_model('resnet18', {'pretrained': False, 'gradient_checkpointing': True})
    with pytest.raises(OptionError, match="'gradient_checkpointing'.*leave it False"):
        finetune.build_model('fake-text', {'gradient_checkpointing': True})


def test_a_timm_model_without_checkpointing_is_named(monkeypatch):
    import timm.models.resnet

    def refuse(self, enable=True):
        raise AssertionError('gradient checkpointing not supported')
    monkeypatch.setattr(timm.models.resnet.ResNet, 'set_grad_checkpointing', refuse)
    with pytest.raises(OptionError, match="timm model 'resnet18' \\(ResNet\\) cannot recompute.*not supported"):
        finetune.build_model('timm:resnet18', {'pretrained': False, 'gradient_checkpointing': True})
