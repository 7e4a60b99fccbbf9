"""The CLIP kit on tiny random towers (open_clip, Hugging Face CLIP, timm ViT): unlocked_layers trains only the
last blocks, layer_decay gives each block its rate, patch_dropout drops tokens in training only."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import finetune
from finetune.errors import OptionError
from finetune.losses import build_loss
from finetune.training.optim import make_optimizer, parameter_groups

open_clip = pytest.importorskip('open_clip')

TINY = 'finetune-test-recipes-clip'
TINY_CFG = {
    'embed_dim': 32,
    'vision_cfg': {'image_size': 32, 'layers': 3, 'width': 64, 'patch_size': 8},
    'text_cfg': {'context_length': 16, 'vocab_size': 49408, 'width': 64, 'heads': 2, 'layers': 2},
}
TEXTS = ['a dog on the beach', 'a red car', 'two cats', 'a bowl of soup']


@pytest.fixture(scope='module')
def tiny_name(tmp_path_factory):
    path = tmp_path_factory.mktemp('recipes_cfg') / f'{TINY}.json'
    path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(path)
    return f'openclip:{TINY}'


def _clip_step(model, lr=1e-2):
    """One optimizer step of the CLIP loss on 4 random images and texts; the parameters before it."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    texts = model.towers['text'].preprocess(TEXTS)
    images = torch.randn(4, 3, 32, 32)
    t, i = model(texts, tower='text'), model(images, tower='image')
    logits = 10 * t @ i.T
    loss = F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))
    loss.backward()
    optimizer = make_optimizer('adamw', parameter_groups(model, build_loss('CLIPLoss', None, 'text-image'), lr,
                                                         lr), None)
    optimizer.step()
    return {n: not torch.equal(before[n], p.detach()) for n, p in model.named_parameters()}


def test_openclip_layers_are_stem_blocks_and_the_top_with_the_last_block(tiny_name):
    model = finetune.build_model(tiny_name, {'pretrained': False})
    layers = model.towers['image'].backbone.depth_layers()
    assert len(layers) == 1 + 3
    assert set(layers[0]) == {'visual.conv1.weight', 'visual.class_embedding', 'visual.positional_embedding',
                              'visual.ln_pre.weight', 'visual.ln_pre.bias'}
    assert layers[1] == ('visual.transformer.resblocks.0',) and layers[3][0] == 'visual.transformer.resblocks.2'
    assert {'visual.proj', 'visual.ln_post.weight'} <= set(layers[3])
    text = model.towers['text'].backbone.depth_layers()
    assert len(text) == 3 and 'text.token_embedding.weight' in text[0] and 'text.text_projection' in text[2]


def test_only_the_unlocked_blocks_change_after_a_step(tiny_name):
    torch.manual_seed(0)
    model = finetune.build_model(tiny_name, {'pretrained': False, 'unlocked_layers': {'image': 1}})
    changed = _clip_step(model)
    image = {n: c for n, c in changed.items() if n.startswith('towers.image.')}
    last = ('towers.image.backbone.visual.transformer.resblocks.2.', 'towers.image.backbone.visual.ln_post.',
            'towers.image.backbone.visual.proj')
    assert all(c == n.startswith(last) for n, c in image.items()), [n for n, c in image.items() if c]
    assert any(image.values())
    text = [c for n, c in changed.items() if n.startswith('towers.text.')]
    assert all(text)  # the tower not named trains whole
    both = finetune.build_model(tiny_name, {'pretrained': False, 'unlocked_layers': 0})
    assert not any(p.requires_grad for p in both.towers['image'].parameters())
    assert both.logit_scale.requires_grad


def test_layer_decay_gives_each_block_its_learning_rate(tiny_name):
    model = finetune.build_model(tiny_name, {'pretrained': False, 'layer_decay': 0.5})
    groups = parameter_groups(model, build_loss('CLIPLoss', None, 'text-image'), 1e-3, 1e-2)
    rate = {id(p): g['lr'] for g in groups for p in g['params']}
    named = dict(model.named_parameters())
    image = 'towers.image.backbone.visual.'
    assert rate[id(named[image + 'conv1.weight'])] == pytest.approx(1e-3 * 0.5 ** 3)
    assert rate[id(named[image + 'class_embedding'])] == pytest.approx(1e-3 * 0.5 ** 3)
    for block in range(3):
        for name, p in named.items():
            if name.startswith(f'{image}transformer.resblocks.{block}.'):
                assert rate[id(p)] == pytest.approx(1e-3 * 0.5 ** (2 - block)), name
    assert rate[id(named[image + 'proj'])] == pytest.approx(1e-3)
    text = 'towers.text.backbone.text.'
    assert rate[id(named[text + 'token_embedding.weight'])] == pytest.approx(1e-3 * 0.5 ** 2)
    assert rate[id(named['logit_scale'])] == 1e-2
    assert groups[0]['lr'] == 1e-3  # the full rate first (what the trainer logs)
    assert sum(len(g['params']) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad) + 1


def _tokens_seen(module: torch.nn.Module, run) -> int:
    seen = []

    def hook(m, args, kwargs):
        x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        seen.append(x.shape[1])
    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def test_openclip_patch_dropout_only_in_training(tiny_name):
    torch.manual_seed(0)
    model = finetune.build_model(tiny_name, {'pretrained': False, 'patch_dropout': 0.5, 'tower': 'image'})
    plain = finetune.build_model(tiny_name, {'pretrained': False, 'tower': 'image'})
    plain.load_state_dict(model.state_dict())
    images = torch.randn(2, 3, 32, 32)
    blocks = model.backbone.visual.transformer
    assert _tokens_seen(blocks, lambda: model.train()(images)) == 1 + 16 // 2  # class token + half the patches
    assert _tokens_seen(blocks, lambda: model.eval()(images)) == 1 + 16
    torch.testing.assert_close(model.eval()(images), plain.eval()(images))


def test_hf_clip_blocks_unlock_decay_and_patch_dropout(tiny_clip_dir):
    name = f'hf:{tiny_clip_dir}'
    torch.manual_seed(0)
    model = finetune.build_model(name, {'unlocked_layers': 1, 'patch_dropout': 0.5})
    image = model.towers['image'].backbone
    layers = image.depth_layers()
    assert len(layers) == 3 and 'vision_model.embeddings.patch_embedding.weight' in layers[0]
    assert 'visual_projection.weight' in layers[2] and layers[2][0] == 'vision_model.encoder.layers.1'
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all('encoder.layers.1.' in n or 'post_layernorm' in n or 'projection' in n
                           or 'final_layer_norm' in n or n == 'logit_scale' for n in trained), trained
    pixels = torch.randn(2, 3, 32, 32)
    encoder = image.vision_model.encoder
    assert _tokens_seen(encoder, lambda: model.train()(pixels, tower='image')) == 1 + 2
    assert _tokens_seen(encoder, lambda: model.eval()(pixels, tower='image')) == 1 + 4
    decayed = finetune.build_model(name, {'layer_decay': 0.75})
    groups = parameter_groups(decayed, build_loss('CLIPLoss', None, 'text-image'), 1.0, 1.0)
    rates = sorted({g['lr'] for g in groups})
    assert rates == pytest.approx([0.75 ** 2, 0.75, 1.0])


def test_timm_vit_patch_dropout_and_its_groups():
    torch.manual_seed(0)
    model = finetune.build_model('timm:vit_tiny_patch16_224', {'pretrained': False, 'patch_dropout': 0.5,
                                                                'unlocked_layers': 2})
    vit = model.backbone.model
    layers = model.backbone.depth_layers()
    assert len(layers) == 1 + len(vit.blocks) and 'model.norm.weight' in layers[-1]
    trained = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in model.backbone.named_parameters() if n.startswith(('model.blocks.10.',
                                                                                        'model.blocks.11.',
                                                                                        'model.norm.'))}
    images = torch.randn(1, 3, 224, 224)
    assert _tokens_seen(vit.blocks, lambda: model.train()(images)) == 1 + 98
    assert _tokens_seen(vit.blocks, lambda: model.eval()(images)) == 1 + 196
    with pytest.raises(OptionError, match='patch_dropout'):
        finetune.build_model('timm:resnet18', {'pretrained': False, 'patch_dropout': 0.5})


def test_the_options_are_checked(tiny_name):
    for options, match in [({'unlocked_layers': 'two'}, 'unlocked_layers'),
                           ({'unlocked_layers': {'images': 1}}, "no tower 'images'"),
                           ({'unlocked_layers': 9}, 'expected 0 to'),
                           ({'layer_decay': 1.5}, 'layer_decay'),
                           ({'patch_dropout': 1.0}, 'patch_dropout'),
                           ({'unlocked_layers': 1, 'lora': True}, 'give one of them')]:
        with pytest.raises(OptionError, match=match):
            finetune.build_model(tiny_name, {'pretrained': False, **options})
