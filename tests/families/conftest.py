"""Fixtures of the families' tests: tiny random Hugging Face models saved as directories (built offline, in
seconds)."""
from __future__ import annotations

import pytest
import torch

WORDS = ('the a man woman dog cat is are eating eats food bread plays piano guitar runs fast slow red blue '
         'green house car tree sky sea big small old new happy sad').split()


@pytest.fixture(scope='session')
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer BERT with random weights and a word-level vocab, saved as a transformers directory."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    root = tmp_path_factory.mktemp('tiny-bert')
    tokens = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *WORDS]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})
    assert tokenizer('the red dog')['input_ids'] == [2, tokens.index('the'), tokens.index('red'),
                                                      tokens.index('dog'), 3]
    tokenizer.save_pretrained(str(root))
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(root))
    return root


@pytest.fixture(scope='session')
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIPModel with a word-level tokenizer, saved as a transformers directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast
    root = tmp_path_factory.mktemp('tiny-clip')
    vocab = {w: i for i, w in enumerate(['[PAD]', '[UNK]', '[BOS]', *WORDS, '[EOS]'])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single='[BOS] $A [EOS]',
                                                       special_tokens=[('[BOS]', 2), ('[EOS]', vocab['[EOS]'])])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='[PAD]', unk_token='[UNK]', bos_token='[BOS]',
                            eos_token='[EOS]').save_pretrained(str(root))
    config = CLIPConfig(
        text_config={'vocab_size': len(vocab), 'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2,
                     'num_attention_heads': 2, 'max_position_embeddings': 16, 'eos_token_id': vocab['[EOS]'],
                     'pad_token_id': 0, 'bos_token_id': 2},
        vision_config={'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 2,
                       'image_size': 32, 'patch_size': 16},
        projection_dim=24)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(str(root))
    return root


