"""One model, many sizes (finetune/dims.py): encode and evaluate at a model's leading dimensions, the sizes a
Matryoshka fit records, and what is refused or warned about."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import finetune
from finetune.errors import InputError
from test_training import text_pairs

TEXTS = ['the red dog', 'food runs', 'a big car']


def _model():
    torch.manual_seed(0)
    return finetune.build_model('fake-text')


def test_encode_at_a_dimension_is_the_leading_part_normalized_again():
    model = _model()
    model.trained_dims = (32, 8)
    full = finetune.encode(model, TEXTS)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a trained size: no warning
        small = finetune.encode(model, TEXTS, dim=8)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(small, expected, atol=1e-6)
    assert small.shape == (3, 8) and small.dtype == np.float32
    as_torch = finetune.encode(model, TEXTS, dim=8, convert_to='torch')
    torch.testing.assert_close(as_torch, torch.from_numpy(expected))


def test_an_untrained_size_warns_once_and_a_bad_one_is_refused():
    model = _model()
    with pytest.warns(UserWarning, match="dim=5: 'fake-text' was not trained with loss_options"):
        finetune.encode(model, TEXTS, dim=5)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        finetune.encode(model, TEXTS, dim=5)  # once per model and size
    model.trained_dims = (32, 16)
    for bad in (0, 33, 2.5, True):
        with pytest.raises(InputError, match=r"dim: expected a number of leading dimensions from 1 to 32 .*trained "
                                             r"at 32, 16"):
            finetune.encode(model, TEXTS, dim=bad)


def test_evaluate_at_a_dimension_measures_the_cut_embeddings():
    model = _model()
    model.trained_dims = (32, 4)
    pairs = text_pairs()
    full = finetune.evaluate(model, pairs)
    cut = finetune.evaluate(model, pairs, dim=4)
    assert full == finetune.evaluate(model, pairs, dim=32)
    assert cut != full  # 4 of 32 random dimensions rank differently
    queries = sorted(set(q for q, _ in pairs))
    docs = sorted(set(d for _, d in pairs))
    q = finetune.encode(model, queries, dim=4)
    d = finetune.encode(model, docs, dim=4)
    from finetune.evaluation.metrics import retrieval_metrics
    relevant = [{docs.index(doc) for query, doc in pairs if query == one} for one in queries]
    expected = retrieval_metrics(q, d, relevant)
    assert cut['ndcg@10'] == pytest.approx(expected['ndcg@10'])


def test_the_trained_sizes_are_kept_with_the_artifact(tmp_path):
    model = _model()
    model.trained_dims = (32, 16, 8)
    finetune.save_model(model, str(tmp_path / 'm'))
    loaded = finetune.load(str(tmp_path / 'm'))
    assert loaded.trained_dims == (32, 16, 8) and loaded.artifact_config['matryoshka_dims'] == [32, 16, 8]
    np.testing.assert_allclose(finetune.encode(loaded, TEXTS, dim=16), finetune.encode(model, TEXTS, dim=16),
                               atol=1e-6)


def test_a_matryoshka_fit_measures_each_size_and_records_them(tmp_path):
    logs = []
    pairs = text_pairs()
    run = finetune.fit(_model(), pairs, pairs, epochs=1, batch_size=8, num_workers=0, precision='fp32',
                       loss_options={'matryoshka_dims': [32, 8, 4]}, output_dir=str(tmp_path), log=logs.append)
    assert run.model.trained_dims == (32, 8, 4)
    assert set(run.metrics['dims']) == {32, 8, 4}
    assert run.metrics['dims'][32] == {'before': run.metrics['before'], 'after': run.metrics['after']}
    assert run.metrics['dims'][8]['after'] == finetune.evaluate(run.model, pairs, dim=8)
    assert any(line.startswith('after at 4 dimensions: ') for line in logs)
    assert finetune.load(str(tmp_path / 'model')).trained_dims == (32, 8, 4)


def test_the_cli_prints_a_table_per_trained_size(tmp_path):
    from click.testing import CliRunner

    from finetune.cli import main
    data = tmp_path / 'pairs.csv'
    data.write_text('query,doc\n' + ''.join(f'{a},{b}\n' for a, b in text_pairs()))
    result = CliRunner().invoke(main, ['fit', '--model', 'fake-text', '--train-data', str(data), '--eval-data',
                                       str(data), '--batch-size', '8', '--num-workers', '0', '--precision', 'fp32',
                                       '--loss-option', 'matryoshka_dims=[32, 8]'])
    assert result.exit_code == 0, result.output
    assert 'retrieval metrics at 8 dimensions' in result.output


def test_an_onnx_export_at_a_size_outputs_that_many_dimensions(tmp_path, monkeypatch):
    pytest.importorskip('onnxruntime')
    model = _model()
    model.trained_dims = (32, 8)
    logs = []
    finetune.save_model(model, str(tmp_path / 'm'))
    folder = finetune.export(str(tmp_path / 'm'), dim=8, log=logs.append)
    assert folder.endswith('m-onnx-8')
    exported = finetune.load(folder)
    assert exported.output_dim == 8 and exported.artifact_config['output_dim'] == 8
    np.testing.assert_allclose(exported.encode(TEXTS), finetune.encode(model, TEXTS, dim=8), atol=1e-5)
    from finetune.errors import ExportError
    with pytest.raises(InputError, match='dim: expected a number of leading dimensions from 1 to 32'):
        finetune.export(model, output=str(tmp_path / 'x'), dim=64)
    from finetune.registry import REGISTRY, BackbonePlugin, ExportFormat
    monkeypatch.setattr(REGISTRY, '_plugins', dict(REGISTRY.plugins))
    REGISTRY.add_plugin(BackbonePlugin(name='uncut-formats', specs=list, export_formats=(  # no takes_dim
        ExportFormat(name='whole-folder', suffix='-whole', problem=lambda model: None, write=lambda m, f: {}),)))
    with pytest.raises(ExportError, match="dim=8 applies to the 'onnx' format and formats that can cut embeddings; "
                                          "a 'whole-folder' export holds the whole embedding"):
        finetune.export(model, format='whole-folder', output=str(tmp_path / 'y'), dim=8)


def test_a_model_cut_to_a_size_embeds_as_encode_at_that_size():
    from finetune.dims import at_size
    model = _model()
    model.trained_dims = (32, 16)
    cut = at_size(model, 16)
    assert cut.output_dim == 16 and model.output_dim == 32 and model.truncate_dim is None
    np.testing.assert_allclose(cut.encode(TEXTS), finetune.encode(model, TEXTS, dim=16), atol=1e-6)
