"""build_model on the fake family of the tests (fake-image: a small ResNet-shaped network, 64x64 inputs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import finetune
from finetune import build_model
from finetune.errors import InputError, OptionError

NAME = 'fake-image'
SMALL = {'pretrained': False, 'preprocess_options': {'image_size': 64, 'resize_size': 64}}
TOP_LEVEL = ('conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'layer4')


def options(**extra):
    return {**SMALL, **extra}


def build(**extra):
    torch.manual_seed(0)
    return build_model(NAME, options(**extra))


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module')
def gem32():
    """GeM pooler + projection to 32 dimensions."""
    return build(pooler='GeM', output_dim=32)


@pytest.fixture(scope='module')
def classifier_model():
    return build(output_dim=32, head='cosine_classifier', head_options={'num_classes': 5})


# ---------------------------------------------------------------- unknown keys and values

def test_unknown_option_key_lists_valid_keys_and_the_closest():
    with pytest.raises(OptionError) as info:
        build_model(NAME, options(poler='GeM'))
    message = str(info.value)
    assert "'poler'" in message
    assert "Did you mean 'pooler'" in message
    assert 'Valid keys' in message
    for key in ('pretrained', 'pooler_options', 'output_dim', 'head', 'freeze', 'normalize'):
        assert repr(key) in message


def test_unknown_pooler_value_suggests_the_closest():
    with pytest.raises(OptionError) as info:
        build_model(NAME, options(pooler='gemm'))
    message = str(info.value)
    assert "'gemm'" in message
    assert "Did you mean 'GeM'" in message


@pytest.mark.parametrize('p', [0, -2.0, float('nan')])
def test_pooler_p_must_be_positive(p):
    with pytest.raises(OptionError) as info:
        build_model(NAME, options(pooler='GeM', pooler_options={'p': p}))
    assert "'p'" in str(info.value)
    assert 'positive' in str(info.value)


def test_unknown_pooler_option_key():
    with pytest.raises(OptionError) as info:
        build_model(NAME, options(pooler='GeM', pooler_options={'power': 3}))
    message = str(info.value)
    assert "'power'" in message and "'p'" in message and "'eps'" in message


@pytest.mark.parametrize('value', [-4, 0, '10', True, 2.5])
def test_output_dim_must_be_a_positive_integer(value):
    with pytest.raises(OptionError) as info:
        build_model(NAME, options(output_dim=value))
    message = str(info.value)
    assert "'output_dim'" in message
    assert 'positive integer' in message
    assert repr(value) in message


def test_pretrained_missing_file_names_the_path():
    with pytest.raises(OptionError) as info:
        build_model(NAME, {'pretrained': '/nonexistent.pth'})
    message = str(info.value)
    assert '/nonexistent.pth' in message
    assert "'pretrained'" in message


def test_pretrained_wrong_type():
    with pytest.raises(OptionError, match="'pretrained'"):
        build_model(NAME, options(pretrained=1))


def test_cosine_classifier_needs_num_classes():
    with pytest.raises(OptionError) as info:
        build_model(NAME, options(head='cosine_classifier'))
    assert 'num_classes' in str(info.value)


def test_unknown_head_suggests_the_closest():
    with pytest.raises(OptionError) as info:
        build_model(NAME, options(head='cosine'))
    assert "'cosine_classifier'" in str(info.value)


def test_projection_head_needs_output_dim():
    with pytest.raises(OptionError, match='output_dim'):
        build_model(NAME, options(head='projection'))


def test_pooler_options_without_pooler():
    with pytest.raises(OptionError) as info:
        build_model(NAME, options(pooler_options={'p': 3.0}))
    message = str(info.value)
    assert "'pooler_options'" in message
    assert "'pooler'" in message


def test_cls_pooler_on_a_cnn_names_the_poolers_that_fit():
    with pytest.raises(OptionError) as info:
        build_model(NAME, options(pooler='cls'))
    message = str(info.value)
    assert "'cls'" in message
    assert 'map' in message
    assert 'Poolers that fit' in message
    fits = message.split('Poolers that fit:')[1]
    for name in ('GeM', 'avg', 'max'):
        assert name in fits
    assert 'cls' not in fits


def test_options_must_be_a_dict():
    with pytest.raises(OptionError, match='dict'):
        build_model(NAME, ['pretrained'])


def test_bad_preprocess_option():
    with pytest.raises(OptionError) as info:
        build_model(NAME, {'pretrained': False, 'preprocess_options': {'image_sise': 64}})
    assert "Did you mean 'image_size'" in str(info.value)


# ---------------------------------------------------------------- freeze

def test_freeze_true_freezes_backbone_but_not_pooler_or_head():
    model = build(pooler='GeM', output_dim=16, freeze=True)
    backbone = list(model.backbone.named_parameters())
    assert backbone
    assert all(not p.requires_grad for _, p in backbone)
    assert model.pooler.p.requires_grad
    head = list(model.projection.parameters())
    assert head and all(p.requires_grad for p in head)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {'pooler.p', 'projection.layers.0.weight', 'projection.layers.0.bias'}
    # gradients reach p and the head through the frozen backbone
    model.train()
    model(images(2)).sum().backward()
    assert model.pooler.p.grad is not None
    assert model.projection.layers[0].weight.grad is not None
    assert all(p.grad is None for _, p in backbone)


def test_frozen_batchnorm_keeps_its_running_statistics():
    model = build(freeze=['conv1', 'bn1', 'layer1'])
    bn1, layer4_bn = model.backbone.bn1, model.backbone.layer4[0].bn1
    frozen, trained = bn1.running_mean.clone(), layer4_bn.running_mean.clone()
    model.train()
    assert not bn1.training and layer4_bn.training
    with torch.no_grad():
        model(images(2) * 3 + 1)
    assert torch.equal(bn1.running_mean, frozen)  # frozen: neither its weights nor its statistics move
    assert not torch.equal(layer4_bn.running_mean, trained)
    model.eval()
    assert not layer4_bn.training
    whole = build(freeze=True).train()
    assert not any(m.training for m in whole.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_freeze_list_freezes_exactly_the_prefix():
    model = build(freeze=['layer1'])
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    expected = {n for n, _ in model.backbone.named_parameters() if n.startswith('layer1.')}
    assert expected
    assert frozen == expected


def test_freeze_accepts_a_single_string_and_nested_prefixes():
    model = build(freeze='layer2.0')
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    expected = {n for n, _ in model.backbone.named_parameters() if n.startswith('layer2.0.')}
    assert expected and frozen == expected


def test_freeze_prefix_matches_whole_name_parts_only():
    # 'layer1.0.conv' is a string prefix of 'layer1.0.conv1.weight' but not a layer: refused
    with pytest.raises(OptionError) as info:
        build_model(NAME, options(freeze=['layer1.0.conv']))
    message = str(info.value)
    assert "'layer1.0.conv'" in message
    assert "Did you mean" in message and "'layer1.0'" in message


def test_freeze_an_exact_parameter_name():
    model = build(freeze=['conv1.weight', 'layer4.'])
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    expected = {'conv1.weight'} | {n for n, _ in model.backbone.named_parameters() if n.startswith('layer4.')}
    assert frozen == expected


def test_freeze_false_leaves_everything_trainable():
    model = build(freeze=False)
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_unknown_prefix_lists_top_level_layers():
    with pytest.raises(OptionError) as info:
        build_model(NAME, options(freeze=['nonexistent']))
    message = str(info.value)
    assert "'nonexistent'" in message
    assert 'Top-level layers' in message
    for layer in TOP_LEVEL:
        assert layer in message


def test_freeze_bad_type():
    with pytest.raises(OptionError, match="'freeze'"):
        build_model(NAME, options(freeze=3))


# ---------------------------------------------------------------- outputs

def test_output_dim_gives_normalized_embeddings(gem32):
    assert gem32.output_dim == 32
    with torch.no_grad():
        out = gem32(images(3))
    assert out.shape == (3, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-5)


def test_default_model_uses_own_pooling_and_its_own_dims():
    model = build()
    assert model.pooler is None and model.projection is None and model.classifier is None
    assert model.output_dim == 16
    assert not model.training  # build_model returns eval mode
    with torch.no_grad():
        out = model(images(2))
    assert out.shape == (2, 16)


def test_normalize_false_gives_non_unit_norms():
    model = build(output_dim=32, normalize=False)
    with torch.no_grad():
        out = model(images(4))
    assert out.shape == (4, 32)
    norms = out.norm(dim=-1)
    assert not torch.allclose(norms, torch.ones(4), atol=1e-3)
    # the normalized model differs only by the L2 normalization
    model.normalize = True
    with torch.no_grad():
        torch.testing.assert_close(model(images(4)), out / norms[:, None], rtol=1e-5, atol=1e-6)


def test_return_logits_with_cosine_classifier(classifier_model):
    with torch.no_grad():
        result = classifier_model(images(3), return_logits=True)
    assert isinstance(result, tuple) and len(result) == 2
    embeddings, logits = result
    assert embeddings.shape == (3, 32)
    assert logits.shape == (3, 5)
    scale = classifier_model.classifier.scale
    assert torch.all(logits.abs() <= scale + 1e-4)
    # without return_logits the model gives the embedding alone
    with torch.no_grad():
        alone = classifier_model(images(3))
    assert isinstance(alone, torch.Tensor)
    torch.testing.assert_close(alone, embeddings)


def test_cosine_classifier_without_output_dim_uses_backbone_dim():
    model = build(head='cosine_classifier', head_options={'num_classes': 3, 'scale': 2.0})
    assert model.classifier.weight.shape == (3, 16)
    assert model.classifier.scale == 2.0
    with torch.no_grad():
        emb, logits = model(images(2), return_logits=True)
    assert emb.shape == (2, 16) and logits.shape == (2, 3)


def test_return_logits_without_classifier_head(gem32):
    with pytest.raises(OptionError) as info:
        gem32(images(1), return_logits=True)
    assert 'cosine_classifier' in str(info.value)


def test_mlp_projection_from_head_options():
    model = build(output_dim=8, head_options={'hidden_dims': [20], 'activation': 'gelu'})
    linears = [m for m in model.projection.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 20), (20, 8)]
    assert any(isinstance(m, torch.nn.GELU) for m in model.projection.layers)


def test_gem_pooler_options_reach_the_pooler():
    model = build(pooler='gem', pooler_options={'p': 4.5, 'learnable': False})
    assert model.pooler.name == 'GeM'
    assert model.pooler.p.item() == pytest.approx(4.5)
    assert not model.pooler.p.requires_grad
    assert model.options['pooler'] == 'GeM'


# ---------------------------------------------------------------- encode

def _pictures(n: int) -> list[np.ndarray]:
    """Noisy pictures of different colours and sizes."""
    rng = np.random.default_rng(0)
    colours = [(200, 30, 30), (30, 200, 40), (30, 40, 220), (220, 220, 30)]
    return [np.clip(rng.normal(0, 30, size=(48 + 8 * i, 80, 3)) + colours[i % 4], 0, 255).astype(np.uint8)
            for i in range(n)]


def test_encode_pil_arrays_and_paths(gem32, tmp_path):
    arrays = _pictures(3)
    pils = [Image.fromarray(a) for a in arrays]
    paths = []
    for i, img in enumerate(pils):
        path = tmp_path / f'img{i}.png'
        img.save(path)
        paths.append(str(path))

    from_pil = gem32.encode(pils)
    from_arrays = gem32.encode(arrays)
    from_paths = gem32.encode(paths, batch_size=2)
    for out in (from_pil, from_arrays, from_paths):
        assert isinstance(out, np.ndarray)
        assert out.dtype == np.float32
        assert out.shape == (3, 32)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # the same pixels give the same embedding whatever form they came in (PNG is lossless)
    np.testing.assert_allclose(from_arrays, from_pil, atol=1e-5)
    np.testing.assert_allclose(from_paths, from_pil, atol=1e-5)
    # and different pictures give different embeddings
    assert not np.allclose(from_pil[0], from_pil[1], atol=1e-3)
    assert not gem32.training


def test_encode_matches_forward_on_preprocessed_batch(gem32):
    arrays = _pictures(2)
    batch = gem32.preprocess(arrays)
    assert batch.shape == (2, 3, 64, 64)
    with torch.no_grad():
        direct = gem32(batch).numpy()
    np.testing.assert_allclose(gem32.encode(arrays), direct, atol=1e-5)


def test_encode_to_torch(gem32):
    out = gem32.encode(_pictures(2), convert_to='torch')
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 32) and out.dtype == torch.float32


def test_encode_restores_training_mode(gem32):
    gem32.train()
    try:
        gem32.encode(_pictures(1))
        assert gem32.training
    finally:
        gem32.eval()


def test_encode_missing_file_names_it(gem32, tmp_path):
    missing = tmp_path / 'no_such_image.png'
    with pytest.raises(InputError) as info:
        gem32.encode([str(missing)])
    assert str(missing) in str(info.value)


def test_encode_undecodable_file(gem32, tmp_path):
    bad = tmp_path / 'not_an_image.png'
    bad.write_text('hello')
    with pytest.raises(InputError) as info:
        gem32.encode([str(bad)])
    assert str(bad) in str(info.value)


@pytest.mark.parametrize('kwargs', [{'batch_size': 0}, {'batch_size': True}, {'convert_to': 'list'}])
def test_encode_bad_arguments(gem32, kwargs):
    with pytest.raises(InputError):
        gem32.encode(_pictures(1), **kwargs)


def test_encode_bad_item(gem32):
    with pytest.raises(InputError, match='item 1'):
        gem32.encode([_pictures(1)[0], 42])
    with pytest.raises(InputError, match='shape'):
        gem32.encode([np.zeros((8, 8, 5), dtype=np.uint8)])


@pytest.mark.parametrize('batch', [
    torch.randn(2, 4, 64, 64),  # 4 channels
    torch.randn(3, 64, 64),     # no batch dimension
    torch.zeros(2, 3, 64, 64, dtype=torch.uint8),  # not float
    np.zeros((2, 3, 64, 64), dtype=np.float32),    # not a tensor
])
def test_wrong_batch_raises_input_error(gem32, batch):
    with pytest.raises(InputError) as info:
        gem32(batch)
    assert "'fake-image'" in str(info.value)
    # raised by our check, not re-raised from inside torch
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert isinstance(info.value, finetune.FinetuneError)


def test_encode_one_item_is_a_batch_of_one(gem32, tmp_path):
    path = tmp_path / 'one.png'
    Image.new('RGB', (40, 30), (200, 10, 10)).save(path)
    by_path = gem32.encode(str(path))
    assert by_path.shape == (1, 32)
    np.testing.assert_allclose(gem32.encode(Image.open(path)), by_path, atol=1e-6)
    assert gem32.encode(np.zeros((30, 40, 3), dtype=np.uint8)).shape == (1, 32)
    assert gem32.encode(np.zeros((3, 30, 40, 3), dtype=np.uint8)).shape == (3, 32)  # a stack is many


def test_cls_pooler_on_a_cnn_is_refused_before_the_model_is_built(monkeypatch):
    import fake_plugin
    monkeypatch.setattr(fake_plugin, 'build_image', lambda options: pytest.fail('built'))
    with pytest.raises(OptionError, match="'cls' needs tokens features"):
        finetune.build_model('fake-image', {'pooler': 'cls'})
