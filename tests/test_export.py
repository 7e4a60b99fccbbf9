"""Export (finetune.exporting) on the fake family: ONNX graphs that embed like the torch model, the parity gate,
int8, atomic writes, the model card, safe loading and every refusal. The real families: families/test_families_export.py."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import finetune
from finetune.cli import main
from finetune.errors import ArtifactError, ExportError
from finetune.exporting import parity
from finetune.exporting.runtime import OnnxEmbeddingModel, OnnxMultiTowerModel

TEXTS = ['the man is eating bread', 'a dog', 'the red car is fast and the blue car is slow', 'cat', 'happy sad old',
         'a woman plays the piano in the old house', 'sky', 'sea and tree']


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (20 + 3 * i, 16 + 2 * i, 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture()
def quiet():
    return lambda line: None


@pytest.mark.parametrize('name, options, items', [
    ('fake-text', {'pooler': 'GeM', 'output_dim': 8}, TEXTS),
    ('fake-text', {'pooler': 'mean', 'output_dim': 6, 'head_options': {'hidden_dims': [12], 'activation': 'gelu'}},
     TEXTS),
    ('fake-text', {'pooler': None, 'normalize': False}, TEXTS),
    ('fake-image', {'pooler': 'GeM'}, _images(7)),
    ('fake-image', {'pooler': 'max', 'output_dim': 5}, _images(7)),
])
def test_onnx_export_embeds_like_the_torch_model(tmp_path, quiet, name, options, items):
    model = finetune.build_model(name, options)
    folder = finetune.export(model, output=str(tmp_path / 'out'), log=quiet)
    assert sorted(os.listdir(folder)) == sorted(['model.onnx', 'finetune_config.json', 'README.md'])
    exported = finetune.load(folder)
    assert isinstance(exported, OnnxEmbeddingModel) and exported.output_dim == model.output_dim
    for batch_size in (1, 3, 32):  # the batch size (and, for texts, the length) is dynamic
        np.testing.assert_allclose(exported.encode(items, batch_size=batch_size), model.encode(items), atol=2e-5)
    one = exported.encode(items[0])
    assert one.shape == (1, model.output_dim)
    assert isinstance(exported.encode(items, convert_to='torch'), torch.Tensor)
    config = json.loads((tmp_path / 'out' / 'finetune_config.json').read_text())
    figures = config['export']['parity']['fp32']
    assert figures['min_cosine'] >= 0.999 and figures['items'] == 12  # the modality's built-in samples
    assert config['export']['quantize'] is None and config['export']['graphs'] == {'': 'model.onnx'}


def test_onnx_export_of_two_towers_writes_one_graph_each(tmp_path, quiet):
    model = finetune.build_model('fake-clip')
    folder = finetune.export(model, output=str(tmp_path / 'clip'), log=quiet)
    assert {'text.onnx', 'image.onnx'} <= set(os.listdir(folder))
    exported = finetune.load(folder)
    assert isinstance(exported, OnnxMultiTowerModel) and exported.modality == model.modality
    np.testing.assert_allclose(exported.encode(TEXTS), model.encode(TEXTS), atol=2e-5)
    images = _images(3)
    np.testing.assert_allclose(exported.encode(images), model.encode(images), atol=2e-5)
    np.testing.assert_allclose(exported.encode(images, tower='image'), model.encode(images), atol=2e-5)


def test_int8_export_records_its_parity_and_quantizes_the_graph(tmp_path, quiet):
    model = finetune.build_model('fake-text', {'pooler': 'mean', 'output_dim': 16})
    finetune.save_model(model, str(tmp_path / 'model'))
    lines = []
    folder = finetune.export(str(tmp_path / 'model'), quantize='int8', log=lines.append)
    assert folder == str(tmp_path / 'model-onnx-int8')
    record = json.loads((tmp_path / 'model-onnx-int8' / 'finetune_config.json').read_text())['export']
    assert record['quantize'] == 'int8'
    assert record['parity']['fp32']['min_cosine'] >= 0.999 and record['parity']['int8']['min_cosine'] >= 0.99
    ops = {node.op_type for node in onnx.load(os.path.join(folder, 'model.onnx')).graph.node}
    assert ops & {'DynamicQuantizeLinear', 'MatMulInteger', 'DynamicQuantizeMatMul'}
    assert any('(int8)' in line and 'min cosine' in line for line in lines)
    got = finetune.load(folder).encode(TEXTS)
    cos = (got * model.encode(TEXTS)).sum(1)
    assert cos.min() >= 0.99
    assert '| int8 |' in (tmp_path / 'model-onnx-int8' / 'README.md').read_text()


def test_export_beside_the_artifact_and_model_cards(tmp_path, quiet):
    model = finetune.build_model('fake-text', {'pooler': 'GeM', 'output_dim': 8})
    artifact = tmp_path / 'model'
    finetune.save_model(model, str(artifact))
    card = (artifact / 'README.md').read_text()
    for part in ('# fake-text', '| base model | `fake-text` |', '| family | fake (text) |', '| output size | 8 |',
                 '| pooler | GeM', 'projection to 8', "finetune.load('.')", '## Retrieval metrics'):
        assert part in card, part
    folder = finetune.export(str(artifact), log=quiet)
    assert folder == str(tmp_path / 'model-onnx')
    card = (tmp_path / 'model-onnx' / 'README.md').read_text()
    assert '## Export parity' in card and 'onnxruntime' in card and "session.run(['embeddings']" in card


def test_model_card_of_a_trained_model_has_training_and_metrics(tmp_path):
    rows = [(t, t.split()[0]) for t in TEXTS] * 2
    run = finetune.fit('fake-text', rows, rows, epochs=1, batch_size=4, log=lambda line: None)
    run.save(str(tmp_path / 'trained'))
    card = (tmp_path / 'trained' / 'README.md').read_text()
    assert '| loss | TripletMarginLoss |' in card and '| data | train_data: 16 labeled text items' in card and '| epochs | 1 |' in card and '| batch size | 4 |' in card
    assert '| precision |' in card and '| metric | before | after |' in card and '| ndcg@10 |' in card


def test_eval_data_gives_metric_parity(tmp_path, quiet):
    rows = [(t, t.split()[-1]) for t in TEXTS]
    data = tmp_path / 'eval.csv'
    data.write_text('query,doc\n' + '\n'.join(f'{a},{b}' for a, b in rows) + '\n')
    model = finetune.build_model('fake-text', {'pooler': 'mean'})
    finetune.export(model, output=str(tmp_path / 'out'), eval_data=str(data), log=quiet)
    figures = json.loads((tmp_path / 'out' / 'finetune_config.json').read_text())['export']['parity']['fp32']
    assert figures['items'] == len(set(TEXTS)) + len({b for _, b in rows})  # the eval data's items, not samples
    metrics = figures['metrics']
    assert metrics['max_difference'] <= 0.005 and metrics['torch']['ndcg@10'] == pytest.approx(
        metrics['export']['ndcg@10'], abs=0.005)


def test_failed_parity_writes_nothing(tmp_path, quiet, monkeypatch):
    model = finetune.build_model('fake-image', {'pooler': 'GeM'})
    earlier = finetune.export(model, output=str(tmp_path / 'out'), log=quiet)
    files = {name: (tmp_path / 'out' / name).read_bytes() for name in os.listdir(earlier)}
    monkeypatch.setitem(parity.MIN_COSINE, 'fp32', 1.5)
    with pytest.raises(ExportError, match=r'fails the parity gate and was not written: .*min cosine 1\.0'):
        finetune.export(model, output=str(tmp_path / 'out'), log=quiet)
    assert os.listdir(tmp_path) == ['out']  # the earlier export, as it was
    assert {name: (tmp_path / 'out' / name).read_bytes() for name in os.listdir(earlier)} == files


def test_failed_metric_parity_writes_nothing(tmp_path, quiet, monkeypatch):
    data = tmp_path / 'eval.csv'
    data.write_text('query,doc\n' + '\n'.join(f'{t},{t.split()[0]}' for t in TEXTS) + '\n')
    monkeypatch.setattr(parity, 'MAX_METRIC_DIFFERENCE', -1.0)
    with pytest.raises(ExportError, match='retrieval metrics differ by at most'):
        finetune.export(finetune.build_model('fake-text'), output=str(tmp_path / 'out'), eval_data=str(data),
                        log=quiet)
    assert not (tmp_path / 'out').exists()
    assert [p for p in os.listdir(tmp_path) if p != 'eval.csv'] == []


def test_bad_requests_name_the_input_and_the_choices(tmp_path, quiet):
    text = finetune.build_model('fake-text')
    with pytest.raises(ExportError, match=r"unknown export format 'onx'\. Did you mean 'onnx'.*'sentence-transformers'"):
        finetune.export(text, format='onx', output=str(tmp_path / 'x'))
    with pytest.raises(ExportError, match=r"quantize: expected 'int8' or None, got 'int4'"):
        finetune.export(text, quantize='int4', output=str(tmp_path / 'x'))
    with pytest.raises(ExportError, match="applies to the 'onnx' format only"):
        finetune.export(text, format='sentence-transformers', quantize='int8', output=str(tmp_path / 'x'))
    with pytest.raises(ExportError, match=r"format 'sentence-transformers' cannot take 'fake-image': it is a image "
                                          r"model.*Formats for this model: 'onnx'\."):
        finetune.export(finetune.build_model('fake-image'), format='sentence-transformers', output=str(tmp_path / 'x'))
    with pytest.raises(ExportError, match='pass output='):
        finetune.export(text)
    with pytest.raises(ArtifactError, match='is not a finetune artifact'):
        finetune.export(str(tmp_path))
    with pytest.raises(ExportError, match='expected a finetune model'):
        finetune.export(42, output=str(tmp_path / 'x'))
    exported = finetune.export(text, output=str(tmp_path / 'once'), log=quiet)
    with pytest.raises(ExportError, match='is already an export'):
        finetune.export(exported, output=str(tmp_path / 'twice'))
    assert sorted(os.listdir(tmp_path)) == ['once']


def test_missing_onnx_extra_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # as if it were not installed
    with pytest.raises(ExportError, match=r'needs the optional package onnxruntime.*pip install "finetune\[onnx\]"'):
        finetune.export(finetune.build_model('fake-text'), output=str(tmp_path / 'x'))
    assert not (tmp_path / 'x').exists()


class _EigenPooler(nn.Module):
    """A pooler built on an operation ONNX has no translation for."""

    def forward(self, x, mask=None):
        return torch.linalg.eigvalsh(x.flatten(2) @ x.flatten(2).transpose(1, 2))


def test_an_operation_onnx_lacks_is_named_with_the_family(tmp_path, quiet):
    model = finetune.build_model('fake-image', {'pooler': 'GeM'})
    model.pooler = _EigenPooler()
    model.output_dim = 16
    with pytest.raises(ExportError, match=r"cannot export 'fake-image' \(family 'fake'\) to ONNX: .*'aten::linalg_eigvalsh', which ONNX opset"):
        finetune.export(model, output=str(tmp_path / 'x'), log=quiet)
    assert os.listdir(tmp_path) == []


def test_loading_an_export_never_leaves_its_folder(tmp_path, quiet):
    folder = finetune.export(finetune.build_model('fake-text'), output=str(tmp_path / 'out'), log=quiet)
    path = os.path.join(folder, 'finetune_config.json')
    config = json.loads(open(path).read())
    config['export']['graphs'] = {'': '../elsewhere.onnx'}
    open(path, 'w').write(json.dumps(config))
    with pytest.raises(ArtifactError, match=r"field 'export.graphs': '../elsewhere.onnx' is not the name of a .onnx"):
        finetune.load(folder)
    config['export'] = {'format': 'pickle', 'graphs': {}}
    open(path, 'w').write(json.dumps(config))
    with pytest.raises(ArtifactError, match="finetune.load reads ONNX exports"):
        finetune.load(folder)


def test_cli_export(tmp_path):
    finetune.save_model(finetune.build_model('fake-text', {'pooler': 'GeM'}), str(tmp_path / 'model'))
    runner = CliRunner()
    result = runner.invoke(main, ['export', str(tmp_path / 'model'), '--quantize', 'int8'])
    assert result.exit_code == 0, result.output
    assert 'parity of' in result.output and '(int8)' in result.output
    assert f'written to {tmp_path / "model-onnx-int8"}' in result.output
    result = runner.invoke(main, ['export', str(tmp_path / 'model'), '--format', 'tflite'])
    assert result.exit_code == 2 and 'Traceback' not in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: format: unknown export format 'tflite'")


def test_int8_keeps_the_layer_with_outlier_inputs_in_fp32(tmp_path):
    """A layer whose input has one huge channel loses the rest to run-time per-tensor quantization: the fallback
    ranks it most damaging and keeps it (only it) in fp32, and the graph then passes the int8 gate."""
    from finetune.exporting.quantization import TARGET_MIN_COSINE, Calibration, quantize_int8
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 8), nn.Flatten(1))
    with torch.no_grad():  # the second layer's input gets an outlier channel, its weights compensate
        net[0].weight[0] *= 1000.0
        net[0].bias[0] *= 1000.0
        net[1].weight[:, 0] /= 1000.0
    path = str(tmp_path / 'net.onnx')
    torch.onnx.export(net, (torch.randn(2, 5, 16),), path, input_names=['x'], output_names=['embeddings'],
                      dynamic_axes={'x': {0: 'batch'}, 'embeddings': {0: 'batch'}}, opset_version=17, dynamo=False)
    layers = [n.name for n in onnx.load(path).graph.node if n.op_type == 'MatMul']
    assert len(layers) == 3
    items = [np.random.default_rng(i).standard_normal((5, 16)).astype(np.float32) for i in range(20)]
    with torch.no_grad():
        reference = net(torch.from_numpy(np.stack(items))).numpy()
    calibration = Calibration(items, lambda xs: {'x': np.stack(xs)}, reference)
    lines = []
    done = quantize_int8(path, calibration=calibration, log=lines.append, smoothing=None)  # the fallback alone
    assert done['fp32_layers'] == [layers[1]] and done['quantized_layers'] == 2 and done['smoothing'] is None
    assert done['calibration_min_cosine'] >= TARGET_MIN_COSINE
    assert any('1 of 3 layers kept fp32' in line for line in lines)
    figures = {'items': len(items), 'min_cosine': done['calibration_min_cosine'], 'mean_cosine': 1.0}
    parity.gate(figures, 'int8', 'net', lines.append)  # passes: no ExportError
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert 'MatMulInteger' in ops and 'MatMul' in ops


def _outlier_net(path: str) -> tuple[nn.Module, list, np.ndarray]:
    """A 3-layer net whose second layer's input has one channel 1000 times the others (written to `path`), 20
    items and their torch embeddings."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 8), nn.Flatten(1))
    with torch.no_grad():
        net[0].weight[0] *= 1000.0
        net[0].bias[0] *= 1000.0
        net[1].weight[:, 0] /= 1000.0
    torch.onnx.export(net, (torch.randn(2, 5, 16),), path, input_names=['x'], output_names=['embeddings'],
                      dynamic_axes={'x': {0: 'batch'}, 'embeddings': {0: 'batch'}}, opset_version=17, dynamo=False)
    items = [np.random.default_rng(i).standard_normal((5, 16)).astype(np.float32) for i in range(20)]
    with torch.no_grad():
        reference = net(torch.from_numpy(np.stack(items))).numpy()
    return net, items, reference


def test_smoothing_keeps_the_fp32_function_and_spares_the_outlier_layer_the_fallback(tmp_path):
    """Smoothing moves the outlier channel's range into the weights: the smoothed fp32 graph computes what the net
    does, and int8 then reaches the target with every layer quantized (the fallback alone keeps one fp32)."""
    from finetune.exporting.quantization import SMOOTHING_ALPHA, TARGET_MIN_COSINE, Calibration, quantize_int8, \
        smooth
    from finetune.exporting.runtime import session
    path = str(tmp_path / 'net.onnx')
    net, items, reference = _outlier_net(path)
    calibration = Calibration(items, lambda xs: {'x': np.stack(xs)}, reference)
    graph = onnx.load(path)
    layers = [n.name for n in graph.graph.node if n.op_type == 'MatMul']
    assert smooth(graph, layers, calibration.feeds()) == 3
    assert sum(n.op_type == 'Mul' for n in graph.graph.node) == 3
    got = session(graph.SerializeToString()).run(['embeddings'], {'x': np.stack(items)})[0]
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4)  # the same function
    lines = []
    done = quantize_int8(path, calibration=calibration, log=lines.append)
    assert done['smoothing'] == {'strength': SMOOTHING_ALPHA, 'layers': 3}
    assert done['fp32_layers'] == [] and done['quantized_layers'] == 3
    assert done['calibration_min_cosine'] >= TARGET_MIN_COSINE
    assert any('int8 smoothing' in line for line in lines) and not any('fallback' in line for line in lines)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count('MatMulInteger') == 3 and 'MatMul' not in ops
    with pytest.raises(ExportError, match=r'smoothing: expected a strength between 0 and 1'):
        quantize_int8(str(tmp_path / 'net.onnx'), calibration=calibration, smoothing=1.5)


def test_the_fallback_target_decides_how_many_layers_stay_fp32(tmp_path):
    """`min_cosine` is what the fallback aims at: each layer quantized is a little less exact, so a target of 1.0
    keeps every layer fp32, and the outlier layer alone is kept for the default; the record says the target."""
    from finetune.exporting.quantization import TARGET_MIN_COSINE, Calibration, quantize_int8
    done = {}
    for target in (TARGET_MIN_COSINE, 1.0):
        path = str(tmp_path / f'net-{target}.onnx')
        _, items, reference = _outlier_net(path)
        calibration = Calibration(items, lambda xs: {'x': np.stack(xs)}, reference)
        done[target] = quantize_int8(path, calibration=calibration, log=lambda line: None, smoothing=None,
                                     min_cosine=target)
        assert done[target]['target_min_cosine'] == target
    assert len(done[TARGET_MIN_COSINE]['fp32_layers']) == 1 and done[TARGET_MIN_COSINE]['quantized_layers'] == 2
    assert len(done[1.0]['fp32_layers']) == 3 and done[1.0]['quantized_layers'] == 0


def test_export_takes_the_int8_target_and_refuses_one_out_of_range(tmp_path, quiet):
    model = finetune.build_model('fake-text', {'pooler': 'mean', 'output_dim': 16})
    finetune.save_model(model, str(tmp_path / 'model'))
    folder = finetune.export(str(tmp_path / 'model'), quantize='int8', int8_min_cosine=0.995, log=quiet)
    record = json.loads(open(os.path.join(folder, 'finetune_config.json')).read())['export']
    assert record['int8']['']['target_min_cosine'] == 0.995 and record['parity']['int8']['min_cosine'] >= 0.99
    again = finetune.export(str(tmp_path / 'model'), quantize='int8', int8_min_cosine=np.float32(0.996), log=quiet)
    assert json.loads(open(os.path.join(again, 'finetune_config.json')).read())['export']['int8']['']['target_min_cosine'] \
        == pytest.approx(0.996)
    for value, message in ((0.9, r'int8_min_cosine \(--int8-min-cosine\): expected a number from 0.99 .* to 1.0, got 0.9'),
                           ('high', r"int8_min_cosine \(--int8-min-cosine\): expected a number .* got 'high'"),
                           (0.995, r"int8_min_cosine=0.995 \(--int8-min-cosine\) applies to quantize='int8' \(--quantize int8\) only")):
        with pytest.raises(ExportError, match=message):
            finetune.export(str(tmp_path / 'model'), quantize='int8' if value != 0.995 else None,
                            int8_min_cosine=value, output=str(tmp_path / 'x'), log=quiet)
    result = CliRunner().invoke(main, ['export', str(tmp_path / 'model'), '--quantize', 'int8', '--int8-min-cosine',
                                       '1.5', '--output', str(tmp_path / 'y')])
    assert result.exit_code == 2 and 'Traceback' not in result.output
    assert 'int8_min_cosine (--int8-min-cosine): expected a number from 0.99' in result.output
    assert not (tmp_path / 'y').exists()


def test_an_export_never_replaces_what_is_not_an_earlier_export(tmp_path, quiet):
    model = finetune.build_model('fake-text')
    runs = tmp_path / 'runs'
    finetune.save_model(model, str(runs / 'model'))
    (runs / 'notes.txt').write_text('mine')
    with pytest.raises(ExportError, match=r"output: .*runs' holds the artifact"):
        finetune.export(str(runs / 'model'), output=str(runs), log=quiet)
    with pytest.raises(ExportError, match=r"lies inside the artifact"):
        finetune.export(str(runs / 'model'), output=str(runs / 'model' / 'onnx'), log=quiet)
    deploy = tmp_path / 'deploy'
    deploy.mkdir()
    (deploy / 'server.py').write_text('keep me')
    with pytest.raises(ExportError, match=r"exists and is not an earlier export .* remove that one yourself"):
        finetune.export(model, output=str(deploy), log=quiet)
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ExportError, match='is a file'):
        finetune.export(model, output=str(tmp_path / 'file'), log=quiet)
    assert (deploy / 'server.py').read_text() == 'keep me' and (runs / 'notes.txt').read_text() == 'mine'
    again = finetune.export(model, output=str(tmp_path / 'onnx'), log=quiet)
    assert finetune.export(model, output=again, log=quiet) == again  # an earlier export is replaced
    (deploy / 'server.py').unlink()
    assert finetune.export(model, output=str(deploy), log=quiet) == str(deploy)  # an empty folder is fine


def test_a_graph_reading_weights_outside_its_folder_or_damaged_is_refused(tmp_path, quiet):
    from onnx import numpy_helper
    folder = finetune.export(finetune.build_model('fake-text'), output=str(tmp_path / 'out'), log=quiet)
    path = os.path.join(folder, 'model.onnx')
    graph = onnx.load(path)
    weight = graph.graph.initializer[0]
    (tmp_path / 'secret.bin').write_bytes(numpy_helper.to_array(weight).tobytes())
    weight.ClearField('raw_data')
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key='location', value='../secret.bin')
    onnx.save(graph, path)
    with pytest.raises(ArtifactError, match=r"reads the weights of .* from '../secret.bin', outside its folder"):
        finetune.load(folder)
    with open(path, 'wb') as f:
        f.write(b'\x08\x07garbage')
    with pytest.raises(ArtifactError, match=r'model.onnx: (not a readable ONNX graph|onnxruntime cannot load)'):
        finetune.load(folder)


def test_each_int8_fallback_trial_keeps_more_layers_fp32(tmp_path, monkeypatch):
    """When the simulation promises more than the real quantization gives, the next trial must keep more layers
    fp32, never retry the same set."""
    from finetune.exporting import quantization
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    path = str(tmp_path / 'net.onnx')
    torch.onnx.export(net, (torch.randn(2, 16),), path, input_names=['x'], output_names=['embeddings'],
                      dynamic_axes={'x': {0: 'batch'}}, dynamo=False)
    starts, kept = [], []
    monkeypatch.setattr(quantization, '_fewest', lambda model, order, calibration, start, target: starts.append(start)
                        or start)
    monkeypatch.setattr(quantization, '_ranked', lambda model, layers, calibration, worst: list(layers))

    class NeverGoodEnough:
        def cosines(self, graph):
            return np.array([0.5, 0.9])
    real = quantization._quantize
    monkeypatch.setattr(quantization, '_quantize', lambda p, o, exclude: kept.append(len(exclude)) or real(p, o,
                                                                                                        exclude))
    quantization.quantize_int8(path, (), NeverGoodEnough(), log=lambda line: None, smoothing=None)
    assert starts == [0, 1, 2, 3][:len(starts)] and kept == sorted(set(kept))


def test_a_plugin_format_without_a_loader_says_it_is_unchecked_and_a_failing_one_writes_nothing(tmp_path,
                                                                                               monkeypatch):
    from finetune.registry import REGISTRY, BackbonePlugin, ExportFormat

    def write(model, folder):
        (open(os.path.join(folder, 'weights.txt'), 'w')).write('w')
        return {'files': 1}

    def broken(model, folder):
        raise ValueError('the writer tripped')
    monkeypatch.setattr(REGISTRY, '_plugins', dict(REGISTRY.plugins))
    REGISTRY.add_plugin(BackbonePlugin(name='formats-of-elsewhere', specs=list, export_formats=(
        ExportFormat(name='plain-folder', suffix='-plain', problem=lambda model: None, write=write),
        ExportFormat(name='broken-folder', suffix='-broken', problem=lambda model: None, write=broken))))
    said = []
    model = finetune.build_model('fake-text')
    folder = finetune.export(model, format='plain-folder', output=str(tmp_path / 'plain'), log=said.append)
    assert any('WITHOUT the parity check' in line for line in said)
    assert 'not checked' in (tmp_path / 'plain' / 'README.md').read_text()
    with pytest.raises(ExportError, match=r"format 'broken-folder' failed on 'fake-text': ValueError: the writer "
                                          r"tripped\. Nothing was written"):
        finetune.export(model, format='broken-folder', output=str(tmp_path / 'broken'), log=said.append)
    assert sorted(os.listdir(tmp_path)) == ['plain'] and folder == str(tmp_path / 'plain')
