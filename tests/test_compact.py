"""Compact embeddings (finetune/compact.py, finetune/evaluation/compact.py): int8 / uint8 codes on calibration
ranges, binary codes packed 8 dimensions to a byte, the ranges kept with a model and its artifact, and a search
on the codes rescored by float queries."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import finetune
from finetune.compact import Ranges, calibrate, dequantize, quantize
from finetune.errors import ArtifactError, InputError, OptionError
from finetune.evaluation.compact import CompactSearch
from finetune.evaluation.metrics import labeled_retrieval_metrics, retrieval_metrics
from test_training import text_pairs

TEXTS = ['the red dog', 'food runs', 'a big car', 'green fish swim', 'the old tree']


def _model():
    torch.manual_seed(0)
    return finetune.build_model('fake-text')  # 32 dimensions


def _int8_by_hand(x, low, high):
    step = (high - low) / 255
    return (np.clip(np.rint((x - low) / step), 0, 255) - 128).astype(np.int8)


def test_binary_codes_are_the_sign_bits_packed_8_to_a_byte():
    x = np.random.default_rng(0).normal(size=(5, 24)).astype(np.float32)
    x[0, :8] = [1, -1, 1, -1, 0, 0.5, -0.5, 2]  # 0 is not above 0: a clear bit
    ubinary = quantize(x, 'ubinary')
    assert ubinary.shape == (5, 3) and ubinary.dtype == np.uint8
    assert ubinary[0, 0] == 0b10100101  # the first dimension is the high bit
    expected = np.array([[int(''.join('1' if v > 0 else '0' for v in row[i:i + 8]), 2) for i in range(0, 24, 8)]
                         for row in x], dtype=np.uint8)
    np.testing.assert_array_equal(ubinary, expected)
    binary = quantize(x, 'binary')
    assert binary.dtype == np.int8
    np.testing.assert_array_equal(binary.astype(np.int16), expected.astype(np.int16) - 128)
    np.testing.assert_array_equal(dequantize(binary, 'binary', width=24), np.where(x > 0, 1, -1))

    model = _model()
    floats = finetune.encode(model, TEXTS)
    codes = finetune.encode(model, TEXTS, precision='binary')
    assert codes.shape == (5, 4)
    np.testing.assert_array_equal(codes, (np.packbits(floats > 0, axis=1).astype(np.int16) - 128).astype(np.int8))
    as_torch = finetune.encode(model, TEXTS, precision='ubinary', convert_to='torch')
    assert as_torch.dtype == torch.uint8 and torch.equal(as_torch, torch.from_numpy(np.packbits(floats > 0, axis=1)))


def test_int8_levels_span_the_calibration_ranges_and_values_outside_are_held_at_the_ends():
    rng = np.random.default_rng(1)
    sample = rng.normal(size=(50, 6)).astype(np.float32)
    ranges = calibrate(sample)
    np.testing.assert_array_equal(ranges.low, sample.min(axis=0))
    np.testing.assert_array_equal(ranges.high, sample.max(axis=0))
    x = np.concatenate([sample[:3], ranges.low[None], ranges.high[None], ranges.high[None] + 5,
                        ranges.low[None] - 5]).astype(np.float32)
    codes = quantize(x, 'int8', ranges)
    np.testing.assert_array_equal(codes, _int8_by_hand(x, ranges.low, ranges.high))
    assert (codes[3] == -128).all() and (codes[4] == 127).all()
    assert (codes[5] == 127).all() and (codes[6] == -128).all()  # outside the ranges: held at the ends
    uint8 = quantize(x, 'uint8', ranges)
    assert uint8.dtype == np.uint8
    np.testing.assert_array_equal(uint8.astype(np.int16), codes.astype(np.int16) + 128)
    step = (ranges.high - ranges.low) / 255
    assert np.abs(dequantize(codes[:3], 'int8', ranges) - x[:3]).max() <= step.max() / 2 + 1e-6
    constant = calibrate(np.ones((4, 3)))  # a dimension of one value: every code the first level
    assert (quantize(np.ones((2, 3)), 'int8', constant) == -128).all()


def test_the_first_ranges_are_kept_on_the_model_and_used_by_later_encodes():
    model = _model()
    corpus = finetune.encode(model, TEXTS)
    with pytest.warns(UserWarning, match=r'ranges computed from the 5 embeddings being encoded'):
        first = finetune.encode(model, TEXTS, precision='int8')
    np.testing.assert_array_equal(first, _int8_by_hand(corpus, corpus.min(axis=0), corpus.max(axis=0)))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # ranges kept: no warning, and one item codes on the corpus's levels
        one = finetune.encode(model, TEXTS[2:3], precision='int8')
    np.testing.assert_array_equal(one, first[2:3])

    given = _model()
    sample = np.random.default_rng(2).uniform(-1, 1, size=(40, 32)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        codes = finetune.encode(given, TEXTS, precision='uint8', calibration=sample)
    np.testing.assert_array_equal(codes.astype(np.int16) - 128, _int8_by_hand(corpus, sample.min(0), sample.max(0)))
    np.testing.assert_array_equal(given.embedding_ranges[32].low, sample.min(axis=0))  # kept: the model had none
    ranges = (np.full(32, -0.5), np.full(32, 0.5))
    for calibration in (ranges, Ranges(*ranges), {'low': ranges[0], 'high': ranges[1]}):  # ranges already computed
        np.testing.assert_array_equal(finetune.encode(given, TEXTS, precision='int8', calibration=calibration),
                                      _int8_by_hand(corpus, ranges[0], ranges[1]))
    np.testing.assert_array_equal(given.embedding_ranges[32].low, sample.min(axis=0))  # the first ones stay
    with pytest.raises(InputError, match='calibration: ranges of 8 dimensions, but the embeddings have 32'):
        finetune.encode(given, TEXTS, precision='int8', calibration=sample[:, :8])
    with pytest.raises(InputError, match='dimension 0 has low 1.0 > high 0.0'):
        finetune.encode(given, TEXTS, precision='int8', calibration=(np.ones(32), np.zeros(32)))
    with pytest.raises(InputError, match="calibration: int8 / uint8 codes use calibration ranges; precision='binary'"):
        finetune.encode(given, TEXTS, precision='binary', calibration=sample)


def test_the_ranges_are_saved_and_loaded_with_the_artifact(tmp_path):
    model = _model()
    sample = np.random.default_rng(3).normal(0, 0.3, size=(30, 32)).astype(np.float32)
    codes = finetune.encode(model, TEXTS, precision='int8', calibration=sample)
    finetune.save_model(model, str(tmp_path / 'm'))
    config = json.loads((tmp_path / 'm' / 'finetune_config.json').read_text())
    assert config['embedding_ranges']['32']['low'] == [float(v) for v in sample.min(axis=0)]
    loaded = finetune.load(str(tmp_path / 'm'))
    np.testing.assert_array_equal(loaded.embedding_ranges[32].high, sample.max(axis=0))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the saved ranges: no calibration from the batch
        np.testing.assert_array_equal(finetune.encode(loaded, TEXTS, precision='int8'), codes)
    config['embedding_ranges']['32']['high'] = [0.0] * 31  # damaged: one number short
    (tmp_path / 'm' / 'finetune_config.json').write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=r"field 'embedding_ranges'.*low has 32 dimensions but high has 31"):
        finetune.load(str(tmp_path / 'm'))


@pytest.mark.filterwarnings('ignore:dim=12')
def test_a_bad_precision_names_the_choices_and_binary_needs_a_multiple_of_8():
    model = _model()
    with pytest.raises(OptionError, match=r"precision: expected one of 'float32', 'int8', 'uint8', 'binary', "
                                          r"'ubinary', got 'bnary'.*Did you mean 'binary'"):
        finetune.encode(model, TEXTS, precision='bnary')
    with pytest.raises(InputError, match=r"precision='binary' packs 8 dimensions to a byte, but the embeddings have "
                                         r"12 dimensions .*dim= \(e.g. 8 or 16\)"):
        finetune.encode(model, TEXTS, dim=12, precision='binary')
    with pytest.raises(OptionError, match='precision: expected one of'):
        finetune.evaluate(model, text_pairs(), precision='fp8')


@pytest.mark.filterwarnings('ignore:dim=16')
def test_encode_cuts_to_dim_first_then_codes():
    model = _model()
    cut = finetune.encode(model, TEXTS, dim=16)
    np.testing.assert_array_equal(finetune.encode(model, TEXTS, dim=16, precision='ubinary'),
                                  np.packbits(cut > 0, axis=1))
    with pytest.warns(UserWarning, match='from the 5 embeddings'):
        codes = finetune.encode(model, TEXTS, dim=16, precision='int8')
    assert codes.shape == (5, 16)
    np.testing.assert_array_equal(codes, _int8_by_hand(cut, cut.min(axis=0), cut.max(axis=0)))
    assert set(model.embedding_ranges) == {16}  # ranges are kept per width
    with pytest.warns(UserWarning, match='from the 5 embeddings'):
        assert finetune.encode(model, TEXTS, precision='int8').shape == (5, 32)
    assert set(model.embedding_ranges) == {16, 32}


def _near_duplicates(n=60, width=64, noise=0.3, seed=4):
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(n, width)).astype(np.float32)
    queries = docs + noise * rng.normal(size=(n, width)).astype(np.float32)
    return queries, docs, [{i} for i in range(n)]


def test_a_binary_search_ranks_by_hamming_distance_and_rescoring_by_float_queries_against_the_bits():
    queries, docs, relevant = _near_duplicates()
    signs = lambda x: np.where(x > 0, 1.0, -1.0).astype(np.float32)  # noqa: E731
    coded = retrieval_metrics(queries, docs, relevant, search=CompactSearch('binary'))
    assert coded == retrieval_metrics(signs(queries), signs(docs), relevant)  # +-1 dot products: Hamming order
    hamming = (np.unpackbits(quantize(queries, 'ubinary')[:, None] ^ quantize(docs, 'ubinary')[None], axis=2)
               .sum(axis=2))
    assert coded['hit@1'] == pytest.approx(np.mean(hamming.argmin(axis=1) == np.arange(len(docs))))
    everything = CompactSearch('binary', rescore=len(docs))  # every document rescored: float query . its bits
    assert retrieval_metrics(queries, docs, relevant, search=everything) == \
        retrieval_metrics(queries, signs(docs), relevant)
    floats = retrieval_metrics(queries, docs, relevant)
    rescored = retrieval_metrics(queries, docs, relevant, search=CompactSearch('binary', rescore=4))
    assert rescored['ndcg@10'] >= floats['ndcg@10'] - 0.05
    assert rescored['ndcg@10'] >= coded['ndcg@10']

    labels = [i // 3 for i in range(len(docs))]  # labeled data: each item's own row is never a candidate
    for search in (CompactSearch('ubinary'), CompactSearch('ubinary', rescore=3)):
        measured = labeled_retrieval_metrics(docs, labels, search=search)
        assert measured['num_queries'] == len(docs) and 0 <= measured['precision@1'] <= 1


def test_rescoring_fixes_what_the_bits_rank_wrong():
    # the relevant document agrees with the query on its one strong dimension, the other on seven weak ones
    query = np.array([[0.9] + [0.1] * 7], dtype=np.float32)
    docs = np.array([[-1.0] + [0.01] * 7, [1.0] + [-0.01] * 7], dtype=np.float32)
    relevant = [{1}]
    assert retrieval_metrics(query, docs, relevant, ks=1)['ndcg@1'] == 1.0
    assert retrieval_metrics(query, docs, relevant, ks=1, search=CompactSearch('binary'))['ndcg@1'] == 0.0
    assert retrieval_metrics(query, docs, relevant, ks=1, search=CompactSearch('binary', rescore=1))['ndcg@1'] == 0.0
    assert retrieval_metrics(query, docs, relevant, ks=1, search=CompactSearch('binary', rescore=2))['ndcg@1'] == 1.0


def test_an_int8_search_ranks_by_the_dot_product_of_the_codes():
    queries, docs, relevant = _near_duplicates(noise=0.8, seed=5)
    ranges = calibrate(docs)
    codes_q, codes_d = (quantize(x, 'int8', ranges).astype(np.int64) for x in (queries, docs))
    top = (codes_q @ codes_d.T).argmax(axis=1)
    for precision in ('int8', 'uint8'):  # uint8 codes are centred first: the same order
        measured = retrieval_metrics(queries, docs, relevant, ks=(1, 10), search=CompactSearch(precision))
        assert measured['hit@1'] == pytest.approx(np.mean(top == np.arange(len(docs))))
    floats = retrieval_metrics(queries, docs, relevant)
    rescored = retrieval_metrics(queries, docs, relevant, search=CompactSearch('int8', rescore=4))
    assert abs(rescored['ndcg@10'] - floats['ndcg@10']) < 0.02  # 256 levels: close to the float ranking


@pytest.mark.filterwarnings('ignore:dim=16')
def test_evaluate_searches_the_models_codes_and_refuses_what_has_no_search():
    model = _model()
    pairs = text_pairs()
    queries = sorted(set(q for q, _ in pairs))
    docs = sorted(set(d for _, d in pairs))
    relevant = [{docs.index(doc) for query, doc in pairs if query == one} for one in queries]
    q, d = finetune.encode(model, queries, dim=16), finetune.encode(model, docs, dim=16)
    measured = finetune.evaluate(model, pairs, dim=16, precision='binary', rescore=2)
    assert measured == pytest.approx(retrieval_metrics(q, d, relevant, search=CompactSearch('binary', rescore=2)))
    int8 = finetune.evaluate(model, pairs, precision='int8')  # no ranges kept: the documents' own
    full_q, full_d = finetune.encode(model, queries), finetune.encode(model, docs)
    assert int8 == pytest.approx(retrieval_metrics(full_q, full_d, relevant,
                                                   search=CompactSearch('int8', ranges=calibrate(full_d))))
    assert not getattr(model, 'embedding_ranges', None)  # evaluate keeps none
    with pytest.raises(InputError, match="rescore: applies to a search on compact codes; give precision='binary'"):
        finetune.evaluate(model, pairs, rescore=4)
    with pytest.raises(InputError, match='rescore: expected a positive integer'):
        finetune.evaluate(model, pairs, precision='binary', rescore=0)
    scored = [(a, b, 0.5 + 0.1 * (i % 3)) for i, (a, b) in enumerate(pairs)]
    with pytest.raises(InputError, match="precision='int8': .* is scored data, measured without a search"):
        finetune.evaluate(model, scored, precision='int8')


def test_fit_forgets_ranges_calibrated_on_the_weights_before_training(tmp_path):
    model = _model()
    finetune.encode(model, TEXTS, precision='int8', calibration=np.random.default_rng(6).normal(size=(8, 32)))
    run = finetune.fit(model, text_pairs(), epochs=1, batch_size=8, num_workers=0, precision='fp32',
                       output_dir=str(tmp_path), log=lambda line: None)
    assert not getattr(run.model, 'embedding_ranges', None)
    assert 'embedding_ranges' not in json.loads((tmp_path / 'model' / 'finetune_config.json').read_text())


def test_the_cli_encodes_codes_and_shows_the_compact_search_beside_float32(tmp_path):
    from click.testing import CliRunner

    from finetune.cli import PRECISION_CHOICES, main
    from finetune.compact import PRECISIONS
    assert PRECISION_CHOICES == PRECISIONS
    data = tmp_path / 'pairs.csv'
    data.write_text('query,doc\n' + ''.join(f'{a},{b}\n' for a, b in text_pairs()))
    result = CliRunner().invoke(main, ['evaluate', '--model', 'fake-text', '--data', str(data), '--precision',
                                       'binary', '--rescore', '2'])
    assert result.exit_code == 0, result.output
    assert 'binary codes, best 20 rescored' in result.output and 'float32' in result.output
    items = tmp_path / 'items.txt'
    items.write_text('\n'.join(TEXTS) + '\n')
    out = tmp_path / 'codes.npy'
    result = CliRunner().invoke(main, ['encode', '--model', 'fake-text', '--input', str(items), '--output', str(out),
                                       '--precision', 'ubinary'])
    assert result.exit_code == 0, result.output
    codes = np.load(out)
    assert codes.shape == (5, 4) and codes.dtype == np.uint8
    assert '5 ubinary codes of 4 bytes' in result.output
