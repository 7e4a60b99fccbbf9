"""Export of every family (tiny random models): ONNX graphs that embed like the torch model, int8, and the
sentence-transformers folder that SentenceTransformer loads offline."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import finetune
from finetune.errors import ExportError
from finetune.exporting.runtime import OnnxMultiTowerModel

TEXTS = ['the man is eating bread', 'a dog', 'the red car is fast and the blue car is slow', 'cat', 'happy sad',
         'a woman plays the piano in the old house', 'sky', 'sea and tree']


def _quiet(line: str) -> None:
    pass


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    return [rng.integers(0, 256, (40 + 5 * i, 36 + 3 * i, 3), dtype=np.uint8) for i in range(n)]


def _same(exported, model, items, tower=None, atol=1e-4):
    kwargs = {'tower': tower} if tower else {}
    ours = model.encode(items, **kwargs)
    np.testing.assert_allclose(exported.encode(items, batch_size=3, **kwargs), ours, atol=atol)


# ---------------------------------------------------------------- transformers text encoders
@pytest.mark.parametrize('options', [
    {'pooler': 'mean'},
    {'pooler': None},  # BERT's own pooler output
    {'pooler': 'GeM', 'output_dim': 8},
    {'pooler': 'max', 'normalize': False},
])
def test_text_encoder_onnx(tiny_bert_dir, tmp_path, options):
    model = finetune.build_model(f'hf:{tiny_bert_dir}', options)
    finetune.save_model(model, str(tmp_path / 'model'))
    folder = finetune.export(str(tmp_path / 'model'), log=_quiet)
    assert set(os.listdir(folder)) >= {'model.onnx', 'backbone', 'finetune_config.json', 'README.md'}
    assert os.path.isfile(os.path.join(folder, 'backbone', 'tokenizer.json'))  # the preprocessing beside it
    exported = finetune.load(folder)
    assert list(exported.inputs) == ['input_ids', 'attention_mask', 'token_type_ids']
    _same(exported, model, TEXTS)


def test_text_encoder_int8(tiny_bert_dir, tmp_path):
    model = finetune.build_model(f'hf:{tiny_bert_dir}', {'pooler': 'mean', 'output_dim': 16})
    folder = finetune.export(model, output=str(tmp_path / 'int8'), quantize='int8', log=_quiet)
    record = json.loads(open(os.path.join(folder, 'finetune_config.json')).read())['export']
    assert record['parity']['int8']['min_cosine'] >= 0.99
    from finetune.exporting.quantization import SMOOTHING_ALPHA
    int8 = record['int8']['']  # smoothed: the 6 weight MatMuls of each of the 2 layers, pooler and head
    assert int8['smoothing']['strength'] == SMOOTHING_ALPHA and int8['smoothing']['layers'] >= 12
    assert int8['quantized_layers'] + len(int8['fp32_layers']) >= int8['smoothing']['layers']
    got, ours = finetune.load(folder).encode(TEXTS), model.encode(TEXTS)
    assert (got * ours).sum(1).min() >= 0.99 and not np.allclose(got, ours, atol=1e-6)  # quantized, yet close


@pytest.mark.parametrize('options', [
    {'pooler': 'mean'},
    {'pooler': None},
    {'pooler': 'cls', 'output_dim': 8, 'head_options': {'hidden_dims': [16], 'activation': 'gelu'}},
    {'pooler': 'max', 'normalize': False},
])
def test_sentence_transformers_folder(tiny_bert_dir, tmp_path, options):
    from sentence_transformers import SentenceTransformer
    model = finetune.build_model(f'hf:{tiny_bert_dir}', options)
    finetune.save_model(model, str(tmp_path / 'model'))
    folder = finetune.export(str(tmp_path / 'model'), format='sentence-transformers', log=_quiet)
    assert folder == str(tmp_path / 'model-st')
    modules = [m['type'].rsplit('.', 1)[-1] for m in json.load(open(os.path.join(folder, 'modules.json')))]
    dense = (1 if options['pooler'] is None else 0) + (2 if options.get('output_dim') else 0)
    assert modules == ['Transformer', 'Pooling'] + ['Dense'] * dense + (['Normalize'] if options.get(
        'normalize', True) else [])
    st = SentenceTransformer(folder, device='cpu', local_files_only=True)
    np.testing.assert_allclose(st.encode(TEXTS), model.encode(TEXTS), atol=1e-5)
    card = open(os.path.join(folder, 'README.md')).read()
    assert 'SentenceTransformer(' in card and "finetune.load('.')" not in card
    record = json.load(open(os.path.join(folder, 'finetune_export.json')))['export']
    assert record['parity']['fp32']['min_cosine'] >= 0.999


def test_sentence_transformers_folder_refuses_what_it_cannot_hold(tiny_bert_dir, tmp_path):
    model = finetune.build_model(f'hf:{tiny_bert_dir}', {'pooler': 'GeM'})
    with pytest.raises(ExportError, match=r"its GeM pooler has no sentence-transformers module.*Formats for this "
                                          r"model: 'onnx'"):
        finetune.export(model, format='sentence-transformers', output=str(tmp_path / 'st'))
    assert not (tmp_path / 'st').exists()


# ---------------------------------------------------------------- CLIP towers
def test_hf_clip_one_graph_per_tower(tiny_clip_dir, tmp_path):
    model = finetune.build_model(f'hf:{tiny_clip_dir}', {'pretrained': True})
    folder = finetune.export(model, output=str(tmp_path / 'clip'), quantize='int8', log=_quiet)
    assert {'text.onnx', 'image.onnx'} <= set(os.listdir(folder))
    exported = finetune.load(folder)
    assert isinstance(exported, OnnxMultiTowerModel)
    for items in (TEXTS, _images(4)):
        assert (exported.encode(items) * model.encode(items)).sum(1).min() >= 0.99


def test_openclip_towers(tmp_path_factory, tmp_path):
    open_clip = pytest.importorskip('open_clip')
    cfg_dir = tmp_path_factory.mktemp('openclip_export_cfg')
    name = 'finetune-test-export-clip'
    (cfg_dir / f'{name}.json').write_text(json.dumps({
        'embed_dim': 16, 'vision_cfg': {'image_size': 32, 'layers': 1, 'width': 64, 'patch_size': 16},
        'text_cfg': {'context_length': 16, 'vocab_size': 49408, 'width': 64, 'heads': 2, 'layers': 1}}))
    open_clip.add_model_config(cfg_dir / f'{name}.json')
    model = finetune.build_model(f'openclip:{name}', {'pretrained': False})
    finetune.save_model(model, str(tmp_path / 'model'))
    exported = finetune.load(finetune.export(str(tmp_path / 'model'), log=_quiet))
    _same(exported, model, TEXTS)
    _same(exported, model, _images(4))


# ---------------------------------------------------------------- image families
@pytest.mark.parametrize('name, options', [
    ('resnet18', {'pooler': 'GeM', 'output_dim': 32}),
    ('mobilenet_v3_small', {'pooler': 'GeM'}),        # the pre-classifier Linear + Hardswish after our pooler
    ('squeezenet1_1', {}),                            # a convolution for a classifier
    pytest.param('googlenet', {}, marks=pytest.mark.slow),  # re-normalized inputs, inception blocks
    ('convnext_tiny', {'pooler': 'max'}),             # LayerNorm2d on (N, C, 1, 1)
])
def test_torchvision(tmp_path, name, options):
    model = finetune.build_model(name, {'pretrained': False, 'preprocess_options': {'image_size': 64,
                                                                                    'resize_size': 72}, **options})
    exported = finetune.load(finetune.export(model, output=str(tmp_path / 'out'), log=_quiet))
    _same(exported, model, _images(4), atol=2e-4)


@pytest.mark.slow
def test_torchvision_vit_tokens(tmp_path):
    model = finetune.build_model('vit_b_32', {'pretrained': False, 'pooler': 'avg'})  # token layout, class token
    exported = finetune.load(finetune.export(model, output=str(tmp_path / 'out'), log=_quiet))
    _same(exported, model, _images(3), atol=2e-4)


@pytest.mark.parametrize('name, options', [('timm:test_resnet', {'pooler': 'GeM'}), ('timm:test_vit', {}),
                                           ('timm:test_efficientnet', {'output_dim': 8})])
def test_timm(tmp_path, name, options):
    model = finetune.build_model(name, {'pretrained': False, **options})
    exported = finetune.load(finetune.export(model, output=str(tmp_path / 'out'), log=_quiet))
    _same(exported, model, _images(4), atol=2e-4)


# ---------------------------------------------------------------- PointNet++
@pytest.mark.parametrize('options', [{}, {'pooler': 'GeM'}, {'pooler': 'avg', 'output_dim': 8}])
def test_pointnet(tmp_path, options):
    model = finetune.build_model('pointnet-small', {'num_points': 128, 'hidden_dim': 32, 'embed_dim': 16, **options})
    finetune.save_model(model, str(tmp_path / 'model'))
    exported = finetune.load(finetune.export(str(tmp_path / 'model'), quantize='int8', log=_quiet))
    rng = np.random.default_rng(0)
    clouds = [rng.normal(size=(200 + 50 * i, 3)).astype(np.float32) for i in range(5)]
    assert (exported.encode(clouds) * model.encode(clouds)).sum(1).min() >= 0.99
    assert exported.encode(clouds[0]).shape == (1, model.output_dim)
    assert isinstance(exported.encode(clouds, convert_to='torch'), torch.Tensor)
