"""finetune.synthesize (finetune/synthesis/) on the fake models: a fake-text relation miner and a word-overlap
cross-encoder whose every score the tests can predict."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

import finetune
from finetune.cli import main
from finetune.data import DATA_SYNTHESIS_EN, SynthesisModels, load_data
from finetune.errors import InputError, OptionError, UnknownModelError
from finetune.evaluation import top_k

FAKE = SynthesisModels(relation_miner='fake-text', cross_encoder='fake-cross')
QUERIES = ['the red dog', 'a cat eats food', 'man plays piano', 'woman plays guitar', 'the old house',
           'a big tree', 'blue sky and sea', 'the fast car']
CORPUS = ['red dog runs', 'the dog is red', 'cat eating food', 'a man plays the piano', 'woman guitar',
          'the sky is blue', 'green tree', 'big old house', 'the RED  dog', 'a small car', 'fast red car',
          'the blue sea', 'a happy cat', 'the new house', 'sad woman', 'bread and food']


def overlap(query: str, doc: str) -> float:
    words, seen = set(re.findall(r'\w+', query.lower())), set(re.findall(r'\w+', doc.lower()))
    return len(words & seen) / len(words)


def run(tmp_path=None, **kwargs):
    kwargs.setdefault('log', lambda m: None)
    return finetune.synthesize(kwargs.pop('queries', QUERIES), kwargs.pop('corpus', CORPUS),
                               kwargs.pop('models', FAKE), **kwargs)


def rows(data):
    return [(data.a[i], data.b[i], data.extra['negative'][i], data.scores[i]) for i in range(len(data))]


def test_positive_negatives_and_margins_follow_the_cross_encoder():
    data = run(num_relations=3, num_candidates=8)
    assert data.kind == 'margin-triplets' and data.stats['queries'] == len(QUERIES)
    for query, positive, negative, margin in rows(data):
        assert margin == pytest.approx(overlap(query, positive) - overlap(query, negative), abs=1e-6)
        assert margin >= 0 and negative != positive
    per_query = {q: sum(1 for r in rows(data) if r[0] == q) for q in QUERIES}
    assert set(per_query.values()) <= {1, 2} and sum(per_query.values()) == len(data)
    # the positive is the best-scored of the query's candidates: no negative of any row beats it
    best = {q: overlap(q, p) for q, p, _, _ in rows(data)}
    assert all(overlap(q, n) <= best[q] for q, _, n, _ in rows(data))
    assert data.extra['positive_score'][0] - data.extra['negative_score'][0] == pytest.approx(data.scores[0])


def test_near_duplicates_of_the_positive_are_never_negatives():
    corpus = ['the red dog', 'The  RED dog', 'a red dog runs', 'green tree', 'blue sea', 'old house']
    data = run(queries=['the red dog?'], corpus=corpus, num_relations=3, num_candidates=6)
    assert data.b[0] == 'the red dog' and 'The  RED dog' not in data.extra['negative']
    with pytest.raises(InputError, match='no training rows.*duplicate_threshold'):
        run(queries=['the red dog'], corpus=corpus, num_relations=2, duplicate_threshold=-1.0)


def test_a_copy_of_the_query_in_the_corpus_is_never_used():
    corpus = ['The red  dog', 'a red dog runs', 'dog', 'green tree', 'blue sea', 'old house']
    data = run(queries=['the red dog'], corpus=corpus, num_relations=3, num_candidates=6)
    assert set(data.b) == {'a red dog runs'} and data.extra['negative'] and 'The red  dog' not in data.extra['negative']
    with pytest.raises(InputError, match='no training rows'):
        run(queries=['the red dog'], corpus=['the red dog', 'The Red Dog'], num_relations=2)


def test_deterministic_with_a_seed():
    a = run(negatives='random', seed=3, num_candidates=10)
    assert rows(a) == rows(run(negatives='random', seed=3, num_candidates=10))
    others = [rows(run(negatives='random', seed=s, num_candidates=10)) for s in range(4, 9)]
    assert any(o != rows(a) for o in others)


def test_output_is_written_as_it_goes_and_trains(tmp_path):
    out = tmp_path / 'synth.jsonl'
    data = run(output=str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r['query'], r['positive'], r['negative'], r['margin']) for r in lines] == rows(data)
    again = load_data(str(out))
    assert again.kind == 'margin-triplets' and rows(again) == rows(data)
    trained = finetune.fit('fake-text', str(out), epochs=1, batch_size=4, num_workers=0, log=lambda m: None)
    assert trained.config['loss'] == 'MarginMSELoss' and np.isfinite(trained.history[-1]['loss'])
    with pytest.raises(InputError, match='exists.*resume=True'):
        run(output=str(out))


class Interrupted(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_rows(tmp_path):
    reference = rows(run(negatives='random', seed=5, query_chunk_size=2))
    out = tmp_path / 'synth.jsonl'
    from finetune.cross_encoders import build_cross_encoder
    cross = build_cross_encoder('fake-cross')
    original = cross.score_batch

    def dies_on_the_third_batch(queries, docs):
        if cross.calls == 2:
            raise Interrupted
        return original(queries, docs)
    cross.score_batch = dies_on_the_third_batch
    killed = SynthesisModels('fake-text', cross)
    with pytest.raises(Interrupted):
        run(models=killed, output=str(out), negatives='random', seed=5, query_chunk_size=2, scorer_batch_size=64)
    written = out.read_text().splitlines()
    assert 0 < len(written) < len(reference)
    with open(out, 'a') as f:  # a line cut in half by the kill
        f.write(written[0][:25])
    resumed = run(output=str(out), resume=True, negatives='random', seed=5, query_chunk_size=2)
    assert rows(resumed) == reference and resumed.stats['resumed_queries'] == 4
    assert [tuple(json.loads(x)[k] for k in ('query', 'positive', 'negative', 'margin'))
            for x in out.read_text().splitlines()] == reference
    done = run(output=str(out), resume=True, negatives='random', seed=5)  # nothing left: no model is built
    assert rows(done) == reference and 'build_seconds' not in done.stats


def test_resume_reads_data_only_and_checks_it(tmp_path):
    out = tmp_path / 'synth.jsonl'
    out.write_text('{"query": "the red dog", "__class__": "os.system"}\n')
    with pytest.raises(InputError, match='line 1: expected an object with query'):
        run(output=str(out), resume=True)
    out.write_text(json.dumps({'query': 'not a query here', 'positive': 'a', 'negative': 'b', 'margin': 0.1,
                               'positive_score': 1, 'negative_score': 0.9, 'negative_rank': 1, 'negatives': 1})
                   + '\n')
    with pytest.raises(InputError, match="'not a query here' is not among query_data"):
        run(output=str(out), resume=True)


def test_overwrite_starts_again_and_resume_checks_the_settings(tmp_path):
    out = tmp_path / 'synth.jsonl'
    out.write_text('not rows at all\n')
    first = run(output=str(out), overwrite=True, seed=1, negatives='random')
    assert (tmp_path / 'synth.meta.json').exists() and len(out.read_text().splitlines()) == len(first)
    with pytest.raises(InputError, match=r"other settings \(seed=1 there, 2 now\)"):
        run(output=str(out), resume=True, seed=2, negatives='random')
    with pytest.raises(InputError, match=r"num_relations=3 there, 2 now"):
        run(output=str(out), resume=True, seed=1, negatives='random', num_relations=2, num_candidates=6)
    assert rows(run(output=str(out), overwrite=True, seed=2, negatives='random')) == \
        rows(run(seed=2, negatives='random'))


def test_resume_with_another_corpus_or_other_queries_is_refused_naming_which(tmp_path):
    out = tmp_path / 'synth.jsonl'
    first = run(output=str(out), seed=1)
    meta = json.loads((tmp_path / 'synth.meta.json').read_text())
    assert set(meta['inputs']) == {'query_data', 'corpus_data'}
    with pytest.raises(InputError, match=r'made from another corpus_data \(sha256 \w{12}\.\.\. there, \w{12}\.\.\. '
                                         r'now\).*Resume with the corpus_data that made it'):
        run(output=str(out), resume=True, seed=1, corpus=CORPUS[:-1])
    with pytest.raises(InputError, match=r'made from another query_data .* and another corpus_data'):
        run(output=str(out), resume=True, seed=1, queries=QUERIES[:4], corpus=CORPUS[::-1])
    assert rows(run(output=str(out), resume=True, seed=1)) == rows(first)


def test_queries_without_rows_are_done_on_resume(tmp_path):
    out = tmp_path / 'synth.jsonl'
    queries = ['the red dog', 'blue sea']
    corpus = ['the red dog', 'The Red Dog', 'the blue sea', 'a sea of blue', 'green tree']
    first = run(queries=queries, corpus=corpus, output=str(out), num_relations=2, num_candidates=2)
    assert set(first.a) == {'blue sea'}
    again = run(queries=queries, corpus=corpus, output=str(out), num_relations=2, num_candidates=2, resume=True)
    assert rows(again) == rows(first) and again.stats['resumed_queries'] == 2 and 'build_seconds' not in again.stats


def test_texts_are_read_as_texts_from_the_column_of_their_role(tmp_path):
    import datasets
    (tmp_path / 'q.csv').write_text('id,question\n1,how do I open photo.jpg\n2,the red dog\n')
    (tmp_path / 'c.csv').write_text('question,passage\nignored,red dog runs\nignored too,open a photo.jpg file\n')
    (tmp_path / 'one.csv').write_text('query\nthe red dog\n')
    from finetune.synthesis.inputs import read_texts
    assert read_texts(str(tmp_path / 'q.csv'), 'query_data') == ['how do I open photo.jpg', 'the red dog']
    assert read_texts(str(tmp_path / 'c.csv'), 'corpus_data') == ['red dog runs', 'open a photo.jpg file']
    assert read_texts(str(tmp_path / 'one.csv'), 'query_data') == ['the red dog']
    pairs = datasets.Dataset.from_dict({'question': ['q one', 'q two'], 'passage': ['p one', 'p two']})
    assert read_texts(pairs, 'query_data') == ['q one', 'q two'] and read_texts(pairs, 'corpus_data') == ['p one',
                                                                                                       'p two']
    (tmp_path / 'bad.csv').write_text('id,body\n1,red dog\n')
    with pytest.raises(InputError, match=r"corpus_data: bad.csv has the columns 'id', 'body'; expected one column, "
                                         r"or one named document, doc, passage"):
        read_texts(str(tmp_path / 'bad.csv'), 'corpus_data')


def test_inputs_from_files_csv_columns_and_datasets(tmp_path):
    import datasets
    (tmp_path / 'q.txt').write_text('\n'.join(QUERIES[:3]) + '\n\n')
    (tmp_path / 'c.csv').write_text('label,text\n' + '\n'.join(f'x,{d}' for d in CORPUS) + '\n')
    from_files = run(queries=str(tmp_path / 'q.txt'), corpus=str(tmp_path / 'c.csv'))
    dataset = datasets.Dataset.from_dict({'id': list(range(3)), 'query': QUERIES[:3]})
    from_dataset = run(queries=dataset, corpus=CORPUS)
    assert rows(from_files) == rows(from_dataset) == rows(run(queries=QUERIES[:3]))


@pytest.mark.parametrize('kwargs, error, match', [
    ({'queries': []}, InputError, 'query_data is empty'),
    ({'corpus': ['ok', '  ']}, InputError, 'corpus_data, item 1'),
    ({'queries': 'no/such/queries.txt'}, InputError, "query_data: 'no/such/queries.txt' is no file"),
    ({'models': SynthesisModels('fake-cross', 'fake-cross')}, UnknownModelError,
     "relation_miner: .*'fake-cross' is a cross-encoder, not a backbone"),
    ({'models': SynthesisModels('fake-text', 'fake-text')}, UnknownModelError,
     "'fake-text' is an embedding model .*not a cross-encoder.*fake-cross"),
    ({'models': SynthesisModels('fake-text', 'fake-crosss')}, UnknownModelError, "Did you mean 'fake-cross'"),
    ({'models': SynthesisModels('fake-image', 'fake-cross')}, InputError, 'must embed text'),
    ({'num_relations': 17}, InputError, r'num_relations=17 is larger than the corpus \(16 distinct'),
    ({'num_relations': 1}, OptionError, 'num_relations: expected an integer >= 2'),
    ({'negatives': 'easy'}, OptionError, "negatives: expected one of 'hardest', 'random'"),
    ({'output': 'synth.csv'}, InputError, 'must be a JSON-lines file'),
    ({'resume': True}, InputError, 'resume=True needs output='),
])
def test_bad_input_is_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        run(**kwargs)


def test_the_default_models_come_from_the_registry():
    miner, cross = DATA_SYNTHESIS_EN.names()
    assert cross in finetune.list_models(task='cross-encoding')
    assert miner in finetune.list_models(task='text-to-text')


def test_top_k_is_exact_in_chunks():
    rng = np.random.default_rng(0)
    queries, docs = rng.normal(size=(7, 5)), rng.normal(size=(50, 5)).astype(np.float32)
    docs[10] = docs[3]  # a tie: the lower index first
    values, indices = top_k(queries, docs, 6, doc_chunk_size=4)
    unit = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    cos = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    expected = np.argsort(-cos, axis=1, kind='stable')[:, :6]
    assert (indices == expected).all() and np.allclose(values, np.take_along_axis(cos, expected, 1), atol=1e-5)


def test_the_corpus_is_encoded_in_chunks(monkeypatch):
    from finetune.synthesis import run as stage
    monkeypatch.setattr(stage, 'ENCODE_CHUNK', 3)
    model = finetune.build_model('fake-text')
    chunked = stage.encode_corpus(model, CORPUS, 2, stage.Bars(False))
    whole = model.encode(CORPUS)
    assert np.allclose(chunked, whole / np.linalg.norm(whole, axis=1, keepdims=True), atol=1e-6)


def test_trains_with_infonce_and_hard_negatives():
    data = run(num_candidates=8)
    result = finetune.fit('fake-text', data, loss='InfoNCE', epochs=2, batch_size=4, num_workers=0,
                          learning_rate=1e-2, log=lambda m: None)
    assert result.config['loss'] == 'InfoNCE' and result.history[-1]['loss'] < result.history[0]['loss']
    metrics = finetune.evaluate(result.model, data)
    assert 0 < metrics['ndcg@10'] <= 1


def test_cross_encoders_are_listed_under_their_own_task():
    from io import StringIO

    from rich.console import Console
    out = StringIO()
    shown = finetune.describe_models(task='cross-encoding', console=Console(file=out, width=200))
    assert {'fake-cross', 'crossencoder-base-en'} <= {s.name for s in shown}
    assert 'finetune cross-encoders: cross-encoding' in out.getvalue()
    assert 'fake-cross' not in finetune.list_models()
    result = CliRunner().invoke(main, ['models', '--task', 'cross-encoding', '--names'])
    assert result.exit_code == 0 and 'fake-cross' in result.output.split()
    result = CliRunner().invoke(main, ['plugins'])
    assert 'fake (cross-encoders)' in result.output


def test_the_command_line(tmp_path):
    (tmp_path / 'q.txt').write_text('\n'.join(QUERIES) + '\n')
    (tmp_path / 'c.txt').write_text('\n'.join(CORPUS) + '\n')
    args = ['synthesize', '--queries', str(tmp_path / 'q.txt'), '--corpus', str(tmp_path / 'c.txt'), '--output',
            str(tmp_path / 's.jsonl'), '--relation-miner', 'fake-text', '--cross-encoder', 'fake-cross']
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert 'rows for 8 queries written to' in result.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and again.output.startswith('error: output:') and 'Traceback' not in again.output
    assert CliRunner().invoke(main, args + ['--resume']).exit_code == 0
    missing = CliRunner().invoke(main, args[:2] + ['nope.txt'] + args[3:] + ['--overwrite'])
    assert missing.exit_code == 2 and "error: query_data: 'nope.txt' is no file" in missing.output


def test_an_embedding_model_as_a_stand_in_teacher():
    from finetune.cross_encoders import EmbeddingScorer
    teacher = EmbeddingScorer(finetune.build_model('fake-text'))
    data = run(models=SynthesisModels('fake-text', teacher), num_candidates=6)
    q, p, n, margin = rows(data)[0]
    a, b, c = teacher.embedder.encode([q, p, n])
    cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    assert margin == pytest.approx(cos(a, b) - cos(a, c), abs=1e-5)


def test_margin_triplets_from_a_csv_header(tmp_path):
    path = tmp_path / 'rows.csv'
    path.write_text('query,positive,negative,margin\nthe red dog,a red dog,a blue sea,0.5\na cat,cat food,old house,0.25\n')
    data = load_data(str(path))
    assert data.kind == 'margin-triplets' and data.extra['negative'] == ['a blue sea', 'old house']
    assert data.scores == [0.5, 0.25] and data.groups == [0, 1]
    path.write_text('query,positive,negative,margin\nthe red dog,a red dog,a blue sea,lots\n')
    with pytest.raises(InputError, match="rows.csv, line 2: margin 'lots' is not a finite number"):
        load_data(str(path))


def test_epochs_of_different_batch_counts_each_train_every_batch_once():
    """No-duplicates batching may need more batches in one epoch than in another (rows sharing a query or a
    document wait for a batch without it): every epoch's batches are trained, each with its full weight (the
    first epoch's count used to end later epochs early or divide a loss by zero)."""
    from finetune.training.setup import text_lengths
    data = run(num_candidates=8)
    sampler = data.data_kind.batch_sampler(data, 4, 42, 4)
    sampler.group_by_length(text_lengths(data))
    counts = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        counts.append(len(sampler))
    assert len(set(counts)) > 1  # the point of this test: epochs differ
    result = finetune.fit('fake-text', data, loss='InfoNCE', epochs=3, batch_size=4, num_workers=0, seed=42,
                          gradient_accumulation_steps=2, log=lambda m: None)
    steps = [h for h in result.history if 'loss' in h]
    assert [sum(1 for h in steps if h['epoch'] == e) for e in range(3)] == [-(-c // 2) for c in counts]
    assert all(np.isfinite(h['loss']) for h in steps)
