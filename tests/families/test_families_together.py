"""The built-in families together, through the core's public calls: what they register and describe, their
defaults, their offline switches, and core behaviour on real network shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import finetune
from finetune import build_model
import finetune.hub as hub
from finetune.cli import main
from finetune.describe import plugins_table
from finetune.errors import UnknownModelError
from finetune.modalities import item_modality
from finetune.registry import REGISTRY
from test_describe_cli import WIDE, _console, _row, _squash


# ---------------------------------------------------------------- listing and describing

def test_list_models_wildcards_and_tasks():
    assert finetune.list_models('resnet*') == ['resnet-base', 'resnet-large', 'resnet101', 'resnet152',
                                               'resnet18', 'resnet34', 'resnet50']
    image = finetune.list_models(task='image-to-image')
    assert len(image) >= 85  # 80 torchvision models + 4 Jina aliases + efficientnet-lite0
    assert finetune.list_models(task='mesh-to-mesh') == ['pointnet-base', 'pointnet-small']


def test_unknown_model_lists_closest_names_and_the_prefixes():
    with pytest.raises(UnknownModelError) as err:
        finetune.build_model('resnet5')
    message = str(err.value)
    assert "unknown model 'resnet5'" in message and "'resnet50'" in message and 'timm:<name>' in message
    assert finetune.get_spec('ResNet50').name == 'resnet50'


def test_describe_models_image_to_image_table():
    console, buffer = _console()
    shown = finetune.describe_models(task='image-to-image', console=console)
    text = buffer.getvalue()
    header = next(line for line in text.splitlines() if 'architecture' in line)
    columns = [c.strip() for c in header.strip().strip('┃').split('┃')]
    assert columns == ['name', 'task', 'output_dim', 'architecture', 'description']

    resnet = _row(text, 'resnet-base')
    assert resnet[1:4] == ['image-to-image', '2048', 'cnn']
    assert 'resnet50' in resnet[4]  # alias of
    efficient = _row(text, 'efficientnet-base')
    assert efficient[1:4] == ['image-to-image', '1792', 'cnn']
    assert _row(text, 'resnet18')[2] == '512'
    assert _row(text, 'vit_b_16')[3] == 'transformer'

    names = [spec.name for spec in shown]
    assert 'resnet-base' in names and 'efficientnet-base' in names
    assert all('image-to-image' in spec.tasks for spec in shown)
    assert names == sorted(names)


# ---------------------------------------------------------------- list_model_options

def test_list_model_options_resnet50_shows_torchvisions_defaults():
    console, buffer = _console()
    defaults = finetune.list_model_options('resnet50', console=console)
    assert defaults['pretrained'] is True and defaults['preprocess_options.image_size'] == 224
    assert _row(buffer.getvalue(), 'pretrained')[2] == 'True'


def test_list_model_options_vgg16_pooler_row_explains_the_replacement():
    console, buffer = _console()
    finetune.list_model_options('vgg16', console=console)
    pooler = _row(buffer.getvalue(), 'pooler')
    description = _squash(pooler[3])
    assert 'GeM' in description
    assert 'replaces the adaptive avgpool and the hidden classifier layers' in description
    assert '4096 -> 512' in description


def test_list_model_options_resnet_pooler_row_has_no_dimension_change():
    console, buffer = _console()
    finetune.list_model_options('resnet50', console=console)
    description = _row(buffer.getvalue(), 'pooler')[3]
    assert 'replaces the global average pooling' in description
    assert '->' not in description


def test_plugins_table_lists_the_builtin_plugins():
    console, buffer = _console()
    rows = plugins_table(console=console)
    by_name = {row['plugin']: row for row in rows}
    assert by_name['torchvision']['status'] == 'loaded'
    assert int(by_name['torchvision']['models']) > 50
    assert 'timm' in by_name
    assert 'timm:<name>' in by_name['timm']['detail']
    text = buffer.getvalue()
    assert _row(text, 'torchvision')[1] == 'loaded'


def test_cli_models_by_task_shows_the_builtin_rows():
    result = CliRunner().invoke(main, ['models', '--task', 'image-to-image'], env=WIDE)
    assert result.exit_code == 0, result.output
    assert _row(result.output, 'resnet-base')[2] == '2048'
    assert _row(result.output, 'efficientnet-base')[2] == '1792'


# ---------------------------------------------------------------- defaults, modalities, offline switches

def test_the_mesh_modality_comes_from_its_plugin():
    names = [m.name for m in finetune.modalities.modalities()]
    assert names[:2] == ['text', 'image'] and 'mesh' in names
    assert item_modality('part.stl') == 'mesh' and item_modality(np.zeros((100, 3))) == 'mesh'
    assert 'mesh-to-mesh' in finetune.TASKS


def test_each_task_has_a_default_model():
    assert REGISTRY.default_model('text-to-text') == 'all-minilm-l6-v2'
    assert REGISTRY.default_model('image-to-image') == 'efficientnet-lite0'
    assert REGISTRY.default_model('text-to-image') == 'clip-base-en'
    assert REGISTRY.default_model('mesh-to-mesh') == 'pointnet-base'


def test_plugins_declare_their_offline_switches(monkeypatch):
    assert {'FINETUNE_OFFLINE', 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'} <= set(hub.offline_envs())
    for name in hub.offline_envs():
        monkeypatch.delenv(name, raising=False)
    assert hub.offline_requested() is None
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    assert hub.offline_requested() == 'offline mode is set (HF_HUB_OFFLINE)'
    monkeypatch.setenv('HF_HUB_OFFLINE', '0')
    assert hub.offline_requested() is None


# ---------------------------------------------------------------- core behaviour on real networks

@pytest.mark.parametrize('name, last_two', [('efficientnet_b0', {'features.7', 'features.8'}),
                                            ('vit_b_16', {'encoder.layers.encoder_layer_11', 'encoder.ln'}),
                                            ('timm:resnet18', {'model.layer3', 'model.layer4'})])
def test_except_last_layers_reaches_into_single_stacks(name, last_two):
    """A family whose network is one `features` stack (or a wrapped timm model) is split into its stages."""
    model = build_model(name, {'pretrained': False, 'freeze': {'except_last_layers': 2}})
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(any(n.startswith(g + '.') for g in last_two) for n in trainable)
    assert {g for g in last_two if any(n.startswith(g + '.') for n in trainable)} == last_two


def test_a_random_efficientnet_on_a_small_image_embeds_at_unit_length():
    """Its pooled features have a norm near 1e-12, where F.normalize's eps left them at 0.3-0.8."""
    torch.manual_seed(0)
    model = finetune.build_model('efficientnet_b0', {'pretrained': False,
                                                     'preprocess_options': {'image_size': 32, 'resize_size': 32}})
    emb = model(torch.randn(3, 3, 32, 32))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))


def test_the_measured_default_recipes():
    """Labeled data: image backbones train with NormalizedSoftmaxLoss, CNNs at 3e-4 (benchmarks/bench_recipes.py);
    text keeps batch-hard triplets and 3e-5, PointNet++ its cosine classifier at 1e-3."""
    logs = []
    rows = [(np.full((8, 8, 3), 60 * k, dtype=np.uint8), f'c{k}') for k in range(4) for _ in range(2)]
    run = finetune.fit('resnet18', rows, model_options={'pretrained': False, 'preprocess_options':
                       {'image_size': 32, 'resize_size': 32}}, batch_size=4, num_workers=0, log=logs.append)
    assert run.config['loss'] == 'NormalizedSoftmaxLoss' and run.config['learning_rate'] == 3e-4
    assert any("loss NormalizedSoftmaxLoss: the default of 'resnet18' for labeled data" in line for line in logs)
    assert finetune.build_model('vit_b_16', {'pretrained': False}).backbone.default_learning_rate is None
    assert finetune.build_model('timm:resnet18', {'pretrained': False}).backbone.default_learning_rate == 3e-4
    text = finetune.build_model('all-minilm-l6-v2').backbone
    assert text.default_losses == {} and text.default_learning_rate == 3e-5
    mesh = finetune.build_model('pointnet-small').backbone
    assert mesh.default_losses == {'labeled': 'NormalizedSoftmaxLoss'} and mesh.default_learning_rate == 1e-3
