"""torchvision plugin: every model's declared dims, surgery fidelity per family, weights offline."""
from __future__ import annotations

import os
import time
import warnings

import pytest
import torch
import torchvision.models as tvm
from torch import nn

import finetune
from finetune.errors import InputError, WeightsLoadError, WeightsNotFoundError
from finetune_torchvision._table import MODELS, TORCHVISION_VERSION
from finetune_torchvision.backbone import family_of, final_linear
from finetune_torchvision.build import probe_dims
from finetune_torchvision.catalog import classification_models, live_classification_models
from finetune_torchvision.weights import live_description, live_preprocess_defaults

TORCHVISION_SPECS = [s.name for s in finetune.REGISTRY.specs('image-to-image') if s.plugin == 'torchvision']

# one member of every torchvision family, at the smallest input each accepts (fast on a CPU)
FAMILY_MEMBERS = {
    'alexnet': 64, 'convnext_tiny': 64, 'densenet121': 64, 'efficientnet_b0': 64, 'efficientnet_v2_s': 64,
    'googlenet': 64, 'inception_v3': 80, 'maxvit_t': 224, 'mnasnet0_5': 64, 'mobilenet_v2': 64,
    'mobilenet_v3_small': 64, 'regnet_x_400mf': 64, 'resnet18': 64, 'resnext50_32x4d': 64,
    'shufflenet_v2_x0_5': 64, 'squeezenet1_1': 64, 'swin_t': 64, 'swin_v2_t': 64, 'vgg11': 64,
    'vit_b_32': 64, 'wide_resnet50_2': 64,
}


def test_every_torchvision_classification_model_is_registered():
    names = tvm.list_models(module=tvm)
    assert len(names) >= 80
    missing = [n for n in names if n not in finetune.list_models()]
    assert missing == []
    assert classification_models() == live_classification_models()
    for alias, target, dim in [('resnet-base', 'resnet50', 2048), ('resnet-large', 'resnet152', 2048),
                               ('efficientnet-base', 'efficientnet_b4', 1792),
                               ('efficientnet-large', 'efficientnet_b7', 2560)]:
        spec = finetune.get_spec(alias)
        assert (spec.alias_of, spec.output_dim) == (target, dim)


def test_shipped_table_matches_the_installed_torchvision():
    """The table that spares listing an import of torchvision says what torchvision itself says."""
    import importlib.metadata
    assert TORCHVISION_VERSION == importlib.metadata.version('torchvision').split('+')[0], \
        'regenerate it: python -m finetune_torchvision.gen_table'
    for name, entry in MODELS.items():
        assert entry['preprocess'] == live_preprocess_defaults(name), name
        assert entry['description'] == live_description(name), name


def test_listing_does_not_import_torchvision():
    import subprocess
    import sys
    code = 'import sys, finetune; finetune.list_models(); finetune.get_spec("vgg16").embedding_dim(); ' \
           'print("torchvision" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'


def test_family_members_cover_every_family():
    assert {family_of(n).key for n in FAMILY_MEMBERS} == {family_of(n).key for n in classification_models()}


@pytest.mark.slow
@pytest.mark.parametrize('name', TORCHVISION_SPECS)
def test_declared_output_dims_match_a_meta_forward(name):
    """The shipped table is proven here: a meta-device forward gives the same own and pooled dims."""
    spec = finetune.get_spec(name)
    target = spec.alias_of or name
    probe_dims.cache_clear()
    own, pooled = probe_dims(target)
    assert spec.output_dim == own == MODELS[target]['dims'][0]
    assert spec.embedding_dim({'pooler': 'GeM'}) == pooled == MODELS[target]['dims'][1]
    assert spec.embedding_dim({'pooler': None, 'output_dim': 64}) == 64


def _reference_model(name: str, size: int) -> nn.Module:
    """torchvision's own model, as it would be built for pretrained weights, final Linear -> Identity."""
    family = family_of(name)
    kwargs = {}
    if family.key == 'vit':
        kwargs['image_size'] = size
    if family.key in ('googlenet', 'inception'):
        kwargs.update(aux_logits=True, transform_input=True, init_weights=True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return tvm.get_model(name, weights=None, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(FAMILY_MEMBERS))
def test_family_forward_backward_and_fidelity(name, tmp_path):
    """Per family: our own-pooling embedding equals torchvision's pre-classifier output; avg and GeM
    poolers give the declared dims; gradients reach the first layer; embeddings are L2-normalized."""
    size = FAMILY_MEMBERS[name]
    torch.manual_seed(0)
    reference = _reference_model(name, size).eval()
    weights = tmp_path / f'{name}.pth'
    torch.save(reference.state_dict(), weights)
    pre = {'image_size': size, 'resize_size': size}
    x = torch.randn(2, 3, size, size)

    ours = finetune.build_model(name, {'pretrained': str(weights), 'normalize': False, 'preprocess_options': pre})
    head, linear = final_linear(reference, family_of(name))
    if linear is not None:
        if head is linear:
            setattr(reference, family_of(name).head, nn.Identity())
        else:
            head[-1] = nn.Identity()
        with torch.no_grad():
            expected = reference(x)
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4)
    assert ours.output_dim == finetune.get_spec(name).output_dim

    for pooler in ('avg', 'GeM'):
        model = finetune.build_model(name, {'pretrained': False, 'pooler': pooler, 'preprocess_options': pre})
        model.train()
        emb = model(x)
        assert emb.shape == (2, finetune.get_spec(name).embedding_dim({'pooler': pooler}))
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(2), rtol=1e-4, atol=1e-4)
        emb.sum().backward()
        first = next(p for p in model.backbone.parameters() if p.requires_grad)
        assert first.grad is not None and first.grad.abs().sum() > 0
        if pooler == 'GeM':
            assert model.pooler.p.grad is not None


def test_googlenet_and_inception_have_no_auxiliary_heads_and_train_to_a_tensor():
    for name, size in (('googlenet', 64), ('inception_v3', 80)):
        model = finetune.build_model(name, {'pretrained': False,
                                            'preprocess_options': {'image_size': size, 'resize_size': size}})
        assert not any(n.startswith(('aux', 'AuxLogits')) for n, _ in model.named_modules(prefix=''))
        assert not any('aux' in n.lower() for n, _ in model.backbone.named_parameters())
        model.train()
        out = model(torch.randn(2, 3, size, size))
        assert isinstance(out, torch.Tensor) and out.shape == (2, 1024 if name == 'googlenet' else 2048)


def test_googlenet_saved_and_loaded_gives_the_same_embeddings(tmp_path):
    pre = {'image_size': 64, 'resize_size': 64}
    model = finetune.build_model('googlenet', {'pretrained': False, 'preprocess_options': pre})
    assert model.backbone.use_transform_input  # the same with and without pretrained weights
    loaded = finetune.load(finetune.save_model(model, str(tmp_path / 'g')))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_vgg_gem_replaces_avgpool_and_hidden_layers():
    spec = finetune.get_spec('vgg16')
    assert spec.embedding_dim() == 4096 and spec.embedding_dim({'pooler': 'GeM'}) == 512
    assert 'replaces the adaptive avgpool and the hidden classifier layers' in spec.pooler_note
    assert '4096 -> 512' in spec.pooler_note


def test_pretrained_true_offline_names_file_cache_and_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.delenv('FINETUNE_OFFLINE', raising=False)
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        finetune.build_model('resnet18')
    elapsed = time.perf_counter() - start
    message = str(err.value)
    filename = os.path.basename(tvm.ResNet18_Weights.DEFAULT.url)
    assert filename in message
    assert os.path.join(str(tmp_path), 'hub', 'checkpoints') in message
    assert "'pretrained': False" in message and "'pretrained': '/path/to/" in message
    assert elapsed < 10, f'the offline error took {elapsed:.1f}s'


def test_pretrained_true_loads_a_file_from_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    checkpoints = tmp_path / 'hub' / 'checkpoints'
    checkpoints.mkdir(parents=True)
    torch.manual_seed(1)
    reference = tvm.resnet18()
    torch.save(reference.state_dict(), checkpoints / os.path.basename(tvm.ResNet18_Weights.DEFAULT.url))
    model = finetune.build_model('resnet18')
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    assert not any(p.is_meta for p in model.parameters())


def test_weights_file_that_does_not_fit_says_which_keys(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save(tvm.resnet18().state_dict(), path)
    with pytest.raises(WeightsLoadError, match=r"do not fit 'resnet34'.*missing"):
        finetune.build_model('resnet34', {'pretrained': str(path)})
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(WeightsLoadError, match='could not read weights'):
        finetune.build_model('resnet18', {'pretrained': str(junk)})


def test_safetensors_backbone_only_weights_load(tmp_path):
    from safetensors.torch import save_file
    source = finetune.build_model('resnet18', {'pretrained': False})
    path = tmp_path / 'backbone.safetensors'
    save_file(source.backbone.state_dict(), str(path))
    loaded = finetune.build_model('resnet18', {'pretrained': str(path)})
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), source(x))


def test_vit_checks_its_input_size():
    model = finetune.build_model('vit_b_32', {'pretrained': False,
                                              'preprocess_options': {'image_size': 64, 'resize_size': 64}})
    with pytest.raises(InputError, match='built for 64x64 images, got 96x96'):
        model(torch.randn(1, 3, 96, 96))


def test_preprocessing_defaults_follow_the_default_weights():
    defaults = finetune.list_model_options('inception_v3', console=_quiet())
    assert defaults['preprocess_options.image_size'] == 299
    assert finetune.list_model_options('efficientnet_v2_l', console=_quiet())['preprocess_options.mean'] == (0.5,) * 3


def _quiet():
    import io

    from rich.console import Console
    return Console(file=io.StringIO())
