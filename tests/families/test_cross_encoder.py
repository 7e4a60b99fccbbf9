"""The transformers plugin's cross-encoders (plugins/finetune_transformers/cross_encoder.py): a tiny random
sequence-classification folder as hf:<folder>, crossencoder-base-en offline, and synthesis with both models
from tiny random folders."""
from __future__ import annotations

import pytest
import torch

import finetune
from finetune.cross_encoders import build_cross_encoder
from finetune.data import SynthesisModels
from finetune.errors import UnknownModelError, WeightsNotFoundError




@pytest.fixture(scope='session')
def tiny_cross_encoder_dir(tmp_path_factory, tiny_bert_dir):
    """A 2-layer BertForSequenceClassification (one label) with random weights and the tiny BERT's tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
    root = tmp_path_factory.mktemp('tiny-cross-encoder')
    BertTokenizerFast.from_pretrained(str(tiny_bert_dir)).save_pretrained(str(root))
    config = BertConfig(vocab_size=len(BertTokenizerFast.from_pretrained(str(tiny_bert_dir))), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=1)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(root))
    return root


def test_a_sequence_classification_folder_scores_pairs(tiny_cross_encoder_dir):
    from transformers import BertForSequenceClassification, BertTokenizerFast
    cross = build_cross_encoder(f'hf:{tiny_cross_encoder_dir}')
    pairs = [('the red dog', 'a red dog runs fast'), ('a cat', 'the sky is blue'), ('big house', 'old house')]
    scores = cross.score(pairs, batch_size=2)
    model = BertForSequenceClassification.from_pretrained(str(tiny_cross_encoder_dir)).eval()
    tokenizer = BertTokenizerFast.from_pretrained(str(tiny_cross_encoder_dir))
    with torch.no_grad():
        for (q, d), score in zip(pairs, scores):  # one pair at a time, no padding: the same score
            logit = model(**tokenizer(q, d, return_tensors='pt')).logits[0, 0]
            assert score == pytest.approx(float(torch.sigmoid(logit)), abs=1e-5)
    raw = build_cross_encoder(f'hf:{tiny_cross_encoder_dir}', {'activation': 'none'}).score(pairs[:1])
    assert float(torch.sigmoid(torch.tensor(raw[0]))) == pytest.approx(scores[0], abs=1e-5)


def test_an_encoder_folder_is_no_cross_encoder(tiny_bert_dir, tiny_cross_encoder_dir):
    with pytest.raises(UnknownModelError, match='BertModel, not a sequence-classification model'):
        build_cross_encoder(f'hf:{tiny_bert_dir}')
    with pytest.raises(UnknownModelError, match='all-minilm-l6-v2.* is an embedding model'):
        build_cross_encoder('all-minilm-l6-v2')
    with pytest.raises(UnknownModelError, match="'crossencoder-base-en' is a cross-encoder, not a backbone"):
        finetune.build_model('crossencoder-base-en')


def test_crossencoder_base_en_offline_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r'(?s)crossencoder-base-en.*offline mode is set.*'
                                                   r'cross-encoder/ms-marco-MiniLM-L-6-v2.*Ways out'):
        build_cross_encoder('crossencoder-base-en')
    spec = finetune.registry.CROSS_ENCODERS.get('crossencoder-base-en')
    assert spec.tasks == ('cross-encoding',) and 'MiniLM' in spec.description


def test_synthesis_with_tiny_transformers_models(tiny_bert_dir, tiny_cross_encoder_dir, tmp_path):
    queries = ['the red dog', 'a cat eats food', 'the man plays piano', 'a woman plays guitar']
    corpus = ['red dog runs fast', 'cat eating food', 'the man plays the piano', 'woman guitar', 'the sky is blue',
              'green tree', 'big old house', 'a small car']
    models = SynthesisModels(f'hf:{tiny_bert_dir}', f'hf:{tiny_cross_encoder_dir}')
    data = finetune.synthesize(queries, corpus, models, num_relations=3, output=str(tmp_path / 's.jsonl'),
                               log=lambda m: None)
    assert len(data) == 8 and all(m >= 0 for m in data.scores)
    run = finetune.fit(f'hf:{tiny_bert_dir}', str(tmp_path / 's.jsonl'), epochs=1, batch_size=4, num_workers=0,
                       log=lambda m: None)
    assert run.config['loss'] == 'MarginMSELoss'
